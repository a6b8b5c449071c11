"""experiments/ensemble_figures.py: single U-Net vs fold ensemble vs ensemble + TTA, paired per
test patient, and the cost table. One run of the script on a tiny phantom (K = 2, 1 epoch of 2
steps, 4 patients outside the test split, 3 test patients) serves the end-to-end test."""

import csv
import json

import numpy as np
import pytest

from cardigan_tf.files import OverwriteError
from experiments import ensemble_figures
from experiments import ensemble_figures_report as report

TINY = ["--folds", "2", "--epochs", "1", "--steps", "2", "--pool", "4", "--test-patients", "3", "--timing-steps", "1",
        "--n-boot", "200", "--set", "model.base_filters=4", "--set", "model.max_filters=16",
        "--set", "train.batch_size=4"]


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_verdict_reads_the_interval_in_the_metric_direction():
    assert report.verdict(0.01, 0.03, 1) == "better" and report.verdict(0.01, 0.03, -1) == "worse"
    assert report.verdict(-3.0, -1.0, -1) == "better" and report.verdict(-0.03, -0.01, 1) == "worse"
    assert report.verdict(-0.01, 0.02, 1) == "no difference shown"
    assert report.verdict(float("nan"), 0.1, 1) == "not tested"
    rows = [{"comparison": "ensemble - single", "metric": m, "verdict": v}
            for m, v in (("lv_endo_dice", "better"), ("la_hd", "worse"), ("lv_epi_mad", "no difference shown"))]
    c = report.checks(rows)["ensemble - single"]
    assert c["primary_better"] and not c["not_worse"] and c["worse"] == ["la_hd"]


@pytest.mark.slow
def test_script_writes_the_figures_on_a_tiny_phantom(tmp_path):
    out = tmp_path / "ensfig"
    assert ensemble_figures.main(["--out", str(out), *TINY]) == 0
    for name in ("figures.md", "figures.csv", "cost.csv", "figures.json", "figures.png"):
        assert (out / name).is_file(), name
    assert (out / "figures.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out / "figures.csv")
    want = {(f"{arm} - single", m) for arm in ("ensemble", "ensemble_tta") for m, *_ in report.metrics()}
    assert {(r["comparison"], r["metric"]) for r in rows} == want and len(rows) == len(want) == 20

    # the estimate is the mean over patients of the per-patient mean differences (read here from the CSVs)
    def per_patient(arm):
        acc = {}
        for r in _rows(out / "eval" / arm / "per_image.csv"):
            acc.setdefault(r["patient"], []).append(float(r["lv_endo_dice"]))
        return {p: np.mean(v) for p, v in acc.items()}
    single, ens = per_patient("single"), per_patient("ensemble")
    assert len(single) == 3
    row = next(r for r in rows if (r["comparison"], r["metric"]) == ("ensemble - single", "lv_endo_dice"))
    assert float(row["estimate"]) == pytest.approx(np.mean([ens[p] - single[p] for p in single]), abs=1e-9)
    assert int(row["n_patients"]) == 3 and "patient-level paired bootstrap" in row["method"]
    assert float(row["ci_low"]) <= float(row["estimate"]) <= float(row["ci_high"])

    cost = _rows(out / "cost.csv")
    inference = {(r["arm"], r["batch"]) for r in cost if r["item"] == "inference"}
    assert inference == {(a, b) for a in report.ARMS for b in ("1", "8")}
    sizes = {r["arm"]: float(r["value"]) for r in cost if r["item"] == "SavedModel size"}
    assert set(sizes) == set(report.ARMS) and sizes["ensemble"] > 1.5 * sizes["single"]
    for arm in report.ARMS:
        assert (out / "export" / f"ensfig_{arm}" / "1" / "saved_model.pb").is_file()
    bounded = [r for r in cost if r["item"] == "inference" and r["arm"] != "single"]
    assert all(r["within"] in ("yes", "NO") and float(r["bound"]) > 0 for r in bounded)
    record = json.loads((out / "figures.json").read_text())
    assert set(record["checks"]) == {"ensemble - single", "ensemble_tta - single"}
    summary = json.loads((out / "eval" / "ensemble_tta" / "summary.json").read_text())
    assert summary["ensemble"]["tta"] == ["gamma:0.8", "gamma:1.25"] and len(summary["ensemble"]["members"]) == 2
    text = (out / "figures.md").read_text()
    assert "## Goals" in text and "not worse on any structure" in text and "## Cost" in text
    assert "| members/fold-1 |" in text and (out / "eval" / "members" / "fold-0" / "per_image.csv").is_file()
    with pytest.raises(OverwriteError, match="figures.md"):
        ensemble_figures.main(["--out", str(out), *TINY])
