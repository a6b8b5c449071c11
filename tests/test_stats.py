"""Study statistics: Wilcoxon against scipy, cell summaries against hand values, CSV/markdown/plot."""

import csv
import math

import numpy as np
import pytest
from scipy import stats as sps

from cardigan_tf.stats import (
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
