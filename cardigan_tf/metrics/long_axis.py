"""The LV long axis of one apical view: mitral base, apex, length and disk diameters (mm).

Used by :mod:`cardigan_tf.metrics.clinical` for Simpson's biplane method of disks. Method (as the
CAMUS organisers compute it; our own code):

1. The LV cavity (label 1, or a boolean mask) is checked and cleaned: stray pieces holding at
   most ``max_debris`` of its pixels are dropped (the largest 8-connected component is kept),
   holes of at most ``max_holes`` of its area are filled. A mask with no sensible LV (empty,
   in several sizeable pieces, with large holes, touching the image border) is refused with
   :class:`LVMissingError`, whose message is the reason. The cavity is resampled with nearest
   neighbour to an isotropic grid at the finer spacing.
2. Its outer contour (marching squares at level 0.5, ``contourpy``) is resampled evenly along
   its length, at ``max(pixel, base_tol_mm / 2)``: this simplification bounds the number of
   points by the perimeter in mm, whatever the raggedness of the pixel outline.
3. Mitral base: the longest chord between two contour points that is within 45 degrees of
   horizontal (image rows = depth, apex at the top, so the base is searched below the mask's
   centroid) and such that all contour points along one of the two arcs between its ends lie
   within ``base_tol_mm`` of the chord's line (a straight, open basal segment). All starts are
   swept together along the contour; each start keeps the interval of chord directions that
   every arc point so far allows (a point at distance r > tol from the start allows the
   directions within asin(tol / r) of its own, modulo 180 degrees) and drops out when the
   interval is empty, so the cost is the number of points times the longest straight run
   (at most n^2 / 2, milliseconds on ragged contours) instead of the n^3 of testing every arc.
4. Long axis: from the base midpoint to the contour point farthest from it (the apex).
5. ``n_disks`` (20) disks at fractions 0, 1/20, ..., 19/20 of the axis from the base; each
   diameter is found by marching along the normal in both directions until leaving the mask.
   The disk at fraction 0 lies on the base line itself, where the marching would stop at once
   on a pixel staircase: it is measured ``min(base_tol_mm, L / 40)`` towards the apex.

Bad masks: :func:`lv_long_axis` raises :class:`LVMissingError` (a ValueError) with the reason;
:func:`lv_mask_problem` returns it ("" for a usable mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import contourpy
import numpy as np
from scipy import ndimage

from cardigan_tf.labels import LV
from cardigan_tf.metrics.segmentation import resize_to_original

__all__ = ["LVMissingError", "LongAxis", "lv_mask_problem", "lv_long_axis", "N_DISKS", "DEFAULT_BASE_TOL_MM",
           "MAX_DEBRIS_FRACTION", "MAX_HOLE_FRACTION", "MAX_CONTOUR_POINTS"]

N_DISKS = 20
#: Straightness tolerance of the basal segment: 8 pixels at CAMUS's finest spacing (0.154 mm).
DEFAULT_BASE_TOL_MM = 1.25
#: LV pixels outside the largest 8-connected piece that are dropped silently (fraction).
MAX_DEBRIS_FRACTION = 0.05
#: Area of holes inside the LV that is filled silently (fraction of the filled cavity).
MAX_HOLE_FRACTION = 0.05
#: A resampled contour longer than this (0.6 mm steps: ~12 m of outline) is refused as ragged.
MAX_CONTOUR_POINTS = 20000


class LVMissingError(ValueError):
    """No measurable LV cavity in a mask (empty, fragmented, holed, cut off, ...); the message
    says why."""


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
        raise LVMissingError(f"{name}: expected a 2-D mask (H, W), got shape {m.shape}")
    return m.astype(bool) if m.dtype == bool else (m == LV)


def _clean_lv(lv: np.ndarray, max_debris: float, max_holes: float) -> tuple[str, np.ndarray | None]:
    """(reason, cleaned cavity): reason "" and the largest piece with its holes filled, or why not."""
    n = int(lv.sum())
    if n < 4:
        return f"the LV cavity (label {LV}) is empty or has < 4 pixels", None
    comp, k = ndimage.label(lv, structure=np.ones((3, 3), bool))
    if k > 1:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        big = int(np.argmax(sizes))
        if 1.0 - sizes[big] / n > max_debris:
            return (f"the LV is in {k} separate pieces (the largest holds {100.0 * sizes[big] / n:.0f} % "
                    f"of its pixels, at least {100.0 * (1 - max_debris):.0f} % expected)"), None
        lv = comp == big
    filled = ndimage.binary_fill_holes(lv)
    area = int(filled.sum())
    holes = area - int(lv.sum())
    if holes > max_holes * area:
        return (f"the LV has holes ({100.0 * holes / area:.1f} % of its area, at most "
                f"{100.0 * max_holes:.0f} % expected)"), None
    if filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any():
        return "the LV touches the image border (cut off by the field of view)", None
    return "", filled


def lv_mask_problem(mask, max_debris: float = MAX_DEBRIS_FRACTION,
                    max_holes: float = MAX_HOLE_FRACTION) -> str:
    """Why a mask has no sensible LV cavity ("" if it has one): empty, several sizeable pieces,
    large holes, touching the image border, or not a 2-D mask. Cheap (one labelling pass)."""
    try:
        lv = _lv_binary(mask, "mask")
    except LVMissingError as exc:
        return str(exc)
    return _clean_lv(lv, max_debris, max_holes)[0]


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

    Every start i is swept forwards at once (offset t = 1 .. M // 2): the chord (i, i + t) is
    valid when each arc point i + 1 .. i + t - 1 lies within ``tol`` of its line, i.e. when the
    chord's direction lies in every arc point's allowed interval (see the module docstring).
    The intervals only shrink, so a start whose interval is empty is dropped for good.
    """
    m = len(pts)
    best, best_ij = 0.0, None
    alive = np.arange(m)
    free = np.ones(m, bool)          # no arc point constrains the direction yet
    lo = np.zeros(m)                 # allowed chord directions [lo, hi] (radians) where not free
    hi = np.zeros(m)

    def unwrap(phi):                 # the copy of direction phi (mod pi) nearest the interval
        centre = np.where(free, phi, 0.5 * (lo + hi))
        return phi + np.pi * np.round((centre - phi) / np.pi)

    for t in range(1, m // 2 + 1):
        if t >= 2:  # arc point k = i + t - 1 narrows the directions allowed from i
            d = pts[(alive + t - 1) % m] - pts[alive]
            r = np.hypot(d[:, 0], d[:, 1])
            con = r > tol
            if con.any():
                phi = unwrap(np.arctan2(d[:, 0], d[:, 1]))
                w = np.arcsin(tol / np.maximum(r, tol))
                lo = np.where(con, np.where(free, phi - w, np.maximum(lo, phi - w)), lo)
                hi = np.where(con, np.where(free, phi + w, np.minimum(hi, phi + w)), hi)
                free &= ~con
                keep = lo <= hi
                if not keep.all():
                    alive, free, lo, hi = alive[keep], free[keep], lo[keep], hi[keep]
                    if alive.size == 0:
                        break
        j = (alive + t) % m
        q = pts[j] - pts[alive]
        length = np.hypot(q[:, 0], q[:, 1])
        ok = ((np.abs(q[:, 0]) <= np.abs(q[:, 1])) & (length > best)
              & (pts[alive, 0] + 0.5 * q[:, 0] >= centroid_row))
        if not ok.any():
            continue
        phi = unwrap(np.arctan2(q[:, 0], q[:, 1]))
        ok &= free | ((phi >= lo) & (phi <= hi))
        if ok.any():
            k = int(np.argmax(np.where(ok, length, -1.0)))
            best, best_ij = float(length[k]), (int(alive[k]), int(j[k]))
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
                 iso_mm: float | None = None, name: str = "mask",
                 max_debris: float = MAX_DEBRIS_FRACTION, max_holes: float = MAX_HOLE_FRACTION,
                 max_contour_points: int = MAX_CONTOUR_POINTS) -> LongAxis:
    """Mitral base, apex, long-axis length and disk diameters (mm) of one LV view.

    Args:
        mask: label mask (H, W) (the LV cavity is label 1) or a boolean LV mask.
        spacing: (row, col) pixel size in mm of ``mask``.
        n_disks: number of disks along the long axis.
        base_tol_mm: how far (mm) the basal contour points may lie from the base chord
            (at least 1.5 isotropic pixels is used).
        iso_mm: isotropic grid spacing; default the finer of the two spacings.
        name: used in error messages (e.g. "2CH/ED").
        max_debris, max_holes: see :func:`lv_mask_problem`.
        max_contour_points: longer resampled contours are refused (ragged beyond measure).

    Raises:
        LVMissingError: no measurable LV (see :func:`lv_mask_problem`), too small (< 3 pixels
            wide), too ragged, or no mitral base found; the message names ``name`` and why.
        ValueError: invalid ``spacing``.
    """
    lv = _lv_binary(mask, name)
    reason, lv = _clean_lv(lv, max_debris, max_holes)
    if reason:
        raise LVMissingError(f"{name}: {reason}")
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
    if len(pts) > max_contour_points:
        raise LVMissingError(f"{name}: the LV outline is too ragged to measure ({len(pts)} contour "
                             f"points after resampling, at most {max_contour_points})")
    rr, _ = np.nonzero(iso_mask)
    centroid_row = (rr.mean() + 0.5) * eff[0]
    ij = _find_base(pts, tol, centroid_row)
    if ij is None:
        raise LVMissingError(f"{name}: no mitral base found (no straight near-horizontal segment "
                             "below the centroid)")
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
