"""Two-arm comparisons that count patients and training runs: a hierarchical bootstrap and the
difference it can detect.

Design. Each arm (A, e.g. real data only; B, e.g. with synthetic data) trains its own U-Nets
(seeds = training runs) and every run is scored on the same test patients, several images
(views x phases) per patient. The independent units are the patients (shared by both arms, so
the comparison is paired by patient) and the training runs (independent between arms, unless
``paired_seeds``: arm A seed k and arm B seed k share something, e.g. a GAN or a data order).
Images of one patient are not independent and are never resampled.

Estimate. ``m_a[s, p]`` is the mean over the images of patient p scored by run s of arm a
(a "cell"). Per arm the per-patient value is the mean over that arm's seeds, and the estimate is
``D = mean_p (mean_s m_B[s, p] - mean_s m_A[s, p])`` (B - A), the primary endpoint "per-patient
value averaged over views and phases". Equivalently ``D = mean_s X_B[s] - mean_s X_A[s]`` with
``X_a[s] = mean_p m_a[s, p]`` the run means, and ``D = mean_p d[p]`` with ``d[p]`` the
per-patient difference of seed-averaged values.

Bootstrap. Each replicate draws, with replacement, the patients (one draw for both arms: paired)
and, per arm, its seeds (independent draws; one shared draw when ``paired_seeds``), and adds the
two perturbations of the estimate::

    D* = D + c_B (mean X_B[s*_B] - mean X_B) - c_A (mean X_A[s*_A] - mean X_A)   (seeds)
           + c_P (mean d[p*] - D)                                                (patients)

(paired seeds: ``c_S (mean delta[s*] - D)`` with ``delta[k] = X_B[k] - X_A[k]``). The factors
``c_n = sqrt(n / (n - 1))`` make the variance of a mean of n resampled units the unbiased
``s^2 / n`` instead of ``(n - 1) s^2 / n^2``, which matters with 3 seeds. The ideal bootstrap
variance is then ``s^2(X_A)/S_A + s^2(X_B)/S_B + s^2(d)/P``: the seed part is the training-run
variance at the observed patients, the patient part the between-patient variance of the paired
difference. The image noise (and the seed x patient interaction) enters both parts, so the
variance is slightly conservative. Recomputing the statistic on a table resampled at both
levels at once adds that residual a third time (a seed x patient cross term) and was more
conservative in simulation (``docs/statistics.md``).

Interval and p-value. With 3 seeds per arm the seed part has about 4 degrees of freedom; a
percentile interval of the replicates, bounded by the observed range of the run means, is then
too narrow (it rejects a true null about twice as often as alpha; ``docs/statistics.md``). The
interval is therefore ``D +- t(nu, 1 - alpha/2) SE`` with SE the SD of the replicates and nu the
Satterthwaite degrees of freedom of the parts above (S_A - 1, S_B - 1 or S - 1, and P - 1). The p-value inverts that
interval: ``p = 2 P(T_nu > |D| / SE)``, the smallest alpha whose interval excludes 0, so
"the 1 - alpha interval excludes 0" and "p < alpha" are the same statement. With one seed per
arm the seed part vanishes: it is a patient-level paired bootstrap with nu = P - 1, and the
result says that the training-run variance is not estimated.

:func:`hierarchical_paired_comparison` reads a long per-image table;
:func:`compare_cell_means` is the same computation on arrays of cell means (any leading batch
shape, as the calibration tests use it). :mod:`cardigan_tf.stats_power` gives the smallest true
difference a design detects. Failure rates are compared in :mod:`cardigan_tf.stats_failures`.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

#: columns of the long table
ARM, SEED, PATIENT = "arm", "seed", "patient"
DEFAULT_N_BOOT = 10000
DEFAULT_LEVEL = 0.95
DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.80
#: replicates drawn at once: bounds the index arrays' memory (entries per chunk)
_CHUNK_ENTRIES = 4_000_000
NOTE_ONE_SEED = "one seed per arm: training-run variance is not estimated"


def _inflation(n: int) -> float:
    return math.sqrt(n / (n - 1)) if n > 1 else 0.0


def _resampled_mean(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the last axis of ``x`` (batch, n)."""
    batch, n = x.shape
    out = np.empty((batch, n_boot))
    step = max(1, _CHUNK_ENTRIES // max(1, batch * n))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(batch, k, n))
        out[:, start:start + k] = np.take_along_axis(x[:, None, :], idx, axis=2).mean(axis=2)
    return out


def satterthwaite(parts: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Welch-Satterthwaite degrees of freedom of a sum of variance parts (each with its df)."""
    used = [(v, df) for v, df in parts if df >= 1]
    total = sum(v for v, _ in used)
    denom = sum(v * v / df for v, df in used)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, total * total / np.where(denom > 0, denom, 1.0), np.nan)


def _method(n_boot: int, one_seed: bool, paired_seeds: bool, df: float) -> str:
    tail = (f"{n_boot} resamples; Student-t interval on the bootstrap SE with "
            + (f"{df:.1f} df" if one_seed else f"Satterthwaite df {df:.1f}") + "; p by inverting the interval")
    if one_seed:
        return f"patient-level paired bootstrap ({NOTE_ONE_SEED}), " + tail
    seeds = "one seed draw shared by both arms (paired seeds)" if paired_seeds else "independent between arms"
    return f"hierarchical bootstrap: patients (paired) x seeds within arm ({seeds}), " + tail


def compare_cell_means(cells_a, cells_b, *, paired_seeds: bool = False, level: float = DEFAULT_LEVEL,
                       n_boot: int = DEFAULT_N_BOOT, rng_seed: int | np.random.Generator = 0,
                       return_replicates: bool = False) -> dict[str, Any]:
    """The hierarchical comparison (module docstring) on cell means.

    ``cells_a``, ``cells_b``: arrays ``(..., S_a, P)``, the mean per (seed, patient) of arm A and
    arm B, patients in the same order; leading axes are independent studies. Both arms need
    one seed each or at least two each. Returns arrays of the batch shape: ``estimate`` (B - A),
    ``se`` (SD of the replicates), ``df``, ``ci_low``, ``ci_high``, ``pvalue``, ``seed_sd_a``,
    ``seed_sd_b`` (SD of the run means ``X_a``; NaN with one seed), ``seed_diff_sd`` (SD of the
    paired run differences; NaN unless ``paired_seeds``), ``patient_sd`` (SD of the per-patient
    differences ``d``), ``var_seeds``, ``var_patients`` (the two parts of the ideal bootstrap
    variance); scalars ``level``, ``n_boot``, ``n_patients``, ``n_seeds_a``, ``n_seeds_b``,
    ``paired_seeds``, ``training_variance_estimated``, ``method``; ``replicates`` (batch,
    n_boot) when asked.
    """
    a = np.asarray(cells_a, dtype=np.float64)
    b = np.asarray(cells_b, dtype=np.float64)
    if a.ndim < 2 or b.ndim < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"compare_cell_means: cells must be (..., seeds, patients) with the same batch and "
                         f"patients, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"compare_cell_means: level must be in (0, 1), got {level}")
    if int(n_boot) < 2:
        raise ValueError(f"compare_cell_means: n_boot must be >= 2, got {n_boot}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("compare_cell_means: cell means must be finite")
    batch, (s_a, n_pat), s_b = a.shape[:-2], a.shape[-2:], b.shape[-2]
    if n_pat < 2:
        raise ValueError(f"compare_cell_means: need at least 2 patients, got {n_pat}")
    if (s_a == 1) != (s_b == 1):
        raise ValueError(f"compare_cell_means: arm A has {s_a} seed(s) and arm B {s_b}: give both arms at least "
                         "2 seeds (or one each for a patient-level comparison)")
    if paired_seeds and s_a != s_b:
        raise ValueError(f"compare_cell_means: paired seeds need the same seeds in both arms, got {s_a} and {s_b}")
    n_boot = int(n_boot)
    rng = rng_seed if isinstance(rng_seed, np.random.Generator) else np.random.default_rng(rng_seed)
    a = a.reshape((-1, s_a, n_pat))
    b = b.reshape((-1, s_b, n_pat))
    x_a, x_b = a.mean(axis=2), b.mean(axis=2)             # run means (batch, S)
    d = b.mean(axis=1) - a.mean(axis=1)                     # per-patient differences (batch, P)
    est = d.mean(axis=1)
    one_seed = s_a == 1
    nan = np.full(est.shape, np.nan)
    sd_a = x_a.std(axis=1, ddof=1) if s_a > 1 else nan
    sd_b = x_b.std(axis=1, ddof=1) if s_b > 1 else nan
    sd_p = d.std(axis=1, ddof=1)

    reps = np.repeat(est[:, None], n_boot, axis=1)
    reps += _inflation(n_pat) * (_resampled_mean(d, n_boot, rng) - est[:, None])
    if one_seed:
        sd_delta, parts = nan, []
    elif paired_seeds:
        delta = x_b - x_a
        sd_delta = delta.std(axis=1, ddof=1)
        reps += _inflation(s_a) * (_resampled_mean(delta, n_boot, rng) - est[:, None])
        parts = [(sd_delta ** 2 / s_a, s_a - 1)]
    else:
        sd_delta = nan
        for x, sign in ((x_b, 1.0), (x_a, -1.0)):
            mean = x.mean(axis=1)
            reps += sign * _inflation(x.shape[1]) * (_resampled_mean(x, n_boot, rng) - mean[:, None])
        parts = [(sd_a ** 2 / s_a, s_a - 1), (sd_b ** 2 / s_b, s_b - 1)]
    var_seeds = sum(v for v, _ in parts) if parts else np.zeros(est.shape)
    var_patients = sd_p ** 2 / n_pat
    df = satterthwaite(parts + [(var_patients, n_pat - 1)])

    # interval est +- t.isf(alpha/2) se and p = 2 t.sf(|est| / se): the same t distribution, so the
    # interval excludes 0 exactly when p < alpha; no spread at all gives the interval (est, est)
    se = reps.std(axis=1, ddof=1)
    positive = se > 0
    safe_df = np.where(np.isfinite(df), df, 1.0)
    half = np.where(positive, sps.t.isf((1.0 - level) / 2.0, safe_df) * se, 0.0)
    tstat = np.abs(est) / np.where(positive, se, 1.0)
    pvalue = np.where(positive, 2.0 * sps.t.sf(tstat, safe_df), np.where(est == 0, 1.0, 0.0))

    def shaped(x):
        return np.asarray(x, dtype=np.float64).reshape(batch)

    df_shown = float(np.nanmedian(df)) if np.isfinite(df).any() else float("nan")
    out: dict[str, Any] = {
        "estimate": shaped(est), "se": shaped(se), "df": shaped(df), "ci_low": shaped(est - half),
        "ci_high": shaped(est + half), "pvalue": shaped(np.clip(pvalue, 0.0, 1.0)),
        "seed_sd_a": shaped(sd_a), "seed_sd_b": shaped(sd_b), "seed_diff_sd": shaped(sd_delta),
        "patient_sd": shaped(sd_p), "var_seeds": shaped(var_seeds), "var_patients": shaped(var_patients),
        "level": float(level), "n_boot": n_boot, "n_patients": int(n_pat), "n_seeds_a": int(s_a),
        "n_seeds_b": int(s_b), "paired_seeds": bool(paired_seeds), "training_variance_estimated": not one_seed,
        "method": _method(n_boot, one_seed, paired_seeds, df_shown),
    }
    if return_replicates:
        out["replicates"] = reps.reshape(batch + (n_boot,))
    return out


def _columns(table: Mapping[str, Sequence] | Iterable[Mapping[str, Any]], value: str) -> list[list]:
    names = (ARM, SEED, PATIENT, value)
    if isinstance(table, Mapping):
        missing = [k for k in names if k not in table]
        if missing:
            raise ValueError(f"hierarchical_paired_comparison: the table lacks columns {missing}; expected {list(names)}")
        cols = [list(table[k]) for k in names]
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise ValueError(f"hierarchical_paired_comparison: columns {list(names)} have lengths {[len(c) for c in cols]}")
        return cols
    cols: list[list] = [[], [], [], []]
    for i, row in enumerate(table):
        missing = [k for k in names if k not in row]
        if missing:
            raise ValueError(f"hierarchical_paired_comparison: row {i} lacks {missing}; expected keys {list(names)}")
        for col, k in zip(cols, names):
            col.append(row[k])
    return cols


def _listed(items: Iterable, limit: int = 10) -> str:
    items = sorted(items, key=str)
    shown = ", ".join(repr(x) for x in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def _cell_matrix(cells: Mapping[tuple, list[float]], arm: Hashable, seeds: list, patients: list) -> np.ndarray:
    m = np.empty((len(seeds), len(patients)))
    for i, s in enumerate(seeds):
        lacking = [p for p in patients if (arm, s, p) not in cells]
        if lacking:
            raise ValueError(f"hierarchical_paired_comparison: arm {arm!r} seed {s!r} has no finite value for patients "
                             f"{_listed(lacking)}: every training run must score every test patient")
        for j, p in enumerate(patients):
            total, count = cells[(arm, s, p)]
            m[i, j] = total / count
    return m


def hierarchical_paired_comparison(table: Mapping[str, Sequence] | Iterable[Mapping[str, Any]],
                                   arms: tuple[Hashable, Hashable], *, value: str = "value",
                                   paired_seeds: bool = False, level: float = DEFAULT_LEVEL,
                                   n_boot: int = DEFAULT_N_BOOT, rng_seed: int = 0) -> dict[str, Any]:
    """Compare arm ``arms[1]`` (B) with arm ``arms[0]`` (A) on a long per-image table.

    ``table``: rows ``{"arm", "seed", "patient", value: float}`` (one per arm, seed, patient and
    image), or a mapping of those columns to parallel sequences. Rows of other arms are ignored;
    non-finite values are dropped (counted in ``n_dropped``). Every seed of an arm must score
    every patient, and both arms the same patients. Seeds are independent training runs unless
    ``paired_seeds`` (then both arms need the same seed labels, and seed k of A pairs with seed k
    of B). Method: module docstring.

    Returns ``estimate`` (B - A), ``ci_low``, ``ci_high``, ``level``, ``pvalue``, ``se``, ``df``,
    ``n_patients``, ``n_seeds`` / ``n_images`` / ``n_dropped`` / ``arm_means`` / ``seed_sd``
    (dicts by arm; ``seed_sd`` is the between-seed SD of the arm's run means), ``seed_diff_sd``
    (paired seeds only), ``patient_sd`` (between-patient SD of the paired differences),
    ``var_seeds`` and ``var_patients`` (the parts of the bootstrap variance), ``arms``,
    ``paired_seeds``, ``training_variance_estimated``, ``n_boot``, ``method`` and ``note``.
    """
    if len(arms) != 2 or arms[0] == arms[1]:
        raise ValueError(f"hierarchical_paired_comparison: arms must be two different labels (A, B), got {arms!r}")
    arm_col, seed_col, patient_col, values = _columns(table, value)
    cells: dict[tuple, list[float]] = {}
    n_images = {arm: 0 for arm in arms}
    n_dropped = {arm: 0 for arm in arms}
    for arm, seed, patient, v in zip(arm_col, seed_col, patient_col, values):
        if arm not in n_images:
            continue
        v = float("nan") if v is None else float(v)
        if not math.isfinite(v):
            n_dropped[arm] += 1
            continue
        n_images[arm] += 1
        cell = cells.setdefault((arm, seed, patient), [0.0, 0])
        cell[0] += v
        cell[1] += 1
    seeds = {arm: sorted({s for a, s, _ in cells if a == arm}, key=str) for arm in arms}
    patients = {arm: {p for a, _, p in cells if a == arm} for arm in arms}
    for arm in arms:
        if not seeds[arm]:
            what = "only non-finite values" if n_dropped[arm] else "no rows"
            raise ValueError(f"hierarchical_paired_comparison: arm {arm!r} has no seeds ({what} in the table)")
    only_a, only_b = patients[arms[0]] - patients[arms[1]], patients[arms[1]] - patients[arms[0]]
    if only_a or only_b:
        raise ValueError("hierarchical_paired_comparison: patients must be scored in both arms; only in arm "
                         f"{arms[0]!r}: {_listed(only_a)}, only in arm {arms[1]!r}: {_listed(only_b)}")
    if paired_seeds and set(seeds[arms[0]]) != set(seeds[arms[1]]):
        raise ValueError("hierarchical_paired_comparison: paired seeds need the same seed labels in both arms; only in "
                         f"arm {arms[0]!r}: {_listed(set(seeds[arms[0]]) - set(seeds[arms[1]]))}, only in arm "
                         f"{arms[1]!r}: {_listed(set(seeds[arms[1]]) - set(seeds[arms[0]]))}")
    counts = {arm: len(seeds[arm]) for arm in arms}
    if (counts[arms[0]] == 1) != (counts[arms[1]] == 1):
        raise ValueError(f"hierarchical_paired_comparison: seeds per arm {counts}: give both arms at least 2 seeds "
                         "(or one each for a patient-level comparison)")
    shared = sorted(patients[arms[0]], key=str)
    m_a, m_b = (_cell_matrix(cells, arm, seeds[arm], shared) for arm in arms)
    res = compare_cell_means(m_a, m_b, paired_seeds=paired_seeds, level=level, n_boot=n_boot, rng_seed=rng_seed)
    scalar = {k: float(res[k]) for k in ("estimate", "ci_low", "ci_high", "pvalue", "se", "df", "seed_diff_sd",
                                         "patient_sd", "var_seeds", "var_patients")}
    return {
        **scalar, "level": res["level"], "n_patients": res["n_patients"], "n_seeds": counts,
        "n_images": n_images, "n_dropped": n_dropped, "arms": tuple(arms),
        "arm_means": {arms[0]: float(m_a.mean()), arms[1]: float(m_b.mean())},
        "seed_sd": {arms[0]: float(res["seed_sd_a"]), arms[1]: float(res["seed_sd_b"])},
        "paired_seeds": bool(paired_seeds), "training_variance_estimated": res["training_variance_estimated"],
        "n_boot": res["n_boot"], "method": res["method"],
        "note": "" if res["training_variance_estimated"] else NOTE_ONE_SEED,
    }
