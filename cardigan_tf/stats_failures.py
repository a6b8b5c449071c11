"""Failure rates of two arms paired by image: exact McNemar test and a patient-level sign test.

A failure is an empty or unmeasurable structure. Both tests are exact (binomial at 1/2 on the
discordant units, :func:`scipy.stats.binomtest`, two-sided). :func:`mcnemar_exact` pairs images
and treats them as independent, which images of one patient are not: failures cluster in
patients, so its p-value is too small when they do. :func:`failure_sign_test` counts patients.
Both are a secondary, exploratory endpoint next to the primary per-patient Dice comparison
(:mod:`cardigan_tf.stats_hierarchical`).
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
from scipy import stats as sps

FAILURE_ENDPOINT = "secondary, exploratory endpoint"


def _flags(x, name: str) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64).ravel()
    bad = np.isfinite(f) & (f != 0) & (f != 1)
    if bad.any():
        raise ValueError(f"{name}: failures must be 0/1 or booleans (NaN: not scored), got {np.unique(f[bad])[:5]}")
    return f


def _two_sided_sign(k: int, n: int) -> float:
    return float(sps.binomtest(k, n, 0.5).pvalue) if n else 1.0


def mcnemar_exact(fail_a: Sequence, fail_b: Sequence) -> dict[str, Any]:
    """Exact McNemar test of two arms' failure rates, paired by image.

    ``fail_a[i]``, ``fail_b[i]``: whether image i failed (empty or unmeasurable structure) under
    arm A and arm B; NaN drops the pair. The p-value is the two-sided exact binomial test of the
    discordant pairs (``b_only`` of ``a_only + b_only``, probability 1/2). The test treats images as
    independent, which images of one patient are not: a secondary, exploratory endpoint
    (:func:`failure_sign_test` counts patients). Returns ``{"n_pairs", "rate_a", "rate_b",
    "a_only", "b_only", "both", "neither", "pvalue", "method", "note"}``.
    """
    a, b = _flags(fail_a, "mcnemar_exact"), _flags(fail_b, "mcnemar_exact")
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: paired flags need the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep].astype(bool), b[keep].astype(bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    n = int(a.size)
    return {"n_pairs": n, "rate_a": float(a.mean()) if n else float("nan"),
            "rate_b": float(b.mean()) if n else float("nan"), "a_only": a_only, "b_only": b_only,
            "both": int(np.sum(a & b)), "neither": int(np.sum(~a & ~b)),
            "pvalue": _two_sided_sign(b_only, a_only + b_only),
            "method": f"exact McNemar (two-sided binomial on discordant image pairs); {FAILURE_ENDPOINT}",
            "note": "" if a_only + b_only else "no discordant pair"}


def failure_sign_test(patient: Sequence[Hashable], fail_a: Sequence, fail_b: Sequence) -> dict[str, Any]:
    """Patient-level comparison of failure counts: exact two-sided sign test.

    Per patient, the failures of its image pairs (``patient[i]`` owns pair i) are counted under
    each arm; patients with more failures under B are tested against those with more under A
    (ties dropped) with the binomial at 1/2. Returns ``{"n_patients", "rate_a", "rate_b",
    "patients_more_a", "patients_more_b", "patients_tied", "pvalue", "method", "note"}``.
    """
    a, b = _flags(fail_a, "failure_sign_test"), _flags(fail_b, "failure_sign_test")
    pat = list(patient)
    if not (len(pat) == a.size == b.size):
        raise ValueError(f"failure_sign_test: patient and flags need the same length, got {len(pat)}, {a.size}, {b.size}")
    counts: dict[Hashable, list[float]] = {}
    for p, x, y in zip(pat, a, b):
        if math.isfinite(x) and math.isfinite(y):
            c = counts.setdefault(p, [0.0, 0.0])
            c[0] += x
            c[1] += y
    more_a = sum(1 for x, y in counts.values() if x > y)
    more_b = sum(1 for x, y in counts.values() if y > x)
    keep = np.isfinite(a) & np.isfinite(b)
    return {"n_patients": len(counts), "rate_a": float(a[keep].mean()) if keep.any() else float("nan"),
            "rate_b": float(b[keep].mean()) if keep.any() else float("nan"), "patients_more_a": more_a,
            "patients_more_b": more_b, "patients_tied": len(counts) - more_a - more_b,
            "pvalue": _two_sided_sign(more_b, more_a + more_b),
            "method": f"exact sign test on per-patient failure counts; {FAILURE_ENDPOINT}",
            "note": "" if more_a + more_b else "no patient with differing failure counts"}
