"""Statistics, tables and plots of the augmentation study.

Run rows (one per trained U-Net) are flat dicts::

    {"train_fraction": 0.1, "synthetic_fraction": 0.25, "seed": 0,
     "lv_endo_dice": 0.91, "lv_endo_hd": 5.2, "lv_endo_mad": 1.6, "lv_epi_dice": ..., ...,
     "la_dice": ..., "ef_mae": 6.1}

(:func:`cardigan_tf.metrics.segmentation.flatten_result` produces the per-structure keys).
:func:`summarize_cells` reduces them to one row per (train_fraction, synthetic_fraction) cell
with ``<metric>_mean`` and ``<metric>_sd`` (sample SD over seeds, ddof 1; NaN with one seed)
and ``n_seeds``; :func:`write_table_csv`, :func:`table_markdown` and
:func:`plot_dice_vs_synthetic` present them. :func:`wilcoxon_paired` compares per-image Dice
of two settings (e.g. synthetic fraction 0 against 0.5) with scipy's signed-rank test.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from cardigan_tf.labels import STRUCTURES
from cardigan_tf.files import atomic_path

CELL_KEYS = ("train_fraction", "synthetic_fraction")
SEED_KEY = "seed"
SEG_METRICS = ("dice", "hd", "mad")
#: column order of the tables: per-structure Dice, HD, MAD, then EF MAE
METRIC_ORDER = tuple(f"{s}_{m}" for m in SEG_METRICS for s in STRUCTURES) + ("ef_mae",)
PRETTY = {"lv_endo": "LV endo", "lv_epi": "LV epi", "la": "LA", "dice": "Dice", "hd": "HD (mm)",
          "mad": "MAD (mm)", "ef_mae": "EF MAE (%)", "train_fraction": "train fraction",
          "synthetic_fraction": "synthetic fraction", "n_seeds": "seeds"}


def wilcoxon_paired(a: Sequence[float], b: Sequence[float], min_n: int = 6) -> dict:
    """Paired Wilcoxon signed-rank test of ``a`` against ``b`` (two-sided, scipy).

    Pairs with a NaN are dropped. Returns ``{"statistic", "pvalue", "n", "median_diff",
    "note"}`` where ``median_diff`` is the median of ``a - b`` and ``n`` the number of pairs
    used. When every difference is zero the result is ``statistic 0, pvalue 1`` with a note;
    with fewer than ``min_n`` pairs (no two-sided p below 0.05 is possible under 6) the
    p-value is NaN with a note.
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
                "note": "no finite pairs"}
    if np.all(d == 0):
        return {"statistic": 0.0, "pvalue": 1.0, "n": n, "median_diff": 0.0, "note": "all differences are zero"}
    if n < min_n:
        return {"statistic": float("nan"), "pvalue": float("nan"), "n": n, "median_diff": median,
                "note": f"too few pairs ({n} < {min_n}) for a signed-rank test"}
    res = sps.wilcoxon(a[keep], b[keep])
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue), "n": n, "median_diff": median,
            "note": ""}


def _metric_keys(rows: Iterable[Mapping]) -> list[str]:
    found: set[str] = set()
    for row in rows:
        for k, v in row.items():
            if k in CELL_KEYS or k == SEED_KEY or k.endswith("_missing"):
                continue
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                found.add(k)
    ordered = [k for k in METRIC_ORDER if k in found]
    return ordered + sorted(found - set(ordered))


def summarize_cells(rows: list[dict]) -> list[dict]:
    """Mean and SD over seeds per (train_fraction, synthetic_fraction) cell, sorted by cell.

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
    for row in rows:
        cells.setdefault(tuple(float(row[k]) for k in CELL_KEYS), []).append(row)
    out = []
    for cell in sorted(cells):
        group = cells[cell]
        summary: dict = dict(zip(CELL_KEYS, cell))
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


def table_markdown(rows: list[dict], digits: int = 3, mm_digits: int = 2) -> str:
    """Markdown table; summary rows (``*_mean``/``*_sd``) show ``mean ± sd`` per metric.

    Dice with ``digits`` decimals, distances (mm) and EF errors (%) with ``mm_digits``.
    """
    if not rows:
        return "_no results_\n"
    lead = [k for k in (*CELL_KEYS, "n_seeds", SEED_KEY) if any(k in r for r in rows)]
    means = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    if means:
        metrics = [m for m in METRIC_ORDER if m in means] + [m for m in means if m not in METRIC_ORDER]
    else:
        metrics = _metric_keys(rows)
    header = [_pretty(k) for k in lead] + [_pretty(m) for m in metrics]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not summary:
        raise ValueError("plot_dice_vs_synthetic: empty summary")
    structures = [s for s in STRUCTURES if f"{s}_dice_mean" in summary[0]]
    if not structures:
        raise ValueError("plot_dice_vs_synthetic: summary rows have no '<structure>_dice_mean' column")
    fig, axes = plt.subplots(1, len(structures), figsize=(4.2 * len(structures), 3.6), squeeze=False)
    fractions = sorted({r["train_fraction"] for r in summary})
    for ax, s in zip(axes[0], structures):
        for tf in fractions:
            cell = sorted((r for r in summary if r["train_fraction"] == tf), key=lambda r: r["synthetic_fraction"])
            x = [r["synthetic_fraction"] for r in cell]
            y = [r[f"{s}_dice_mean"] for r in cell]
            err = [0.0 if not np.isfinite(r.get(f"{s}_dice_sd", np.nan)) else r[f"{s}_dice_sd"] for r in cell]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{100 * tf:g}% of training patients")
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
    plt.close(fig)
    return path
