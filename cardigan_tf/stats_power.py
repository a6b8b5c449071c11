"""The smallest true difference a comparison of :mod:`cardigan_tf.stats_hierarchical` detects
with a given power: for the test that was run (:func:`observed_detectable_difference`, the one
the study reports) and for another design sized from its variance components
(:func:`detectable_difference` with ``n_patients`` / ``n_seeds``); docs/statistics.md.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

from cardigan_tf.stats_hierarchical import DEFAULT_ALPHA, DEFAULT_POWER, satterthwaite


def minimal_detectable_difference(se: float, *, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER,
                                  df: float | None = None) -> float:
    """Smallest true difference detected with probability ``power`` by a two-sided test at ``alpha``.

    ``MDD = (q(1 - alpha/2) + q(power)) * se`` with q the Student-t quantile with ``df`` degrees of
    freedom (the usual approximation of the noncentral t), or the normal quantile when ``df`` is
    None: ``(1.960 + 0.842) se = 2.80 se`` at the defaults.
    """
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"minimal_detectable_difference: alpha and power must be in (0, 1), got {alpha}, {power}")
    if not se >= 0:
        raise ValueError(f"minimal_detectable_difference: se must be >= 0, got {se}")
    if df is None:
        q = sps.norm.ppf([1 - alpha / 2, power])
    else:
        if not df > 0:
            raise ValueError(f"minimal_detectable_difference: df must be > 0, got {df}")
        q = sps.t.ppf([1 - alpha / 2, power], df)
    return float((q[0] + q[1]) * se)


#: quantiles of the chi-square averaged over in :func:`observed_detectable_difference`
NCT_GRID = 4000


def observed_detectable_difference(se: float, df: float, *, alpha: float = DEFAULT_ALPHA,
                                   power: float = DEFAULT_POWER) -> float:
    """MDD of the test that was run, from its own SE and df: the true difference that the t test
    with ``df`` rejects with probability ``power``.

    Two corrections make it hold in simulation (tests/test_study_endpoint.py): the SE is an
    estimate whose median lies below the true SD with few df (scaled by
    ``sqrt(df / chi2.ppf(0.5, df))``, about 1.09 at 4 df), and the power is that of the
    noncentral t, not the sum of two quantiles (about 1 % more at 4 df)."""
    if not (se > 0 and df > 0):
        raise ValueError(f"observed_detectable_difference: se and df must be > 0, got {se}, {df}")
    sigma = se * math.sqrt(df / sps.chi2.ppf(0.5, df))
    crit = sps.t.isf(alpha / 2, df)
    # T = (Z + lam) / sqrt(V / df), V ~ chi2_df: the power averaged over a fine grid of V's quantiles
    # (scipy's nct is unstable at few df and large lam)
    scale = crit * np.sqrt(sps.chi2.ppf((np.arange(NCT_GRID) + 0.5) / NCT_GRID, df) / df)

    def shortfall(lam: float) -> float:
        return float(np.mean(sps.norm.cdf(lam - scale) + sps.norm.cdf(-lam - scale))) - power

    lam = brentq(shortfall, 0.0, 100.0)
    return float(lam * sigma)


def detectable_difference(comparison: Mapping[str, Any], *, n_patients: int | None = None,
                          n_seeds: int | Mapping[Hashable, int] | None = None, alpha: float = DEFAULT_ALPHA,
                          power: float = DEFAULT_POWER) -> dict[str, Any]:
    """MDD of a design, from a :func:`hierarchical_paired_comparison` result.

    For the observed design (no ``n_patients``/``n_seeds``) the SE is the comparison's bootstrap SE
    and the quantiles are Student-t with its Satterthwaite df: the very test that was run. For
    another design (``n_seeds``: one count for both arms or a dict by arm) the SE comes from the
    variance components, ``seed_sd^2 / S`` per arm (``seed_diff_sd^2 / S`` with paired seeds)
    plus ``patient_sd^2 / P``, with that design's Satterthwaite df; ``patient_sd`` holds the image
    noise averaged over the observed seeds, so more seeds are sized conservatively. Returns
    ``{"mdd", "se", "df", "alpha", "power", "n_patients", "n_seeds", "basis"}``.
    """
    arms = comparison["arms"]
    observed = {arm: int(comparison["n_seeds"][arm]) for arm in arms}
    if n_seeds is None:
        planned = dict(observed)
    elif isinstance(n_seeds, Mapping):
        planned = {arm: int(n_seeds.get(arm, observed[arm])) for arm in arms}
    else:
        planned = {arm: int(n_seeds) for arm in arms}
    n_pat = int(comparison["n_patients"] if n_patients is None else n_patients)
    if n_pat < 2 or min(planned.values()) < 1:
        raise ValueError(f"detectable_difference: need >= 2 patients and >= 1 seed per arm, got {n_pat}, {planned}")
    if n_patients is None and n_seeds is None:
        se, df = float(comparison["se"]), float(comparison["df"])
        if math.isfinite(df) and se > 0:
            mdd = observed_detectable_difference(se, df, alpha=alpha, power=power)
            return {"mdd": mdd, "se": se, "df": df, "alpha": alpha, "power": power, "n_patients": n_pat,
                    "n_seeds": planned, "basis": "bootstrap SE of the comparison made median-unbiased "
                    "(x sqrt(df / median of chi2_df)), noncentral-t power with its Satterthwaite df"}
        basis = "bootstrap SE of the comparison, Student-t quantiles with its Satterthwaite df"
    else:
        if max(planned.values()) > 1 and not comparison["training_variance_estimated"]:
            raise ValueError("detectable_difference: the comparison has one seed per arm, so its training-run variance "
                             "is unknown and cannot size a design with more seeds")
        parts = [(comparison["patient_sd"] ** 2 / n_pat, n_pat - 1)]
        if max(planned.values()) > 1:
            if comparison["paired_seeds"]:
                if len(set(planned.values())) > 1:
                    raise ValueError(f"detectable_difference: paired seeds need equal seeds per arm, got {planned}")
                parts.append((comparison["seed_diff_sd"] ** 2 / planned[arms[0]], planned[arms[0]] - 1))
            else:
                parts += [(comparison["seed_sd"][arm] ** 2 / planned[arm], planned[arm] - 1) for arm in arms]
        se = math.sqrt(sum(v for v, _ in parts))
        df = float(satterthwaite([(np.asarray(v), k) for v, k in parts]))
        basis = "variance components scaled to the design, Student-t quantiles with its Satterthwaite df"
    mdd = minimal_detectable_difference(se, alpha=alpha, power=power, df=df if math.isfinite(df) else None)
    return {"mdd": mdd, "se": se, "df": df, "alpha": alpha, "power": power, "n_patients": n_pat,
            "n_seeds": planned, "basis": basis}

