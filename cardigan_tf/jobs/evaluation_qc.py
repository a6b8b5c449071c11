"""The uncertainty and anatomical-QC part of an evaluation (library; :mod:`cardigan_tf.jobs.evaluation`).

Per image (:func:`image_columns`, columns of ``per_image.csv``): ``uncertainty`` (and
``disagreement`` when the prediction has more than one member), ``qc_flags`` (the bitmask of
:data:`cardigan_tf.metrics.anatomy.QC_FLAGS`), one 0/1 column ``qc_<flag>`` per flag, and
``gt_qc_flags``, the same checks on the ground truth (how often they fire on anatomy that is
right, on this data). The checks run on the evaluated mask (after ``--postprocess``), on the
grid where the metrics are computed, with its spacing.

Over the split (:func:`qc_summary`, keys of ``summary.json``): ``uncertainty`` (what was
measured, with how many members, mean), ``qc`` (images flagged, per-flag counts on the
predictions and on the ground truth) and ``failure_ranking`` (how well ``uncertainty`` ranks
the images with LV endo Dice below 0.90: Mann-Whitney AUC, mean Dice of the 10 % most uncertain
against the rest; :func:`cardigan_tf.metrics.uncertainty.failure_ranking`), also for
``disagreement`` when it was measured. :func:`qc_markdown` is the report's section.
"""

from __future__ import annotations

import math

import numpy as np

from cardigan_tf.metrics.anatomy import QC_FLAGS, check_anatomy, flag_names
from cardigan_tf.metrics.uncertainty import FAILURE_DICE, TOP_FRACTION, failure_ranking

SCORES = ("uncertainty", "disagreement")


def image_columns(pred: np.ndarray, gt: np.ndarray, spacing, scores: dict[str, float]) -> dict:
    """The per-image columns: the scores given, ``qc_flags``, ``qc_<flag>`` and ``gt_qc_flags``."""
    qc = check_anatomy(pred, spacing)
    row = {k: float(scores[k]) for k in SCORES if k in scores}
    row["qc_flags"] = qc.qc_flags
    row.update({f"qc_{name}": int(qc.flags[name]) for name in QC_FLAGS})
    row["gt_qc_flags"] = check_anatomy(gt, spacing).qc_flags
    return row


def _counts(bitmasks) -> dict:
    names = [flag_names(b) for b in bitmasks]
    return {"n_flagged": sum(1 for n in names if n),
            "counts": {flag: sum(1 for n in names if flag in n) for flag in QC_FLAGS}}


def qc_summary(rows: list[dict], members: int) -> dict:
    """``uncertainty``, ``qc`` and ``failure_ranking`` of the per-image rows (module docstring)."""
    dice = [r["lv_endo_dice"] for r in rows]
    u = np.array([r["uncertainty"] for r in rows], np.float64)
    out = {
        "uncertainty": {"members": members, "mean": float(np.mean(u)) if len(u) else float("nan"),
                        "measure": "mean normalised predictive entropy over the foreground region "
                                   "(cardigan_tf.metrics.uncertainty)"},
        "qc": {"flags": list(QC_FLAGS), "n_images": len(rows), **_counts(r["qc_flags"] for r in rows),
               "ground_truth": _counts(r["gt_qc_flags"] for r in rows)},
        "failure_ranking": {"uncertainty": failure_ranking(u, dice)},
    }
    if rows and "disagreement" in rows[0]:
        d = np.array([r["disagreement"] for r in rows], np.float64)
        out["uncertainty"]["disagreement_mean"] = float(np.mean(d))
        out["failure_ranking"]["disagreement"] = failure_ranking(d, dice)
    return out


def _num(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def qc_markdown(summary: dict) -> list[str]:
    """The report's "Uncertainty and quality control" section."""
    unc, qc = summary["uncertainty"], summary["qc"]
    m = unc["members"]
    members = f"{m} member{'s' if m != 1 else ''}"
    disagreement = (f"; disagreement (1 - mean pairwise Dice) mean {_num(unc['disagreement_mean'])}"
                    if "disagreement_mean" in unc else "")
    lines = ["## Uncertainty and quality control", "",
             f"Uncertainty: {unc['measure']}, {members}; mean {_num(unc['mean'])}{disagreement}.", "",
             (f"| score | images | failures (LV endo Dice < {FAILURE_DICE:.2f}) | AUC | "
              f"Dice, {TOP_FRACTION:.0%} most uncertain | Dice, the rest |"), "|---|---|---|---|---|---|"]
    for name, r in summary["failure_ranking"].items():
        lines.append(f"| {name} | {r['n']} | {r['n_failures']} | {_num(r['auc'])} | {_num(r['dice_top'])} "
                     f"(n = {r['n_top']}) | {_num(r['dice_rest'])} |")
    lines += ["", (f"Anatomical checks (per_image.csv `qc_flags`, bit i = flag i below): {qc['n_flagged']} of "
                   f"{qc['n_images']} predictions flagged; {qc['ground_truth']['n_flagged']} ground-truth masks."), "",
              "| bit | flag | predictions | ground truth |", "|---|---|---|---|"]
    for bit, name in enumerate(qc["flags"]):
        lines.append(f"| {bit} | {name} | {qc['counts'][name]} | {qc['ground_truth']['counts'][name]} |")
    return lines + [""]
