"""Segmentation metrics as the CAMUS challenge defines them (numpy / scipy only, no TensorFlow).

Definitions (Leclerc et al., TMI 2019; same as ``medpy.metric.binary`` with connectivity 1):

- Dice: ``2 |A & B| / (|A| + |B|)``. 0.0 when exactly one mask is empty, NaN when both are.
- Contour: the mask XOR its binary erosion by the 4-connected cross (pixels on the image edge
  count as contour: the erosion treats outside the image as background).
- Distances in mm: the Euclidean distance transform of the complement of one contour, sampled
  with the pixel spacing ``(row, col)``, read at the points of the other contour (directed
  distances). Hausdorff distance (HD) = the larger of the two directed maxima; mean absolute
  distance (MAD) = the mean of the two directed means (note: medpy 0.5's ``assd`` averages the
  pooled distances instead; ``(asd(a, b) + asd(b, a)) / 2`` is our MAD).
- HD and MAD are NaN, and ``missing`` is True, when a structure is empty in either mask.

Metrics in mm are computed at the original resolution: resize the predicted mask back with
:func:`resize_to_original` (nearest neighbour, pixel-centre mapping, identical to PIL's
``Image.NEAREST``) and use the original spacing (:func:`evaluate_at_original`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from cardigan_tf.labels import LA, LV, MYO, STRUCTURES
from cardigan_tf.resize import resize_mask_np

__all__ = [
    "dice", "contour", "directed_distances", "surface_distances", "hausdorff",
    "mean_abs_distance", "evaluate_masks", "resize_to_original", "evaluate_at_original",
    "postprocess", "flatten_result", "summarize", "METRICS",
]

#: Metric names reported per structure by :func:`evaluate_masks`.
METRICS = ("dice", "hd", "mad")

_CROSS = ndimage.generate_binary_structure(2, 1)


def _as_bool_2d(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask (H, W), got shape {arr.shape}")
    return arr.astype(bool)


def check_spacing(spacing) -> tuple[float, float]:
    """(row, col) mm as floats, or ValueError naming what was expected."""
    try:
        sr, sc = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing: expected two numbers (row, col) in mm, got {spacing!r}") from None
    if not (sr > 0 and sc > 0 and math.isfinite(sr) and math.isfinite(sc)):
        raise ValueError(f"spacing: expected positive finite (row, col) mm, got {spacing!r}")
    return sr, sc


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"masks: shapes differ, prediction {a.shape} vs reference {b.shape}; "
                         "resize the prediction first (resize_to_original)")


def dice(a, b) -> float:
    """Dice coefficient of two binary masks: 0.0 if exactly one is empty, NaN if both are."""
    a = _as_bool_2d(a, "a")
    b = _as_bool_2d(b, "b")
    _check_same_shape(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def contour(mask) -> np.ndarray:
    """Boolean contour: ``mask XOR erosion(mask, 4-connected cross)`` (image edge = background)."""
    m = _as_bool_2d(mask, "mask")
    return m ^ ndimage.binary_erosion(m, structure=_CROSS, border_value=0)


def directed_distances(from_contour: np.ndarray, to_contour: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from every point of ``from_contour`` to the nearest point of ``to_contour``.

    Both are boolean contour images of the same shape, each with at least one point. The
    distance transform is computed on the bounding box of both contours only (exact: every
    feature point lies inside it).
    """
    sr, sc = check_spacing(spacing)
    both = from_contour | to_contour
    rows = np.flatnonzero(both.any(axis=1))
    cols = np.flatnonzero(both.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    dt = ndimage.distance_transform_edt(~to_contour[window], sampling=(sr, sc))
    return dt[from_contour[window]]


def surface_distances(a, b, spacing) -> tuple[float, float]:
    """``(hd, mad)`` in mm between the contours of two binary masks; NaNs if either is empty."""
    a = _as_bool_2d(a, "a")
    b = _as_bool_2d(b, "b")
    _check_same_shape(a, b)
    check_spacing(spacing)
    if not a.any() or not b.any():
        return float("nan"), float("nan")
    ca, cb = contour(a), contour(b)
    d_ab = directed_distances(ca, cb, spacing)
    d_ba = directed_distances(cb, ca, spacing)
    hd = max(float(d_ab.max()), float(d_ba.max()))
    mad = 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))
    return hd, mad


def hausdorff(a, b, spacing) -> float:
    """Hausdorff distance in mm between the contours of ``a`` and ``b`` (NaN if one is empty)."""
    return surface_distances(a, b, spacing)[0]


def mean_abs_distance(a, b, spacing) -> float:
    """Mean absolute (symmetric) contour distance in mm (NaN if one is empty)."""
    return surface_distances(a, b, spacing)[1]


def evaluate_masks(pred, gt, spacing, structures: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Dice, HD (mm), MAD (mm) and a ``missing`` flag per structure of two label masks.

    Args:
        pred, gt: label masks (H, W) with values in {0, 1, 2, 3}, same shape.
        spacing: (row, col) pixel size in mm.
        structures: name -> label ids; defaults to ``cardigan_tf.labels.STRUCTURES``
            (lv_endo, lv_epi, la).

    Returns:
        ``{"lv_endo": {"dice", "hd", "mad", "missing"}, "lv_epi": ..., "la": ...}``;
        ``missing`` is True when the structure is empty in either mask (then HD and MAD are
        NaN; Dice is 0.0, or NaN when both are empty).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim == 3 and pred.shape[-1] == 1:
        pred = pred[..., 0]
    if gt.ndim == 3 and gt.shape[-1] == 1:
        gt = gt[..., 0]
    _as_bool_2d(pred, "pred")
    _as_bool_2d(gt, "gt")
    _check_same_shape(pred, gt)
    check_spacing(spacing)
    structures = STRUCTURES if structures is None else structures
    out = {}
    for name, labels in structures.items():
        p = np.isin(pred, tuple(labels))
        g = np.isin(gt, tuple(labels))
        hd, mad = surface_distances(p, g, spacing)
        out[name] = {"dice": dice(p, g), "hd": hd, "mad": mad,
                     "missing": bool(not p.any() or not g.any())}
    return out


def resize_to_original(mask, original_shape) -> np.ndarray:
    """Nearest-neighbour resize of a label mask to ``original_shape`` (H, W).

    Pixel-centre mapping: output pixel ``i`` takes input pixel ``floor((i + 0.5) * in / out)``
    (identical to PIL ``Image.NEAREST``; ``tf.image.resize(method="nearest")`` uses the same
    rule but in float32, so it can pick the other neighbour where ``(i + 0.5) * in / out`` is an
    exact integer). Values and dtype are preserved.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask: expected a 2-D mask (H, W), got shape {m.shape}")
    try:
        out_h, out_w = (int(s) for s in tuple(original_shape)[:2])
    except (TypeError, ValueError):
        raise ValueError(f"original_shape: expected (H, W), got {original_shape!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"original_shape: expected positive (H, W), got {original_shape!r}")
    return resize_mask_np(m, (out_h, out_w))


def evaluate_at_original(pred_small, gt_original, spacing, structures=None) -> dict:
    """Resize the prediction to the reference's shape (nearest) then :func:`evaluate_masks`."""
    gt = np.asarray(gt_original)
    if gt.ndim == 3 and gt.shape[-1] == 1:
        gt = gt[..., 0]
    pred = resize_to_original(pred_small, gt.shape)
    return evaluate_masks(pred, gt, spacing, structures)


def postprocess(mask, largest_component: bool = True, fill_holes: bool = True,
                labels: Iterable[int] = (LV, MYO, LA), connectivity: int = 2) -> np.ndarray:
    """Clean a predicted label mask, label by label.

    - ``largest_component``: keep only the largest connected component of each label
      (``connectivity`` 2 = 8-connected, 1 = 4-connected); the other pieces become background.
    - ``fill_holes``: background pixels enclosed by a label (scipy ``binary_fill_holes``) get
      that label. Only background pixels are changed, so labels never overlap and no pixel of
      another structure is overwritten; labels are filled in the order given.

    Returns a new array of the same dtype and shape.
    """
    m = np.asarray(mask)
    squeeze = m.ndim == 3 and m.shape[-1] == 1
    work = (m[..., 0] if squeeze else m).copy()
    if work.ndim != 2:
        raise ValueError(f"mask: expected a 2-D label mask (H, W), got shape {m.shape}")
    labels = tuple(labels)
    if largest_component:
        struct = ndimage.generate_binary_structure(2, connectivity)
        for lab in labels:
            comp, n = ndimage.label(work == lab, structure=struct)
            if n > 1:
                sizes = np.bincount(comp.ravel())
                sizes[0] = 0
                work[(comp > 0) & (comp != int(np.argmax(sizes)))] = 0
    if fill_holes:
        for lab in labels:
            region = work == lab
            if region.any():
                filled = ndimage.binary_fill_holes(region)
                work[filled & (work == 0)] = lab
    return work[..., None] if squeeze else work


def flatten_result(result: Mapping[str, Mapping[str, float]], **meta) -> dict:
    """``evaluate_masks`` output -> flat row ``{"lv_endo_dice": ..., "lv_endo_missing": ...}``.

    Extra keyword arguments (patient, view, phase, quality, ...) are copied into the row.
    """
    row = dict(meta)
    for name, values in result.items():
        for key, value in values.items():
            row[f"{name}_{key}"] = value
    return row


def summarize(rows: Iterable[Mapping], group_by: Sequence[str] = ("phase",),
              structures: Iterable[str] | None = None,
              metrics: Iterable[str] = METRICS) -> dict:
    """Mean and SD per group, structure and metric, ignoring NaN and counting them.

    Args:
        rows: flat rows (see :func:`flatten_result`) or nested rows
            ``{"phase": "ED", "lv_endo": {"dice": ...}, ...}``.
        group_by: row keys that define the groups (e.g. ``("phase",)`` or ``("view", "phase")``);
            the group name joins their values with "/"; every row also counts in group "all".

    Returns:
        ``{group: {structure: {metric: {"mean", "sd", "n", "nan"}}}}`` where ``n`` counts the
        finite values used, ``nan`` the NaN values left out, and ``sd`` is the sample SD
        (ddof 1; 0.0 for a single value; NaN when no value is finite).
    """
    structures = tuple(STRUCTURES) if structures is None else tuple(structures)
    metrics = tuple(metrics)
    values: dict[str, dict[tuple[str, str], list[float]]] = {}
    for row in rows:
        groups = ["all"]
        if group_by:
            groups.append("/".join(str(row.get(k, "")) for k in group_by))
        for s in structures:
            nested = row.get(s) if isinstance(row.get(s), Mapping) else None
            for metric in metrics:
                v = nested.get(metric) if nested is not None else row.get(f"{s}_{metric}")
                if v is None:
                    continue
                for g in groups:
                    values.setdefault(g, {}).setdefault((s, metric), []).append(float(v))
    out: dict = {}
    for g, per in values.items():
        for (s, metric), vals in per.items():
            arr = np.asarray(vals, dtype=np.float64)
            finite = arr[np.isfinite(arr)]
            n = int(finite.size)
            mean = float(finite.mean()) if n else float("nan")
            sd = float(finite.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
            out.setdefault(g, {}).setdefault(s, {})[metric] = {
                "mean": mean, "sd": sd, "n": n, "nan": int(arr.size - n)}
    return out
