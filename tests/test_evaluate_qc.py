"""evaluate's uncertainty and anatomical-QC outputs (per_image.csv columns, summary.json, report.md)
on the session's ``key_seg_evaluation``, and the one function that turns members into a prediction."""

import csv
import itertools
import math

import numpy as np
import pytest

from cardigan_tf.inference import combine_members
from cardigan_tf.metrics.anatomy import QC_FLAGS
from cardigan_tf.metrics.uncertainty import member_uncertainty


def _rows(out):
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_per_image_columns_hold_the_flags_and_one_member_has_no_disagreement(key_seg_evaluation):
    summary, out = key_seg_evaluation
    rows = _rows(out)
    assert "disagreement" not in rows[0]  # one model: M = 1, entropy only
    for r in rows:
        assert 0.0 <= float(r["uncertainty"]) <= 1.0
        bits = sum(int(r[f"qc_{name}"]) << i for i, name in enumerate(QC_FLAGS))
        assert int(r["qc_flags"]) == bits
        assert 0 <= int(r["gt_qc_flags"]) < 1 << len(QC_FLAGS)
    assert summary["uncertainty"]["members"] == 1 and "disagreement_mean" not in summary["uncertainty"]
    assert summary["uncertainty"]["mean"] == pytest.approx(np.mean([float(r["uncertainty"]) for r in rows]))


def test_summary_counts_and_failure_ranking_follow_the_csv(key_seg_evaluation):
    summary, out = key_seg_evaluation
    rows = _rows(out)
    qc = summary["qc"]
    assert qc["flags"] == list(QC_FLAGS) and qc["n_images"] == len(rows)
    assert qc["n_flagged"] == sum(int(r["qc_flags"]) != 0 for r in rows)
    for i, name in enumerate(QC_FLAGS):
        assert qc["counts"][name] == sum(int(r[f"qc_{name}"]) for r in rows)
        assert qc["ground_truth"]["counts"][name] == sum(int(r["gt_qc_flags"]) >> i & 1 for r in rows)
    # the phantom's ground truth is anatomical: the checks do not fire on it
    assert qc["ground_truth"]["n_flagged"] == 0
    rank = summary["failure_ranking"]["uncertainty"]
    dice = np.array([float(r["lv_endo_dice"]) for r in rows])
    u = np.array([float(r["uncertainty"]) for r in rows])
    failed = dice < 0.90
    assert rank["n"] == len(rows) and rank["n_failures"] == int(failed.sum())
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(u[failed], u[~failed])]
    assert (math.isnan(rank["auc"]) and not pairs) or rank["auc"] == pytest.approx(np.mean(pairs))
    top = np.argsort(-u, kind="stable")[: max(1, math.ceil(round(0.1 * len(u), 9)))]
    assert rank["dice_top"] == pytest.approx(dice[top].mean())
    report = (out / "report.md").read_text()
    assert "## Uncertainty and quality control" in report
    assert f"| uncertainty | {len(rows)} | {rank['n_failures']} |" in report
    assert f"| 12 | long_axis | {qc['counts']['long_axis']} | 0 |" in report


def test_combine_members_means_the_members_and_scores_them(rng):
    p = rng.random((3, 2, 8, 8, 4)).astype(np.float32)
    p /= p.sum(-1, keepdims=True)
    mean, scores = combine_members(p)
    np.testing.assert_allclose(mean, p.mean(0), rtol=1e-6)
    ref = member_uncertainty(p)
    assert set(scores) == {"uncertainty", "disagreement"}
    np.testing.assert_array_equal(scores["disagreement"], ref["disagreement"])
    mean1, scores1 = combine_members(p[:1])
    np.testing.assert_array_equal(mean1, p[0])
    assert set(scores1) == {"uncertainty"}
    with pytest.raises(ValueError, match="expected shape \\[M, B, H, W, C\\]"):
        combine_members(p[0])
