"""Pictures people look at: label colours, overlays and PNG sample grids (Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure  # no pyplot: works with any backend, no global state
from PIL import Image, ImageDraw

from cardigan_tf.files import atomic_path
from cardigan_tf.metrics.clinical import agreement

#: RGB colours for labels 0..3 (background, LV cavity, myocardium, left atrium).
LABEL_COLORS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 90], [70, 120, 240]], np.uint8)


def to_uint8_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) float in [0, 1] -> (H, W, 3) uint8."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img[..., 0]
    img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1)


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colours."""
    m = np.clip(np.asarray(mask).astype(np.int64), 0, len(LABEL_COLORS) - 1)
    return LABEL_COLORS[m]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4, contour_only: bool = False) -> np.ndarray:
    """Gray image with coloured labels blended on top -> (H, W, 3) uint8."""
    rgb = to_uint8_gray(image).astype(np.float32)
    col = colorize_mask(mask).astype(np.float32)
    sel = np.asarray(mask) > 0
    if contour_only:
        m = np.asarray(mask)
        edge = np.zeros_like(sel)
        edge[1:, :] |= m[1:, :] != m[:-1, :]
        edge[:, 1:] |= m[:, 1:] != m[:, :-1]
        sel = sel & edge
        rgb[sel] = col[sel]
    else:
        rgb[sel] = (1 - alpha) * rgb[sel] + alpha * col[sel]
    return rgb.astype(np.uint8)


def make_grid(
    rows: Sequence[Sequence[np.ndarray]],
    col_titles: Sequence[str] | None = None,
    pad: int = 2,
    title_height: int = 14,
) -> np.ndarray:
    """Tile (H, W, 3) uint8 tiles (rows x cols, all the same size) into one RGB array."""
    if not rows or not rows[0]:
        raise ValueError("make_grid: no tiles")
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    top = title_height if col_titles else 0
    grid = np.full((top + len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            t = tile if tile.ndim == 3 and tile.shape[-1] == 3 else to_uint8_gray(tile)
            if t.shape[:2] != (h, w):
                raise ValueError(f"make_grid: tile ({i},{j}) is {t.shape[:2]}, expected {(h, w)}")
            y, x = top + pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = t
    if col_titles:
        img = Image.fromarray(grid)
        draw = ImageDraw.Draw(img)
        for j, title in enumerate(col_titles[:ncol]):
            draw.text((pad + j * (w + pad) + 2, 1), str(title), fill=(0, 0, 0))
        grid = np.asarray(img)
    return grid


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, np.uint8)).save(tmp, format="PNG")
    return path


def save_sample_grid(
    path: str | Path,
    columns: dict[str, Sequence[np.ndarray]],
    max_rows: int = 8,
) -> Path:
    """One row per example, one column per named entry.

    Entries that are 2-D integer arrays are drawn as label colours, float arrays as gray
    images (values in [0, 1]); (H, W, 3) uint8 arrays are used as they are.
    """
    names = list(columns)
    n = min(min(len(columns[k]) for k in names), max_rows)
    rows = []
    for i in range(n):
        row = []
        for k in names:
            a = np.asarray(columns[k][i])
            if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
                row.append(a)
            elif a.dtype.kind in "iu" and (a.ndim == 2 or a.shape[-1] == 1):
                row.append(colorize_mask(a.reshape(a.shape[:2])))
            else:
                row.append(to_uint8_gray(a))
        rows.append(row)
    return save_png(path, make_grid(rows, col_titles=names))


def bland_altman_png(pred, ref, path, title: str = "Bland-Altman", unit: str = "") -> dict:
    """Write a Bland-Altman plot (difference vs mean, bias and 95% limits) as a PNG, atomically.

    NaN pairs are left out. Returns the :func:`cardigan_tf.metrics.clinical.agreement` statistics shown on the plot.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    stats = agreement(p, r)
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter((p + r) / 2, p - r, s=12, alpha=0.7)
    suffix = f" ({unit})" if unit else ""
    if stats["n"]:
        ax.axhline(stats["bias"], color="k", lw=1, label=f"bias {stats['bias']:.2f}")
    if stats["n"] >= 2:
        for sign in (-1, 1):
            lim = stats["bias"] + sign * 1.96 * stats["sd"]
            ax.axhline(lim, color="k", lw=1, ls="--")
        ax.plot([], [], "k--", lw=1, label=f"±1.96 SD ({1.96 * stats['sd']:.2f})")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"mean of prediction and reference{suffix}")
    ax.set_ylabel(f"prediction - reference{suffix}")
    ax.set_title(f"{title} (n={stats['n']}, r={stats['corr']:.3f})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return stats
