"""The study's primary endpoint (issue 19): declared in the config, tested per (training fraction,
synthetic fraction) contrast with the hierarchical comparison, Holm over that family only, with
the detectable difference; read from per-image CSVs in the evaluation's format. No training."""

import csv
import json
import math

import numpy as np
import pytest

from cardigan_tf.config import ConfigError, from_dict, to_dict
from cardigan_tf.configs import migrate
from cardigan_tf.configs.study import PrimaryEndpoint, StudyConfig, build_study_config
from cardigan_tf.jobs.study_primary import primary_lines, primary_rows
from cardigan_tf.jobs.study_report import (
    attach_per_image,
    wilcoxon_rows,
    write_study_report,
)
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS, flatten_result

TRAIN_FRACTIONS, SYNTH_FRACTIONS, SEEDS = (0.5, 1.0), (0.25, 0.5), (0, 1, 2)
EFFECT = {0.5: 0.02, 1.0: 0.0}  # true LV endo Dice gain of every synthetic fraction, per training fraction
N_PATIENTS = 20
IMAGES = [(v, ph) for v in ("2CH", "4CH") for ph in ("ED", "ES")]
ENDPOINT = PrimaryEndpoint(n_boot=2000)


def _cell_rows(rng, tf, sf, seed, patient_level, fail_rate, unit="mm"):
    """Per-image rows as the evaluation writes them (``flatten_result``), LV endo Dice with the effect."""
    shift = (EFFECT[tf] if sf > 0 else 0.0) + rng.normal(0, 0.003)  # a training run's own offset
    rows = []
    for p, level in enumerate(patient_level):
        for view, phase in IMAGES:
            dice = float(np.clip(level + shift + rng.normal(0, 0.01), 0, 1))
            missing = bool(rng.random() < fail_rate)
            result = {s: {"dice": dice if s == "lv_endo" else 0.8, "hd": float("nan") if missing else 5.0,
                          "mad": float("nan") if missing else 1.0, "missing": missing} for s in STRUCTURES}
            rows.append(flatten_result(result, patient=f"patient{p:04d}", view=view, phase=phase, quality="Good",
                                       gt_source="ref", distance_unit=unit))
    return rows


def _write_study(root, fail_rate_synthetic=0.05, unit="mm"):
    """cells/<cell>/eval-test/per_image.csv and result.json stubs of a 2 x 3 x 3 design (HD and
    MAD in ``unit``)."""
    rng = np.random.default_rng(7)
    patient_level = rng.normal(0.88, 0.04, N_PATIENTS)  # shared by every cell: patients are paired
    cells = []
    for tf in TRAIN_FRACTIONS:
        for sf in (0.0, *SYNTH_FRACTIONS):
            for seed in SEEDS:
                name = f"seg-f{tf:g}-s{sf:g}-seed{seed}"
                rows = _cell_rows(rng, tf, sf, seed, patient_level, fail_rate_synthetic if sf else 0.05, unit)
                eval_dir = root / "cells" / name / "eval-test"
                eval_dir.mkdir(parents=True)
                with open(eval_dir / "per_image.csv", "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                    w.writeheader()
                    w.writerows(rows)
                cell = {"train_fraction": tf, "synthetic_fraction": sf, "seed": seed}
                means = {f"{s}_{m}": float(np.nanmean([r[f"{s}_{m}"] for r in rows])) for s in STRUCTURES for m in METRICS}
                (root / "cells" / name / "result.json").write_text(json.dumps({**cell, **means}))
                cells.append({"cell": name, **cell})
    attach_per_image(root, cells, "test")
    return cells


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cells = _write_study(tmp_path_factory.mktemp("study"))
    return cells, primary_rows(cells, ENDPOINT)


def test_one_row_per_contrast_and_holm_over_that_family(study):
    cells, rows = study
    assert [(r["train_fraction"], r["synthetic_fraction"]) for r in rows] == [
        (tf, sf) for tf in TRAIN_FRACTIONS for sf in SYNTH_FRACTIONS]
    assert all(r["n_contrasts"] == 4 and r["role"] == "primary" for r in rows)
    assert all((r["metric"], r["structure"]) == ("dice", "lv_endo") for r in rows)
    secondary = wilcoxon_rows(cells, n_boot=200)
    assert len(secondary) == 4 * len(METRICS) * len(STRUCTURES) and {r["role"] for r in secondary} == {"secondary"}
    assert secondary[0]["n_tests"] > 4  # the secondary table is its own, larger family
    ranked = sorted(rows, key=lambda r: r["pvalue"])
    for i, r in enumerate(ranked):  # Holm with m = 4: the smallest p is multiplied by 4
        assert r["pvalue_holm"] >= min(1.0, (4 - i) * r["pvalue"]) - 1e-12
    assert ranked[0]["pvalue_holm"] == pytest.approx(min(1.0, 4 * ranked[0]["pvalue"]))


def test_known_effect_found_and_null_not(study):
    _, rows = study
    for r in rows:
        assert r["n_patients"] == N_PATIENTS and r["n_seeds_none"] == r["n_seeds_synthetic"] == 3
        assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
        if EFFECT[r["train_fraction"]]:
            assert r["significant"] == "yes" and r["ci_low"] < 0.02 < r["ci_high"]
            assert r["estimate"] == pytest.approx(0.02, abs=0.006)
        else:
            assert r["significant"] == "no" and r["ci_low"] < 0 < r["ci_high"]
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["pvalue"] < ENDPOINT.alpha)  # one statement
        assert math.isfinite(r["mdd"]) and r["mdd"] > 0 and r["mdd"] > r["se"]
        assert r["seed_sd_none"] > 0 and r["patient_sd"] > 0 and "hierarchical bootstrap" in r["method"]
        assert r["paired_seeds"] == "yes" and "paired" in r["method"]


def test_failure_counts_compared_per_patient(tmp_path):
    rows = primary_rows(_write_study(tmp_path, fail_rate_synthetic=0.6), ENDPOINT)
    for r in rows:
        assert r["failure_rate_none"] < 0.2 and r["failure_rate_synthetic"] > 0.4
        assert r["failure_pvalue"] < 0.01 and "sign test" in r["failure_method"]
        assert r["failure_patients_more_synthetic"] > r["failure_patients_more_none"]


def test_report_section_names_method_and_detectable_difference(study):
    _, rows = study
    text = "\n".join(primary_lines(rows))
    assert text.startswith("## Primary endpoint") and "hierarchical bootstrap" in text
    assert "over the 4 tested contrast(s) of this family only" in text
    assert text.count("): significant;") == 2 and text.count("): not significant;") == 2
    assert "with 80 % power" in text and "(Holm " in text


def test_fewer_patients_than_a_test_needs_are_estimated_not_tested(study):
    cells, _ = study
    few = [dict(c, per_image=[r for r in c["per_image"] if r["patient"] < "patient0003"]) for c in cells]
    rows = primary_rows(few, ENDPOINT)
    assert all(r["n_patients"] == 3 and math.isnan(r["pvalue"]) and r["significant"] == "" for r in rows)
    assert all(math.isfinite(r["estimate"]) and "no test" in r["note"] for r in rows)
    assert "significant" not in "\n".join(primary_lines(rows)).replace('"significant" means', "")


def test_one_seed_per_arm_is_estimated_not_tested(study):
    """Two training runs differ by their own noise: without the training-run variance no verdict."""
    cells, _ = study
    rows = primary_rows([c for c in cells if c["seed"] == 0], ENDPOINT)
    assert len(rows) == 4 and all(r["n_seeds_none"] == r["n_seeds_synthetic"] == 1 for r in rows)
    assert all(math.isnan(r["pvalue"]) and math.isnan(r["mdd"]) and r["significant"] == "" for r in rows)
    assert all(r["training_variance_estimated"] == "no" and "two training runs only" in r["note"] for r in rows)
    assert "): significant" not in "\n".join(primary_lines(rows))


def test_config_default_and_validation():
    cfg = StudyConfig()
    assert (cfg.primary.metric, cfg.primary.structure, cfg.primary.alpha) == ("dice", "lv_endo", 0.05)
    assert cfg.primary.paired_seeds is True and cfg.primary.n_boot == 10000
    assert build_study_config(None, ["primary.metric=hd"]).primary.metric == "hd"
    with pytest.raises(ConfigError, match=r"primary\.metric.*'dice', 'hd', 'mad'.*'iou'"):
        build_study_config(None, ["primary.metric=iou"])
    with pytest.raises(ConfigError, match=r"primary\.structure.*'lv_endo'.*'rv'"):
        build_study_config(None, ["primary.structure=rv"])
    with pytest.raises(ConfigError, match=r"primary\.alpha"):
        build_study_config(None, ["primary.alpha=1.5"])


def test_old_study_config_without_the_key_loads():
    old = to_dict(StudyConfig())
    del old["primary"]
    cfg = from_dict(StudyConfig, migrate("study", old))
    assert cfg.primary == PrimaryEndpoint()


def test_study_report_writes_primary_csv_first_and_marks_the_rest_secondary(tmp_path):
    _write_study(tmp_path)
    write_study_report(tmp_path, StudyConfig(primary=ENDPOINT))
    with open(tmp_path / "primary.csv", newline="") as fh:
        primary = list(csv.DictReader(fh))
    with open(tmp_path / "wilcoxon.csv", newline="") as fh:
        secondary = list(csv.DictReader(fh))
    assert len(primary) == 4 and {r["n_contrasts"] for r in primary} == {"4"}
    assert [r["significant"] for r in primary] == ["yes", "yes", "no", "no"]
    for column in ("estimate", "ci_low", "ci_high", "pvalue", "pvalue_holm", "method", "note", "se", "df",
                   "seed_sd_none", "seed_sd_synthetic", "patient_sd", "n_patients", "n_seeds_none", "mdd",
                   "failure_pvalue"):
        assert column in primary[0]
    assert {r["role"] for r in secondary} == {"secondary"} and "mean_diff" in secondary[0]
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Primary endpoint") < report.index("## Results") < report.index("## Secondary")
    assert "Secondary, exploratory (not corrected for the primary family; intervals only for interpretation)" in report


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_study_on_data_without_spacing_labels_every_table_px(tmp_path):
    """Cells evaluated in px (data without a pixel spacing): every table names px on every row,
    the markdown headers and the report say px, nothing says mm."""
    _write_study(tmp_path, unit="px")
    write_study_report(tmp_path, StudyConfig(primary=PrimaryEndpoint(metric="hd", n_boot=200)))
    for name in ("cells.csv", "results.csv", "wilcoxon.csv", "primary.csv"):
        rows = _csv(tmp_path / name)
        assert rows and {r["distance_unit"] for r in rows} == {"px"}, name
    results = (tmp_path / "results.md").read_text()
    assert "LV endo HD (px)" in results.splitlines()[0] and "(mm)" not in results
    report = (tmp_path / "report.md").read_text()
    assert "Distances (HD, MAD) in px" in report and "difference (px) [95 % CI]" in report
    assert "(mm)" not in report and " mm" not in report
    mm = tmp_path / "mm"
    _write_study(mm)
    write_study_report(mm, StudyConfig(primary=PrimaryEndpoint(metric="hd", n_boot=200)))
    assert {r["distance_unit"] for r in _csv(mm / "primary.csv")} == {"mm"}
    assert "Distances (HD, MAD) in mm" in (mm / "report.md").read_text()
