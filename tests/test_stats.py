"""Study statistics: Wilcoxon against scipy, Holm against hand values, bootstrap coverage, tests that
count patients rather than images, cell summaries against hand values, CSV/markdown/plot."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from cardigan_tf.jobs.study_report import attach_per_image
from cardigan_tf.jobs.study_wilcoxon import wilcoxon_rows
from cardigan_tf.stats import (
    bootstrap_ci,
    holm,
    paired_patient_test,
    patient_mean_differences,
    plot_dice_vs_synthetic,
    summarize_cells,
    table_markdown,
    wilcoxon_paired,
    write_table_csv,
)


def _rows():
    rows = []
    for tf in (0.1, 1.0):
        for sf in (0.0, 0.5):
            for seed in (0, 1, 2):
                base = 0.8 + 0.1 * tf + 0.02 * sf + 0.01 * seed
                rows.append({"train_fraction": tf, "synthetic_fraction": sf, "seed": seed,
                             "lv_endo_dice": base, "lv_epi_dice": base - 0.05, "la_dice": base - 0.1,
                             "lv_endo_hd": 5.0 + seed, "lv_endo_mad": 1.5, "lv_endo_missing": 0,
                             "ef_mae": 6.0 - seed})
    return rows


def test_wilcoxon_matches_scipy(rng):
    a = rng.uniform(0.8, 0.95, size=30)
    b = a - rng.normal(0.02, 0.02, size=30)
    res = wilcoxon_paired(a, b)
    ref = sps.wilcoxon(a, b)
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["pvalue"] == pytest.approx(ref.pvalue)
    assert res["n"] == 30
    assert res["median_diff"] == pytest.approx(np.median(a - b))
    assert res["pvalue"] < 0.05


def test_wilcoxon_edge_cases():
    same = wilcoxon_paired([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    assert same["pvalue"] == 1.0 and same["statistic"] == 0.0 and "zero" in same["note"]
    few = wilcoxon_paired([0.9, 0.8, 0.7], [0.8, 0.8, 0.6])
    assert math.isnan(few["pvalue"]) and few["n"] == 3 and "too few" in few["note"]
    nan = wilcoxon_paired([0.9, np.nan, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1], [0.8, 0.5, 0.6, 0.45, 0.2, 0.1, 0.15, 0.0])
    assert nan["n"] == 7
    with pytest.raises(ValueError, match="same length"):
        wilcoxon_paired([1, 2], [1])


def test_summarize_cells_against_hand_values():
    summary = summarize_cells(_rows())
    assert len(summary) == 4
    assert [(r["train_fraction"], r["synthetic_fraction"]) for r in summary] == [
        (0.1, 0.0), (0.1, 0.5), (1.0, 0.0), (1.0, 0.5)]
    cell = summary[1]  # train 0.1, synthetic 0.5: dice = 0.82 + 0.01 * seed
    assert cell["n_seeds"] == 3
    assert cell["lv_endo_dice_mean"] == pytest.approx(0.83)
    assert cell["lv_endo_dice_sd"] == pytest.approx(0.01)  # sample SD of 0.82, 0.83, 0.84
    assert cell["la_dice_mean"] == pytest.approx(0.73)
    assert cell["lv_endo_hd_mean"] == pytest.approx(6.0)
    assert cell["lv_endo_hd_sd"] == pytest.approx(1.0)
    assert cell["ef_mae_mean"] == pytest.approx(5.0)
    assert "lv_endo_missing_mean" not in cell and "seed_mean" not in cell


def test_summarize_nan_and_single_seed():
    rows = [{"train_fraction": 1, "synthetic_fraction": 0, "seed": 0, "la_dice": 0.5},
            {"train_fraction": 1, "synthetic_fraction": 0, "seed": 1, "la_dice": float("nan")},
            {"train_fraction": 1, "synthetic_fraction": 0.5, "seed": 0, "la_dice": 0.7}]
    s = summarize_cells(rows)
    assert s[0]["la_dice_mean"] == 0.5 and s[0]["la_dice_n"] == 1 and math.isnan(s[0]["la_dice_sd"])
    assert s[1]["n_seeds"] == 1
    with pytest.raises(ValueError, match="synthetic_fraction"):
        summarize_cells([{"train_fraction": 1}])


def test_csv_round_trip(tmp_path):
    summary = summarize_cells(_rows())
    path = write_table_csv(summary, tmp_path / "results.csv")
    with open(path) as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == 4
    assert float(back[1]["lv_endo_dice_mean"]) == pytest.approx(summary[1]["lv_endo_dice_mean"])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_markdown_table():
    summary = summarize_cells(_rows())
    md = table_markdown(summary)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| train fraction | synthetic fraction | seeds | LV endo Dice | LV epi Dice | LA Dice")
    assert "EF MAE (%)" in lines[0]
    assert set(lines[1]) <= set("|-")
    assert len(lines) == 2 + 4
    assert "0.830 ± 0.010" in lines[3]
    raw = table_markdown(_rows()[:2])
    assert len(raw.strip().splitlines()) == 4 and "| seed |" in raw.splitlines()[0].replace("seeds", "")


def test_plot_written(tmp_path):
    summary = summarize_cells(_rows())
    path = plot_dice_vs_synthetic(summary, tmp_path / "dice.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="dice_mean"):
        plot_dice_vs_synthetic([{"train_fraction": 1, "synthetic_fraction": 0}], tmp_path / "x.png")


def test_holm_against_hand_values():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adj[4])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 = 1.0 caps, 0.6 x 1 lifted to the running max
    assert holm([0.02]) == [0.02] and holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


def test_bootstrap_interval_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(123)
    true_mean, hits, reps = 0.02, 0, 200
    for r in range(reps):
        d = true_mean + rng.normal(0.0, 0.05, size=25)
        lo, hi = bootstrap_ci(d, level=0.95, n_boot=1000, seed=r)
        assert lo < d.mean() < hi
        hits += lo <= true_mean <= hi
    assert 0.88 <= hits / reps <= 0.99
    a, b = bootstrap_ci([0.1, 0.2, 0.3], seed=1), bootstrap_ci([0.1, 0.2, 0.3], seed=1)
    assert a == b  # seeded
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert all(math.isnan(x) for x in bootstrap_ci([float("nan")]))


def test_patient_mean_differences_by_hand():
    records = [("p1", 0, 0.1), ("p1", 0, 0.3), ("p1", 1, 0.2), ("p2", 0, -0.1), ("p2", 1, float("nan")),
               ("p2", 1, 0.1)]
    out = patient_mean_differences(records)
    assert out["n_images"] == 5
    assert out["patients"] == pytest.approx({"p1": 0.2, "p2": 0.0})
    # seed 0: p1 mean 0.2, p2 -0.1 -> 0.05; seed 1: p1 0.2, p2 0.1 -> 0.15
    assert out["seeds"] == pytest.approx({0: 0.05, 1: 0.15})


def test_paired_patient_test_exact_and_too_few():
    six = paired_patient_test([0.01, 0.02, 0.03, 0.04, 0.05, 0.06], n_boot=500)
    assert six["pvalue"] == pytest.approx(2 / 2**6) and six["method"] == "exact" and six["n"] == 6
    assert six["mean_diff"] == pytest.approx(0.035) and six["ci_low"] < 0.035 < six["ci_high"]
    five = paired_patient_test([0.01, 0.02, 0.03, 0.04, 0.05], n_boot=500)
    assert math.isnan(five["pvalue"]) and "0.05" in five["note"] and "interval only" in five["note"]
    assert np.isfinite(five["ci_low"]) and np.isfinite(five["ci_high"])
    # ties: exhaustive permutations, still a p-value in (0, 1]
    tied = paired_patient_test([0.01, 0.01, -0.02, 0.03, 0.03, 0.04, 0.05], n_boot=200)
    assert 0 < tied["pvalue"] <= 1 and tied["method"].startswith("exact permutation")


def _cells(effects, seeds=(0, 1, 2), noise=0.002, seed=0):
    """Per-image Dice of synthetic fraction 0 and 0.5 cells: every image of patient i shifts by
    effects[i] (plus small per-image noise) between the two settings; HD shifts by -10 x that."""
    rng = np.random.default_rng(seed)
    cells = []
    for s in seeds:
        for sf in (0.0, 0.5):
            rows = []
            for i, e in enumerate(effects):
                for v, view in enumerate(("2CH", "4CH")):
                    for k, phase in enumerate(("ED", "ES")):
                        base = 0.8 + 0.01 * i + 0.003 * v + 0.002 * k
                        shift = (e + noise * rng.standard_normal()) if sf else 0.0
                        row = {"patient": f"patient{i:04d}", "view": view, "phase": phase}
                        for st in ("lv_endo", "lv_epi", "la"):
                            row[f"{st}_dice"] = base + shift
                            row[f"{st}_hd"] = 5.0 + i - 10 * shift
                            row[f"{st}_mad"] = 1.0 + 0.1 * i - shift
                        rows.append(row)
            cells.append({"train_fraction": 1.0, "synthetic_fraction": sf, "seed": s, "per_image": rows,
                          "distance_unit": "px"})
    return cells


def test_patients_not_images_are_counted():
    # 5 patients gain, 3 lose a little: 96 image pairs (8 patients x 4 images x 3 seeds)
    effects = [0.04, 0.035, 0.03, 0.025, 0.02, -0.005, -0.008, -0.011]
    cells = _cells(effects)
    by = {(c["synthetic_fraction"], c["seed"]): c for c in cells}
    a = [r["lv_endo_dice"] for s in (0, 1, 2) for r in by[(0.5, s)]["per_image"]]
    b = [r["lv_endo_dice"] for s in (0, 1, 2) for r in by[(0.0, s)]["per_image"]]
    pooled = wilcoxon_paired(a, b)
    assert pooled["n"] == 96 and pooled["pvalue"] < 0.05  # what pooling images claims
    rows = wilcoxon_rows(cells, n_boot=2000)
    assert len(rows) == 9  # 3 metrics x 3 structures
    t = next(r for r in rows if r["structure"] == "lv_endo" and r["metric"] == "dice")
    assert t["n_patients"] == 8 and t["n_seeds"] == 3 and t["n_image_pairs"] == 96
    # per-patient signs: 3 negatives hold ranks 1..3 -> W = 6, exact two-sided p = 2 * 14 / 256
    assert t["statistic"] == 6 and t["pvalue"] == pytest.approx(28 / 256) and t["pvalue"] > 0.05
    assert t["mean_diff"] == pytest.approx(np.mean(effects), abs=0.002)
    assert t["ci_low"] < t["mean_diff"] < t["ci_high"]
    assert len(t["seed_diffs"].split()) == 3 and t["seed_diff_min"] <= t["mean_diff"] <= t["seed_diff_max"]
    assert t["significant"] == "no" and t["n_tests"] == 9 and t["correction"] == "Holm over 9 tests"
    assert t["pvalue_holm"] == pytest.approx(holm([r["pvalue"] for r in rows])[rows.index(t)])
    hd = next(r for r in rows if r["structure"] == "lv_endo" and r["metric"] == "hd")
    assert hd["distance_unit"] == "px" and hd["mean_diff"] == pytest.approx(-10 * np.mean(effects), abs=0.02)
    assert t["distance_unit"] == "px"  # the unit of the cells' distances, on every row
    cells[0]["distance_unit"] = "mm"  # one seed's baseline in mm, the rest in px: HD/MAD not comparable
    mixed = wilcoxon_rows(cells, n_boot=200)
    assert all(math.isnan(r["mean_diff"]) and "units differ" in r["note"] for r in mixed if r["metric"] != "dice")
    assert all(r["n_patients"] == 8 for r in mixed if r["metric"] == "dice")


def test_clear_effect_is_significant_after_holm_and_few_patients_are_not_tested():
    rows = wilcoxon_rows(_cells([0.02 + 0.002 * i for i in range(12)], seeds=(0,)), n_boot=500)
    assert all(r["n_patients"] == 12 for r in rows)
    assert all(r["significant"] == "yes" and r["pvalue_holm"] <= 0.05 for r in rows)  # 2/4096 x 9 tests
    few = wilcoxon_rows(_cells([0.02, 0.03, 0.04, 0.05, 0.06]), n_boot=500)
    assert all(math.isnan(r["pvalue"]) and r["significant"] == "" and "0.05" in r["note"] for r in few)
    assert all(r["ci_low"] > 0 for r in few if r["metric"] == "dice")
    assert few[0]["correction"] == "none (no test possible)"


def test_per_image_csv_and_unit_are_read(tmp_path):
    ev = tmp_path / "cells" / "c" / "eval-test"
    ev.mkdir(parents=True)
    cols = ["patient", "view", "phase"] + [f"{s}_{m}" for s in ("lv_endo", "lv_epi", "la") for m in ("dice", "hd", "mad")]
    lines = [",".join(cols), ",".join(["patient0001", "2CH", "ED"] + ["0.9", "4.0", ""] * 3)]
    (ev / "per_image.csv").write_text("\n".join(lines) + "\n")
    cells = [{"cell": "c"}]
    attach_per_image(tmp_path, cells, "test")
    assert cells[0]["distance_unit"] == "mm"  # nothing says otherwise
    assert cells[0]["per_image"][0]["la_hd"] == 4.0 and math.isnan(cells[0]["per_image"][0]["la_mad"])
    (ev / "summary.json").write_text(json.dumps({"distance_unit": "px"}))
    attach_per_image(tmp_path, cells, "test")
    assert cells[0]["distance_unit"] == "px"
    (ev / "summary.json").write_text(json.dumps({"units": {"hd": "px", "mad": "px"}}))
    attach_per_image(tmp_path, cells, "test")
    assert cells[0]["distance_unit"] == "px"  # the evaluation's units record
    (ev / "per_image.csv").write_text("\n".join([",".join(cols + ["distance_unit"]), lines[1] + ",mm"]) + "\n")
    attach_per_image(tmp_path, cells, "test")
    assert cells[0]["distance_unit"] == "mm"  # the CSV's own column wins
    (ev / "per_image.csv").write_text("id,lv_endo_dice\n1,0.5\n")
    with pytest.raises(ValueError, match="per_image.csv.*patient"):
        attach_per_image(tmp_path, cells, "test")
    legacy = [{"cell": "old", "per_image_dice": {"p1/2CH/ED": {"lv_endo": 0.8, "lv_epi": 0.7, "la": 0.6}}}]
    attach_per_image(tmp_path, legacy, "test")
    assert legacy[0]["per_image"] == [{"patient": "p1", "view": "2CH", "phase": "ED", "lv_endo_dice": 0.8,
                                       "lv_epi_dice": 0.7, "la_dice": 0.6}]


def test_markdown_distance_unit():
    md = table_markdown(summarize_cells(_rows()), distance_unit="px")
    assert "LV endo HD (px)" in md.splitlines()[0] and "(mm)" not in md
