"""Clinical indices: LV volumes by Simpson's biplane method of disks, EF, agreement statistics.

Method (as the CAMUS organisers compute it, see docs REFERENCE facts; our own code):

1. The LV cavity (label 1, or a boolean mask) is cleaned (largest 8-connected component, holes
   filled) and resampled with nearest neighbour to an isotropic grid at the finer spacing.
2. Its outer contour (marching squares at level 0.5, ``contourpy``) is resampled evenly along
   its length.
3. Mitral base: the longest chord between two contour points that is within 45 degrees of
   horizontal (image rows = depth, apex at the top, so the base is searched below the mask's
   centroid) and such that all contour points along one of the two arcs between its ends lie
   within ``base_tol_mm`` of the chord (a straight, open basal segment).
4. Long axis: from the base midpoint to the contour point farthest from it (the apex).
5. ``n_disks`` (20) disks at fractions 0, 1/20, ..., 19/20 of the axis from the base; each
   diameter is found by marching along the normal in both directions until leaving the mask.
   The disk at fraction 0 lies on the base line itself, where the marching would stop at once
   on a pixel staircase: it is measured ``min(base_tol_mm, L / 40)`` towards the apex.
6. ``V = sum(d2CH * d4CH) * pi / 4 * step``, in ml (mm^3 / 1000), with ``step`` = the longest
   of the long axes / n_disks. ``patient_indices`` uses, by default (``step_mode="camus"``),
   one common step for ED and ES (the longest of the four axes), as the CAMUS organisers'
   script does; ``step_mode="per_phase"`` uses the longest of the two views at each phase
   (the textbook method, exact for ellipsoids of different lengths).

Missing LV: :func:`lv_long_axis` and :func:`simpson_biplane` raise :class:`LVMissingError`
(a ValueError); :func:`patient_indices` returns NaN volumes/EF and lists what is missing under
``"missing"`` (or raises with ``on_missing="raise"``). EF is in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cardigan_tf.labels import LV, PHASES, VIEWS
from cardigan_tf.metrics.segmentation import postprocess, resize_to_original

__all__ = ["LVMissingError", "LongAxis", "lv_long_axis", "simpson_biplane", "patient_indices",
           "agreement", "bland_altman_png", "N_DISKS", "DEFAULT_BASE_TOL_MM"]

N_DISKS = 20
#: Straightness tolerance of the basal segment: 8 pixels at CAMUS's finest spacing (0.154 mm).
DEFAULT_BASE_TOL_MM = 1.25


class LVMissingError(ValueError):
    """The LV cavity is empty (or too small to measure) in a mask."""


@dataclass
class LongAxis:
    """Geometry of one LV view, all points as (row, col) in mm from the image's top-left corner."""

    base: tuple[np.ndarray, np.ndarray]
    mid: np.ndarray
    apex: np.ndarray
    length_mm: float
    diameters_mm: np.ndarray
    disk_centres: np.ndarray = field(repr=False)  # (n_disks, 2) mm

    def to_pixels(self, spacing) -> dict:
        """Points in (fractional) pixel coordinates (row, col) of a grid with ``spacing``."""
        s = np.asarray(spacing, dtype=np.float64)
        return {"base": [b / s - 0.5 for b in self.base], "mid": self.mid / s - 0.5,
                "apex": self.apex / s - 0.5, "disk_centres": self.disk_centres / s - 0.5}


def _lv_binary(mask, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask (H, W), got shape {m.shape}")
    return m.astype(bool) if m.dtype == bool else (m == LV)


def _isotropic(mask: np.ndarray, spacing, iso_mm: float | None):
    try:
        sr, sc = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected two numbers (row, col) in mm, got {spacing!r}") from None
    if not (sr > 0 and sc > 0 and math.isfinite(sr) and math.isfinite(sc)):
        raise ValueError(f"spacing: expected positive (row, col) mm, got {spacing!r}")
    iso = min(sr, sc) if iso_mm is None else float(iso_mm)
    h, w = mask.shape
    shape = (max(1, round(h * sr / iso)), max(1, round(w * sc / iso)))
    iso_mask = resize_to_original(mask, shape)
    eff = np.array([h * sr / shape[0], w * sc / shape[1]])  # exact mm per resampled pixel
    return iso_mask, eff


def _outer_contour(mask: np.ndarray) -> np.ndarray:
    """Longest closed marching-squares contour of a boolean mask, (N, 2) pixel (row, col)."""
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=padded, line_type="Separate")
    lines = gen.lines(0.5)
    if not lines:
        raise LVMissingError("no contour found")
    line = max(lines, key=len)
    pts = line[:, ::-1] - 1.0  # (x, y) -> (row, col), undo the padding
    if np.allclose(pts[0], pts[-1]):
        pts = pts[:-1]
    return pts


def _resample_closed(pts: np.ndarray, ds: float) -> np.ndarray:
    closed = np.vstack([pts, pts[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(8, int(math.ceil(s[-1] / ds)))
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)


def _find_base(pts: np.ndarray, tol: float, centroid_row: float):
    """Longest near-horizontal chord whose arc (one side) is straight within ``tol``.

    ``pts``: (M, 2) mm points of a closed contour. Returns (i, j) indices or None.
    """
    m = len(pts)
    best, best_ij = 0.0, None
    half = m // 2 + 1
    for i in range(m):
        idx = (i + np.arange(1, half)) % m
        q = pts[idx] - pts[i]                       # chords from point i, (J, 2)
        length = np.hypot(q[:, 0], q[:, 1])
        cross = np.abs(np.outer(q[:, 0], q[:, 1]) - np.outer(q[:, 1], q[:, 0]))  # [k, j]
        cross[np.tril_indices(len(q))] = 0.0         # keep points k strictly before j
        dev = cross.max(axis=0) / np.maximum(length, 1e-12)
        ok = ((dev <= tol) & (np.abs(q[:, 0]) <= np.abs(q[:, 1]))
              & (pts[i, 0] + 0.5 * q[:, 0] >= centroid_row) & (length > best))
        if ok.any():
            j = int(np.argmax(np.where(ok, length, -1.0)))
            best, best_ij = float(length[j]), (i, int(idx[j]))
    return best_ij


def _march(mask: np.ndarray, eff: np.ndarray, centres: np.ndarray, direction: np.ndarray,
           max_len: float, step: float) -> np.ndarray:
    """Distance (mm) from each centre along ``direction`` to the mask's edge (0 if outside)."""
    t = np.arange(0.0, max_len + step, step)
    pos = centres[:, None, :] + t[None, :, None] * direction[None, None, :]
    idx = np.floor(pos / eff).astype(np.int64)
    inside = ((idx[..., 0] >= 0) & (idx[..., 0] < mask.shape[0])
              & (idx[..., 1] >= 0) & (idx[..., 1] < mask.shape[1]))
    r = np.clip(idx[..., 0], 0, mask.shape[0] - 1)
    c = np.clip(idx[..., 1], 0, mask.shape[1] - 1)
    inside &= mask[r, c]
    first_out = np.argmin(inside, axis=1)            # index of the first False
    first_out[inside.all(axis=1)] = len(t) - 1
    # the edge lies between the last inside and the first outside sample: take the middle
    return np.where(first_out > 0, t[first_out] - 0.5 * step, 0.0)


def lv_long_axis(mask, spacing, n_disks: int = N_DISKS, base_tol_mm: float = DEFAULT_BASE_TOL_MM,
                 iso_mm: float | None = None, name: str = "mask") -> LongAxis:
    """Mitral base, apex, long-axis length and disk diameters (mm) of one LV view.

    Args:
        mask: label mask (H, W) (the LV cavity is label 1) or a boolean LV mask.
        spacing: (row, col) pixel size in mm of ``mask``.
        n_disks: number of disks along the long axis.
        base_tol_mm: how far (mm) the basal contour points may lie from the base chord
            (at least 1.5 isotropic pixels is used).
        iso_mm: isotropic grid spacing; default the finer of the two spacings.
        name: used in error messages (e.g. "2CH/ED").

    Raises:
        LVMissingError: the LV is empty or too small (< 3 pixels wide) to measure.
    """
    lv = _lv_binary(mask, name)
    if lv.sum() < 4:
        raise LVMissingError(f"{name}: the LV cavity (label {LV}) is empty or has < 4 pixels")
    lv = postprocess(lv.astype(np.uint8), labels=(1,)).astype(bool)
    iso_mask, eff = _isotropic(lv, spacing, iso_mm)
    rows = np.flatnonzero(iso_mask.any(axis=1))
    cols = np.flatnonzero(iso_mask.any(axis=0))
    if len(rows) < 3 or len(cols) < 3:
        raise LVMissingError(f"{name}: the LV cavity is too small to measure")
    r0, c0 = rows[0], cols[0]
    crop = iso_mask[r0:rows[-1] + 1, c0:cols[-1] + 1]
    offset = np.array([r0, c0], dtype=np.float64)
    raw = (_outer_contour(crop) + offset + 0.5) * eff                  # contour in mm
    tol = max(float(base_tol_mm), 1.5 * float(eff.max()))
    pts = _resample_closed(raw, ds=max(float(eff.max()), tol / 2.0))
    rr, cc = np.nonzero(iso_mask)
    centroid_row = (rr.mean() + 0.5) * eff[0]
    ij = _find_base(pts, tol, centroid_row)
    if ij is None:
        raise LVMissingError(f"{name}: no mitral base found (no near-horizontal chord below the centroid)")
    b0, b1 = pts[ij[0]], pts[ij[1]]
    mid = 0.5 * (b0 + b1)
    dist = np.linalg.norm(raw - mid, axis=1)
    apex = raw[int(np.argmax(dist))]
    length = float(dist.max())
    if length <= 0:
        raise LVMissingError(f"{name}: degenerate long axis")
    u = (apex - mid) / length
    normal = np.array([-u[1], u[0]])
    fractions = np.arange(n_disks) / n_disks
    along = fractions * length
    along[0] = min(tol, length / (2 * n_disks))
    centres = mid[None, :] + along[:, None] * u[None, :]
    max_len = float(np.hypot(*(np.array(iso_mask.shape) * eff)))
    step = float(eff.min()) / 4.0
    d = (_march(iso_mask, eff, centres, normal, max_len, step)
         + _march(iso_mask, eff, centres, -normal, max_len, step))
    return LongAxis(base=(b0, b1), mid=mid, apex=apex, length_mm=length,
                    diameters_mm=d, disk_centres=centres)


def _volume_ml(d2: np.ndarray, d4: np.ndarray, step: float) -> float:
    return float(np.sum(d2 * d4) * math.pi / 4.0 * step / 1000.0)


def simpson_biplane(mask_2ch, mask_4ch, spacing_2ch, spacing_4ch, step: float | None = None,
                    n_disks: int = N_DISKS, **kwargs) -> float:
    """LV volume (ml) from the 2CH and 4CH masks of one phase by the biplane method of disks.

    ``step`` (mm): disk height; default the longer of the two long axes / ``n_disks``.
    Extra keyword arguments go to :func:`lv_long_axis`. Raises LVMissingError if an LV is empty.
    """
    ax2 = lv_long_axis(mask_2ch, spacing_2ch, n_disks=n_disks, name="2CH", **kwargs)
    ax4 = lv_long_axis(mask_4ch, spacing_4ch, n_disks=n_disks, name="4CH", **kwargs)
    if step is None:
        step = max(ax2.length_mm, ax4.length_mm) / n_disks
    return _volume_ml(ax2.diameters_mm, ax4.diameters_mm, float(step))


def patient_indices(masks: Mapping[tuple[str, str], np.ndarray],
                    spacings: Mapping[tuple[str, str], Sequence[float]],
                    step_mode: str = "camus", on_missing: str = "nan",
                    n_disks: int = N_DISKS, **kwargs) -> dict:
    """EDV, ESV (ml) and EF (%) of one patient from its four LV masks.

    Args:
        masks: ``{("2CH", "ED"): mask, ("2CH", "ES"): ..., ("4CH", "ED"): ..., ("4CH", "ES"): ...}``.
        spacings: the (row, col) mm spacing of each mask, same keys.
        step_mode: "camus" (one step for ED and ES: the longest of the four long axes /
            n_disks, as the organisers' script) or "per_phase" (longest of the two views at
            each phase).
        on_missing: "nan" -> NaN values and the missing (view/phase) names under "missing";
            "raise" -> LVMissingError / ValueError.

    Returns:
        ``{"edv", "esv", "ef", "missing": [...], "lengths": {"2CH/ED": mm, ...}}``.
    """
    if step_mode not in ("camus", "per_phase"):
        raise ValueError(f"step_mode: expected 'camus' or 'per_phase', got {step_mode!r}")
    if on_missing not in ("nan", "raise"):
        raise ValueError(f"on_missing: expected 'nan' or 'raise', got {on_missing!r}")
    axes, missing = {}, []
    for view in VIEWS:
        for phase in PHASES:
            key = f"{view}/{phase}"
            if (view, phase) not in masks or (view, phase) not in spacings:
                if on_missing == "raise":
                    raise ValueError(f"masks/spacings: no entry for ({view!r}, {phase!r})")
                missing.append(key)
                continue
            try:
                axes[(view, phase)] = lv_long_axis(masks[(view, phase)], spacings[(view, phase)],
                                                   n_disks=n_disks, name=key, **kwargs)
            except LVMissingError:
                if on_missing == "raise":
                    raise
                missing.append(key)
    nan = float("nan")
    out = {"edv": nan, "esv": nan, "ef": nan, "missing": missing,
           "lengths": {f"{v}/{p}": a.length_mm for (v, p), a in axes.items()}}
    common = max((a.length_mm for a in axes.values()), default=nan) / n_disks
    for phase, key in (("ED", "edv"), ("ES", "esv")):
        a2, a4 = axes.get(("2CH", phase)), axes.get(("4CH", phase))
        if a2 is None or a4 is None:
            continue
        step = common if step_mode == "camus" else max(a2.length_mm, a4.length_mm) / n_disks
        out[key] = _volume_ml(a2.diameters_mm, a4.diameters_mm, step)
    if math.isfinite(out["edv"]) and math.isfinite(out["esv"]) and out["edv"] > 0:
        out["ef"] = 100.0 * (out["edv"] - out["esv"]) / out["edv"]
    return out


def agreement(pred, ref) -> dict:
    """Agreement of paired values, ignoring pairs where either is NaN.

    Returns ``{"corr": Pearson r, "bias": mean(pred - ref), "sd": SD of the differences
    (ddof 1), "mae": mean |pred - ref|, "n": pairs used}``; statistics that need more pairs
    (or non-constant values, for r) are NaN.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"agreement: pred has {p.size} values, ref has {r.size}")
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    n = int(p.size)
    nan = float("nan")
    diff = p - r
    corr = nan
    if n >= 2 and p.std() > 0 and r.std() > 0:
        corr = float(np.corrcoef(p, r)[0, 1])
    return {"corr": corr, "bias": float(diff.mean()) if n else nan,
            "sd": float(diff.std(ddof=1)) if n >= 2 else nan,
            "mae": float(np.abs(diff).mean()) if n else nan, "n": n}


def bland_altman_png(pred, ref, path, title: str = "Bland-Altman", unit: str = "") -> dict:
    """Write a Bland-Altman plot (difference vs mean, bias and 95% limits) as a PNG, atomically.

    NaN pairs are left out. Returns the :func:`agreement` statistics shown on the plot.
    """
    from matplotlib.figure import Figure  # no pyplot: works with any backend, no global state

    from cardigan_tf.files import atomic_path

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
