"""Statistics, tables and plots of the augmentation study.

Run rows (one per trained U-Net) are flat dicts::

    {"train_fraction": 0.1, "synthetic_fraction": 0.25, "seed": 0,
     "lv_endo_dice": 0.91, "lv_endo_hd": 5.2, "lv_endo_mad": 1.6, "lv_epi_dice": ..., ...,
     "la_dice": ..., "ef_mae": 6.1}

(:func:`cardigan_tf.metrics.segmentation.flatten_result` produces the per-structure keys).
:func:`summarize_cells` reduces them to one row per (train_fraction, synthetic_fraction) cell
with ``<metric>_mean`` and ``<metric>_sd`` (sample SD over seeds, ddof 1; NaN with one seed)
and ``n_seeds``; :func:`write_table_csv`, :func:`table_markdown` and
:func:`plot_dice_vs_synthetic` present them.

Comparisons count patients, not images: :func:`patient_mean_differences` averages each test
patient's paired differences over its views, phases and seeds (images of one patient are not
independent, nor are the seeds' evaluations of the same patient); :func:`paired_patient_test`
then gives the mean difference with a percentile bootstrap confidence interval over patients
(:func:`bootstrap_ci`) and a Wilcoxon signed-rank test of the per-patient differences, its
``method`` naming the null distribution scipy used (:func:`wilcoxon_method`: exact for up to 50
patients without ties or zeros); :func:`holm` corrects a family of p-values.
:func:`wilcoxon_paired` is the plain signed-rank test of two paired samples. These seed-averaged
tests do not see training-run variance; :mod:`cardigan_tf.stats_hierarchical` does.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import stats as sps

from cardigan_tf.files import atomic_path
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS
from cardigan_tf.units import MM

CELL_KEYS = ("train_fraction", "synthetic_fraction")
#: the exposure arm of a cell ("add" / "replace"; "" or absent without synthetic data)
ARM_KEY = "exposure"
SEED_KEY = "seed"
#: column order of the tables: per-structure Dice, HD, MAD, then EF MAE
METRIC_ORDER = tuple(f"{s}_{m}" for m in METRICS for s in STRUCTURES) + ("ef_mae",)
PRETTY = {**STRUCTURE_TITLES, "dice": "Dice", "hd": f"HD ({MM})",
          "mad": f"MAD ({MM})", "ef_mae": "EF MAE (%)", "train_fraction": "train fraction",
          "synthetic_fraction": "synthetic fraction", "n_seeds": "seeds"}


#: fewest pairs for which a two-sided signed-rank test can give p < 0.05 (exact: 2 / 2**6 = 0.031)
MIN_PAIRS_FOR_005 = 6
#: scipy's ``wilcoxon(method="auto")`` rule: the exact null distribution up to this many pairs
#: (zeros included) when there are no ties and no zeros ...
WILCOXON_EXACT_MAX_N = 50
#: ... and, with ties or zeros, exhaustive sign permutations up to this many (2**13 < 9999 resamples)
WILCOXON_PERMUTATION_MAX_N = 13
WILCOXON_METHODS = {"exact": "exact", "permutation": "exact permutation (ties or zeros)",
                    "asymptotic": "normal approximation"}


def wilcoxon_method(d: Sequence[float]) -> str:
    """Which null distribution scipy's ``wilcoxon(method="auto")`` uses for differences ``d``.

    ``"exact"`` (at most 50 pairs, no zero and no tied absolute difference), ``"permutation"``
    (ties or zeros and at most 13 pairs: all 2**n sign flips, an exact conditional test) or
    ``"asymptotic"`` (the normal approximation: more than 50 pairs, or ties or zeros with more
    than 13). ``n`` counts the zero differences, as scipy does; :func:`wilcoxon_test` passes the
    result to scipy explicitly, so the label is the method that ran.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    n = d.size
    nz = np.abs(d[d != 0])
    ties_or_zeros = nz.size < n or np.unique(nz).size < nz.size
    if n > WILCOXON_EXACT_MAX_N:
        return "asymptotic"
    if not ties_or_zeros:
        return "exact"
    return "permutation" if n <= WILCOXON_PERMUTATION_MAX_N else "asymptotic"


def wilcoxon_test(a: Sequence[float], b: Sequence[float] | None = None):
    """scipy's two-sided signed-rank test of ``a - b`` (or of ``a``) with the method of
    :func:`wilcoxon_method` named explicitly; returns ``(scipy result, method key)``."""
    d = np.asarray(a, dtype=np.float64) - (0.0 if b is None else np.asarray(b, dtype=np.float64))
    method = wilcoxon_method(d)
    arg = sps.PermutationMethod() if method == "permutation" else method
    return sps.wilcoxon(d, zero_method="wilcox", method=arg), method


def wilcoxon_paired(a: Sequence[float], b: Sequence[float], min_n: int = MIN_PAIRS_FOR_005) -> dict:
    """Paired Wilcoxon signed-rank test of ``a`` against ``b`` (two-sided, scipy).

    Pairs with a NaN are dropped. Returns ``{"statistic", "pvalue", "n", "median_diff",
    "method", "note"}`` where ``median_diff`` is the median of ``a - b``, ``n`` the number of
    pairs used and ``method`` the null distribution scipy used (:data:`WILCOXON_METHODS`; empty
    when no test ran). When every difference is zero the result is ``statistic 0, pvalue 1``
    with a note; with fewer than ``min_n`` pairs (no two-sided p below 0.05 is possible under 6)
    the p-value is NaN with a note.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"wilcoxon_paired: paired samples need the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    median = float(np.median(d)) if n else float("nan")
    if n == 0:
        return {"statistic": float("nan"), "pvalue": float("nan"), "n": 0, "median_diff": median,
                "method": "", "note": "no finite pairs"}
    if np.all(d == 0):
        return {"statistic": 0.0, "pvalue": 1.0, "n": n, "median_diff": 0.0, "method": "",
                "note": "all differences are zero"}
    if n < min_n:
        return {"statistic": float("nan"), "pvalue": float("nan"), "n": n, "median_diff": median,
                "method": "", "note": f"too few pairs ({n} < {min_n}) for a signed-rank test"}
    res, method = wilcoxon_test(a[keep], b[keep])
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n": n, "median_diff": median,
            "method": WILCOXON_METHODS[method], "note": ""}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order.

    NaN entries (no test) are not part of the family and stay NaN. With the m finite p-values
    sorted ascending, ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) * p(j))`` (1-based ranks);
    a hypothesis is rejected at level alpha when its adjusted p-value is <= alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[finite].tolist()}")
    m = finite.size
    if m:
        order = finite[np.argsort(p[finite], kind="stable")]
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(scaled)
    return [float(x) for x in out]


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (NaN dropped).

    Resamples the values with replacement ``n_boot`` times (seeded, so reproducible). NaN
    bounds with no finite value; a single value gives the degenerate interval (v, v).
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    chunk = max(1, 2_000_000 // x.size)  # bound the index array's memory
    for start in range(0, int(n_boot), chunk):
        k = min(chunk, int(n_boot) - start)
        means[start:start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def patient_mean_differences(records: Iterable[tuple[str, Hashable, float]]) -> dict[str, Any]:
    """Reduce paired per-image differences to one difference per patient.

    ``records``: ``(patient, seed, difference)`` per image pair (the same image scored by two
    settings trained with the same seed). Non-finite differences (NaN; inf from an empty
    contour) are dropped. Returns
    ``{"patients": {patient: mean over its views, phases and seeds}, "seeds": {seed: mean over
    patients of each patient's mean in that seed}, "n_images": finite image pairs}``.
    """
    by_patient: dict[str, list[float]] = {}
    by_seed: dict[Hashable, dict[str, list[float]]] = {}
    n = 0
    for patient, seed, diff in records:
        diff = float(diff)
        if not math.isfinite(diff):
            continue
        n += 1
        by_patient.setdefault(str(patient), []).append(diff)
        by_seed.setdefault(seed, {}).setdefault(str(patient), []).append(diff)
    patients = {p: float(np.mean(v)) for p, v in sorted(by_patient.items())}
    seeds = {s: float(np.mean([np.mean(v) for v in per.values()]))
             for s, per in sorted(by_seed.items(), key=lambda kv: str(kv[0]))}
    return {"patients": patients, "seeds": seeds, "n_images": n}


def paired_patient_test(diffs: Sequence[float], level: float = 0.95, n_boot: int = 10000, seed: int = 0,
                        min_n: int = MIN_PAIRS_FOR_005) -> dict[str, Any]:
    """Effect and signed-rank test of per-patient paired differences (one value per patient).

    Returns ``{"n", "mean_diff", "ci_low", "ci_high", "median_diff", "statistic", "pvalue",
    "method", "note"}``: the mean difference with its ``level`` percentile bootstrap interval
    over patients, and scipy's two-sided Wilcoxon signed-rank test (zeros dropped), whose null
    distribution :func:`wilcoxon_method` chooses and ``method`` names (:data:`WILCOXON_METHODS`):
    exact for n <= 50 without ties or zeros, exhaustive sign permutations for n <= 13 with ties
    or zeros, the normal approximation otherwise (n counts the zeros). With fewer than ``min_n``
    patients no two-sided test can reach 0.05: the p-value is NaN and the note says so (the
    interval is still given).
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean_diff": float(d.mean()) if n else float("nan"),
                           "median_diff": float(np.median(d)) if n else float("nan")}
    out["ci_low"], out["ci_high"] = bootstrap_ci(d, level, n_boot, seed)
    out.update(statistic=float("nan"), pvalue=float("nan"), method="", note="")
    if n == 0:
        out["note"] = "no patient with a finite paired difference"
    elif n < min_n:
        out["note"] = (f"{n} patients: with fewer than {min_n} no two-sided signed-rank test can reach "
                       "p < 0.05; interval only")
    elif np.all(d == 0):
        out.update(statistic=0.0, pvalue=1.0, note="all differences are zero")
    else:
        res, method = wilcoxon_test(d)
        out.update(statistic=float(res.statistic), pvalue=float(res.pvalue), method=WILCOXON_METHODS[method])
    return out


def _metric_keys(rows: Iterable[Mapping]) -> list[str]:
    found: set[str] = set()
    for row in rows:
        for k, v in row.items():
            if k in CELL_KEYS or k in (SEED_KEY, ARM_KEY) or k.endswith("_missing"):
                continue
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                found.add(k)
    ordered = [k for k in METRIC_ORDER if k in found]
    return ordered + sorted(found - set(ordered))


def summarize_cells(rows: list[dict]) -> list[dict]:
    """Mean and SD over seeds per (train_fraction, synthetic_fraction, exposure) cell, sorted by cell.

    Every numeric key other than the cell keys, ``seed`` and ``*_missing`` is a metric;
    NaN values are ignored (``<metric>_n`` counts the finite ones when some are missing).
    """
    if not rows:
        return []
    for i, row in enumerate(rows):
        missing = [k for k in CELL_KEYS if k not in row]
        if missing:
            raise ValueError(f"summarize_cells: row {i} lacks {missing}; expected keys {list(CELL_KEYS)}")
    metrics = _metric_keys(rows)
    cells: dict[tuple, list[Mapping]] = {}
    with_arms = any(row.get(ARM_KEY) for row in rows)
    for row in rows:
        arm = (str(row.get(ARM_KEY) or ""),) if with_arms else ()
        cells.setdefault(tuple(float(row[k]) for k in CELL_KEYS) + arm, []).append(row)
    out = []
    for cell in sorted(cells):
        group = cells[cell]
        summary: dict = dict(zip((*CELL_KEYS, ARM_KEY), cell))
        summary["n_seeds"] = len({r.get(SEED_KEY, i) for i, r in enumerate(group)})
        for m in metrics:
            vals = np.array([float(r[m]) for r in group if m in r and r[m] is not None], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            summary[f"{m}_mean"] = float(finite.mean()) if finite.size else float("nan")
            summary[f"{m}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
            if finite.size != len(group):
                summary[f"{m}_n"] = int(finite.size)
        out.append(summary)
    return out


def write_table_csv(rows: list[dict], path: str | Path) -> Path:
    """Write rows (any dicts; columns = union of keys in first-seen order) as CSV, atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return path


def _csv_value(v):
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(float(v))
    return v


def _pretty(metric: str) -> str:
    if metric in PRETTY:
        return PRETTY[metric]
    for s in STRUCTURES:
        if metric.startswith(s + "_") and metric[len(s) + 1 :] in PRETTY:
            return f"{PRETTY[s]} {PRETTY[metric[len(s) + 1:]]}"
    return metric


def _fmt(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def table_markdown(rows: list[dict], digits: int = 3, mm_digits: int = 2, distance_unit: str = MM) -> str:
    """Markdown table; summary rows (``*_mean``/``*_sd``) show ``mean ± sd`` per metric.

    Dice with ``digits`` decimals, distances (in ``distance_unit``, "px" when the spacing is
    unknown) and EF errors (%) with ``mm_digits``.
    """
    if not rows:
        return "_no results_\n"
    lead = [k for k in (*CELL_KEYS, ARM_KEY, "n_seeds", SEED_KEY) if any(k in r for r in rows)]
    means = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    if means:
        metrics = [m for m in METRIC_ORDER if m in means] + [m for m in means if m not in METRIC_ORDER]
    else:
        metrics = _metric_keys(rows)
    header = [_pretty(k) for k in lead] + [_pretty(m).replace(f"({MM})", f"({distance_unit})") for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [_fmt(row.get(k), 2) for k in lead]
        for m in metrics:
            nd = digits if m.endswith("dice") else mm_digits
            if means:
                mean, sd = row.get(f"{m}_mean"), row.get(f"{m}_sd")
                text = _fmt(mean, nd)
                if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
                    text += f" ± {sd:.{nd}f}"
                cells.append(text)
            else:
                cells.append(_fmt(row.get(m), nd))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_dice_vs_synthetic(summary: list[dict], path: str | Path, title: str | None = None) -> Path:
    """PNG: Dice (LV endo, LV epi, LA) against synthetic fraction, one line per training
    fraction, error bars = SD over seeds. Written atomically."""
    if not summary:
        raise ValueError("plot_dice_vs_synthetic: empty summary")
    structures = [s for s in STRUCTURES if f"{s}_dice_mean" in summary[0]]
    if not structures:
        raise ValueError("plot_dice_vs_synthetic: summary rows have no '<structure>_dice_mean' column")
    fig = Figure(figsize=(4.2 * len(structures), 3.6))
    axes = fig.subplots(1, len(structures), squeeze=False)
    fractions = sorted({r["train_fraction"] for r in summary})
    arms = sorted({r.get(ARM_KEY) or "" for r in summary} - {""}) or [""]
    for ax, s in zip(axes[0], structures):
        for tf in fractions:
            for arm in arms:  # each arm's line starts at the shared synthetic-fraction-0 cell
                cell = sorted((r for r in summary if r["train_fraction"] == tf and (r.get(ARM_KEY) or "") in ("", arm)),
                              key=lambda r: r["synthetic_fraction"])
                x = [r["synthetic_fraction"] for r in cell]
                y = [r[f"{s}_dice_mean"] for r in cell]
                err = [0.0 if not np.isfinite(r.get(f"{s}_dice_sd", np.nan)) else r[f"{s}_dice_sd"] for r in cell]
                label = f"{100 * tf:g}% of training patients" + (f", {arm}" if arm else "")
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="-" if arm != "replace" else "--",
                            label=label)
        ax.set_title(f"{PRETTY[s]} Dice")
        ax.set_xlabel("synthetic fraction")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (mean ± SD over seeds)")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
