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
from cardigan_tf.jobs.study_report import attach_per_image, regime_lines, write_study_report
from cardigan_tf.jobs.study_secondary import (
    attach_clinical,
    cell_failures,
    clinical_rows,
    failure_rows,
    quality_breakdown_lines,
    secondary_lines,
    sensitivity_rows,
)
from cardigan_tf.jobs.study_wilcoxon import wilcoxon_rows
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.stats_simulation import REGIMES, simulate_images
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
            hd = 5.0 + 0.1 * (p % 5)
            result = {s: {"dice": dice if s == "lv_endo" else 0.8, "hd": float("nan") if missing else hd,
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


def _write_clinical(root, cells, rng, ef_gain):
    """clinical.csv per cell: EF error |N(0, 5)| per patient, smaller by ``ef_gain`` points with
    synthetic images at training fraction 0.5; patient 0's EF not measurable in every cell."""
    for c in cells:
        gain = ef_gain if (c["synthetic_fraction"] > 0 and c["train_fraction"] == 0.5) else 0.0
        rows = []
        for p in range(N_PATIENTS):
            ef_gt = 55.0 + p
            err = abs(rng.normal(6.0, 1.0)) - gain
            failed = p == 0
            rows.append({"patient": f"patient{p:04d}", "edv_pred": 100.0 + err, "edv_gt": 100.0,
                         "esv_pred": 40.0, "esv_gt": 40.0, "ef_pred": float("nan") if failed else ef_gt + err,
                         "ef_gt": ef_gt, "simpson": "per_phase",
                         "reason_pred": "2CH/ED: the LV is in 3 separate pieces (the largest holds 50 %)" if failed else "",
                         "reason_gt": ""})
        with open(root / "cells" / c["cell"] / "eval-test" / "clinical.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def test_secondary_endpoints_count_failures_score_them_and_test_ef(tmp_path):
    cells = _write_study(tmp_path, fail_rate_synthetic=0.6)
    _write_clinical(tmp_path, cells, np.random.default_rng(3), ef_gain=2.0)
    attach_clinical(tmp_path, cells, "test")
    failures = failure_rows(cells)
    assert {(r["failure"], r["unit_of_count"]) for r in failures} == {
        *((s, "image") for s in STRUCTURES), ("ef", "patient")}
    for r in failures:
        key = (r["train_fraction"], r["synthetic_fraction"], r["exposure"])
        synthetic = [c for c in cells if (c["train_fraction"], c["synthetic_fraction"], "replace") == key]
        if r["failure"] == "ef":  # patient 0 fails in every cell: no difference, counted
            assert r["failures_none"] == r["failures_synthetic"] == len(SEEDS) and r["pvalue"] == 1.0
            continue
        recount = sum(int(row[f"{r['failure']}_missing"]) for c in synthetic for row in c["per_image"])
        assert r["failures_synthetic"] == recount and r["rate_synthetic"] > 0.4 and r["pvalue"] < 0.01
    sens = sensitivity_rows(cells, ENDPOINT)
    worst = max(row["lv_endo_hd"] for c in cells for row in c["per_image"] if math.isfinite(row["lv_endo_hd"]))
    for r in sens:
        assert r["worst_value"] == pytest.approx(worst if r["metric"] == "hd" else 1.0)
        if r["metric"] == "hd":  # the synthetic arm fails more: scored failures make it worse, not neutral
            assert r["estimate_failures_worst"] > r["estimate_failures_dropped"] + 0.1
            assert r["failures_synthetic"] > r["failures_none"]
    clinical = {(r["train_fraction"], r["index"]): r for r in clinical_rows(cells, ENDPOINT)}
    ef = clinical[0.5, "ef_abs_error"]
    assert ef["n_patients"] == N_PATIENTS - 1 and ef["n_left_out"] == 1
    assert ef["ci_low"] < -2.0 < ef["ci_high"] and ef["pvalue"] < 0.05
    assert clinical[1.0, "ef_abs_error"]["ci_low"] < 0 < clinical[1.0, "ef_abs_error"]["ci_high"]
    assert clinical[0.5, "edv_error"]["estimate"] == pytest.approx(-2.0, abs=0.5)
    assert clinical[0.5, "esv_error"]["estimate"] == 0.0
    text = "\n".join(secondary_lines(failures, sens, list(clinical.values()), "per_phase"))
    assert "EF not measurable" in text and "failures = worst" in text and "`per_phase`" in text
    regimes = "\n".join(regime_lines([{"train_fraction": 0.5, "synthetic_fraction": 0.0, "lv_endo_dice_mean": 0.91,
                                        "n_seeds": 3},
                                       {"train_fraction": 1.0, "synthetic_fraction": 0.0, "lv_endo_dice_mean": 0.97,
                                        "n_seeds": 3}]))
    assert "0.910" in regimes and "below ceiling" in regimes and "near ceiling" in regimes
    by_quality = "\n".join(quality_breakdown_lines(cells))
    assert "| Good |" in by_quality and by_quality.count("\n| 0.5 |") == 1 + len(SYNTH_FRACTIONS)
    counts = cell_failures(cells[0])
    assert counts["ef_failures"] == 1 and counts["ef_failure_reason"] == "the LV is in 3 separate pieces"


#: simulated studies per setting for the end-to-end calibration through primary_rows
N_E2E = 300


def _simulated_cells(images_a, images_b):
    """One simulated study's per-image arrays (seeds, patients, images) as the cells the study
    report hands to primary_rows: the synthetic-fraction-0 arm and an ``add`` arm at 0.5."""
    cells = []
    for sf, arm, values in ((0.0, "", images_a), (0.5, "add", images_b)):
        for seed, per_patient in enumerate(values):
            rows = [{"patient": f"p{p:02d}", "view": IMAGES[i][0], "phase": IMAGES[i][1], "lv_endo_dice": float(v)}
                    for p, per_image in enumerate(per_patient) for i, v in enumerate(per_image)]
            cells.append({"cell": f"c{sf}-{seed}", "train_fraction": 1.0, "synthetic_fraction": sf, "exposure": arm,
                          "seed": seed, "per_image": rows})
    return cells


def _study_calls(effect: float, seed: int) -> list[dict]:
    a, b = simulate_images(REGIMES["reference"], N_E2E, np.random.default_rng(seed), effect)
    endpoint = PrimaryEndpoint(n_boot=500, paired_seeds=False)
    return [primary_rows(_simulated_cells(a[k], b[k]), endpoint)[0] for k in range(N_E2E)]


def test_the_study_analysis_itself_is_calibrated():
    """The study's own analysis (primary_rows, as write_study_report calls it) on per-image tables
    of known truth (stats_simulation, the reference regime: 10 patients, 3 seeds, 4 images):
    two identical arms are called significant at a rate within [0.02, 0.08] at alpha 0.05; and a
    true gain equal to the minimal detectable difference the report states (its median over the
    null studies) is found about 80 % of the time, so "no effect larger than the MDD" holds."""
    null = _study_calls(0.0, 11)
    assert all(r["n_patients"] == 10 and r["exposure"] == "add" for r in null)
    fpr = np.mean([r["significant"] == "yes" for r in null])
    assert 0.02 <= fpr <= 0.08, fpr
    mdd = float(np.median([r["mdd"] for r in null]))
    assert 0.01 < mdd < 0.03
    power = np.mean([r["significant"] == "yes" for r in _study_calls(mdd, 12)])
    assert 0.70 <= power <= 0.90, (mdd, power)


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
