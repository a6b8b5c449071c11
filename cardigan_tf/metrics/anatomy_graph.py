"""The anatomical checks of :mod:`cardigan_tf.metrics.anatomy` as a graph on a batch of label maps.

``keras.ops`` and one TensorFlow op (``tensor_scatter_nd_add``), all of which trace into a
``tf.function`` (SavedModel) and convert to ONNX at opset 17 (the while loop becomes a
``Loop``; tested with tf2onnx and ONNX Runtime); the serving signatures can call
:func:`qc_flags_graph` on their predicted label maps. Same flags, same bit order
(:data:`~cardigan_tf.metrics.anatomy.QC_FLAGS`), same thresholds
(:class:`~cardigan_tf.metrics.anatomy.QCRules`) as the NumPy reference, which the tests hold it
equal to.

How. Pieces by label propagation in a while loop: every pixel of a region starts with its own
id (its flat index + 1) and, at each step, (1) takes the largest id in its 3x3 neighbourhood
within the region (masked max-pooling); (2) each pixel that saw a larger id than the one it
holds passes it to the pixel its id names (a scatter from those pixels only; an id always names
a pixel of the same piece, so this only joins a piece with itself); (3) takes the id held by
the pixel its id names (a gather: pointer jumping). Steps 2 and 3 carry an id across a whole
piece in a few steps, instead of one pixel per step (7 steps on a batch of hearts at 64 x 64, 9
at 256 x 256, 11 on thresholded noise). At the fixed point every piece holds its largest id,
and the pieces are counted as the pixels that hold their own. Holes, without a flood fill: the
Euler number of a region (pieces minus holes, for 8-connected pieces and 4-connected holes) is
a sum over its 2x2 windows, so holes = pieces - Euler number. The other checks are 3x3
neighbourhood maxima and moments.
"""

from __future__ import annotations

import math

import tensorflow as tf
from keras import ops

from cardigan_tf.labels import LA, LV, MYO
from cardigan_tf.metrics.anatomy import QC_FLAGS, QCRules

__all__ = ["anatomy_flags_graph", "qc_bitmask_graph", "qc_flags_graph"]


def _pad(x, value):
    """[B, H, W, K] padded by one pixel of ``value`` on each side of H and W."""
    return ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=value)


def _neighbour_max(x, connectivity: int, outside=0):
    """Max of each pixel's neighbourhood (itself included; ``outside`` beyond the image) of a
    numeric [B, H, W, K]."""
    p = _pad(x, outside)
    rows = ops.maximum(ops.maximum(p[:, :-2], p[:, 2:]), p[:, 1:-1])  # [B, H, W+2, K]
    if connectivity == 8:
        return ops.maximum(ops.maximum(rows[:, :, :-2], rows[:, :, 2:]), rows[:, :, 1:-1])
    centre = p[:, 1:-1]
    return ops.maximum(ops.maximum(centre[:, :, :-2], centre[:, :, 2:]), rows[:, :, 1:-1])


def _neighbour_any(x, connectivity: int, outside: bool = False):
    """Boolean dilation of a boolean [B, H, W, K], ``outside`` beyond the image (padded as
    float32: ONNX pads no booleans)."""
    return _neighbour_max(ops.cast(x, "float32"), connectivity, float(outside)) > 0.5


def _named(flat_lab, pixels, flat_base, k):
    """Flat indices of the pixels named by the ids that ``pixels`` (flat indices) hold: the flat
    index of (image b, pixel with id i, channel c) is ``base[b, c] + (i - 1) * K``."""
    return ops.take(flat_base, pixels) + (ops.take(flat_lab, pixels) - 1) * k


def _piece_ids(region):
    """(int32 [B, H, W, K] ids, int32 [1, H, W, 1] own ids, int32 [B * H * W * K] ``base`` of
    :func:`_named`): each pixel of ``region`` (bool [B, H, W, K]) holds the largest flat index
    + 1 of its piece (within its image); 0 outside the region."""
    shape = ops.shape(region)
    h, w, k = shape[1], shape[2], shape[3]
    n = shape[0] * h * w * k
    ids = ops.reshape(ops.arange(1, h * w + 1, dtype="int32"), (1, h, w, 1))
    inside = ops.cast(region, "int32")
    flat_inside = ops.reshape(inside, (-1,))
    base = ops.reshape(ops.arange(shape[0], dtype="int32") * (h * w * k), (-1, 1, 1, 1)) \
        + ops.reshape(ops.arange(k, dtype="int32"), (1, 1, 1, -1))
    flat_base = ops.reshape(ops.broadcast_to(base, shape), (-1,))
    everywhere = ops.arange(n, dtype="int32")

    def hook(lab, grown):
        """The pixels that saw a larger id than they hold pass it to the pixel their id names."""
        flat_lab, flat_grown = ops.reshape(lab, (-1,)), ops.reshape(grown, (-1,))
        tellers = ops.where(flat_grown > flat_lab)[0]  # inside the region, holding ids >= 1
        told = ops.scatter_update(ops.zeros((n,), "int32"), _named(flat_lab, tellers, flat_base, k)[:, None],
                                  ops.take(flat_grown, tellers))
        return ops.maximum(grown, ops.reshape(told, shape))

    def jump(lab):
        """Each pixel takes the id held by the pixel its id names (outside: itself, then 0)."""
        flat_lab = ops.reshape(lab, (-1,))
        named = ops.where(flat_inside > 0, _named(flat_lab, everywhere, flat_base, k), everywhere)
        return ops.reshape(ops.take(flat_lab, named), shape) * inside

    def body(lab, _):
        grown = jump(hook(lab, _neighbour_max(lab, 8) * inside))
        return grown, ops.any(ops.not_equal(grown, lab))

    lab, _ = ops.while_loop(lambda lab, changed: changed, body, (ids * inside, ops.convert_to_tensor(True)),
                            maximum_iterations=h * w)
    return lab, ids, flat_base


def _pieces(region):
    """(int32 [B, K] number of 8-connected pieces, int32 [B, K] pixels of the largest piece, bool
    [B, H, W, K] the pixels of the largest piece (of each largest piece when several tie)) of
    each channel of ``region`` (bool [B, H, W, K]). The sizes are a scatter-add of ones at each
    pixel's piece id (TensorFlow's ``tensor_scatter_nd_add``, ONNX ``ScatterND`` with the add
    reduction: keras' scatter overwrites repeated indices in ONNX)."""
    lab, ids, flat_base = _piece_ids(region)
    count = ops.sum(ops.cast(ops.logical_and(region, ops.equal(lab, ids)), "int32"), axis=(1, 2))
    flat_lab = ops.reshape(lab, (-1,))
    pixels = ops.where(flat_lab > 0)[0]
    named = _named(flat_lab, pixels, flat_base, ops.shape(lab)[3])
    sizes = tf.tensor_scatter_nd_add(ops.zeros_like(flat_lab), named[:, None], ops.ones_like(named))
    largest = ops.max(ops.reshape(sizes, ops.shape(lab)), axis=(1, 2))
    inside = ops.reshape(ops.cast(region, "int32"), (-1,))
    everywhere = ops.arange(ops.shape(flat_lab)[0], dtype="int32")
    own = ops.where(inside > 0, _named(flat_lab, everywhere, flat_base, ops.shape(lab)[3]), everywhere)
    piece_size = ops.reshape(ops.take(sizes, own) * inside, ops.shape(lab))  # each pixel: its piece's size
    in_largest = ops.logical_and(region, ops.equal(piece_size, largest[:, None, None, :]))
    return count, largest, in_largest


def _euler_number(region):
    """int32 [B, K]: the Euler number (pieces minus holes) of each channel of ``region``, for
    8-connected pieces and 4-connected holes, from its 2x2 windows on the grid padded with one
    pixel of outside (Gray's bit quads): (Q1 - Q3 - 2 QD) / 4, where Q1 and Q3 count the
    windows holding one and three pixels of the region and QD those holding a diagonal pair."""
    p = _pad(ops.cast(region, "int32"), 0)
    tl, tr, bl, br = p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]
    n = tl + tr + bl + br

    def count(window):
        return ops.sum(ops.cast(window, "int32"), axis=(1, 2))

    q1, q3 = count(ops.equal(n, 1)), count(ops.equal(n, 3))
    qd = count(ops.logical_and(ops.equal(n, 2), ops.equal(tl, br)))
    return (q1 - q3 - 2 * qd) // 4


def _long_axis_shape(lv, spacing):
    """(length / width ratio, lean from the row axis in degrees) of each LV cavity [B]; the
    moments of ``lv`` (float32 [B, H, W], 0/1) with pixels of ``spacing`` [B, 2] mm."""
    shape = ops.shape(lv)
    sy, sx = spacing[:, 0:1], spacing[:, 1:2]
    r = ops.reshape(ops.arange(shape[1], dtype="float32"), (1, -1, 1)) * sy[:, :, None]
    c = ops.reshape(ops.arange(shape[2], dtype="float32"), (1, 1, -1)) * sx[:, :, None]
    n = ops.maximum(ops.sum(lv, axis=(1, 2)), 1.0)
    mr = ops.sum(lv * r, axis=(1, 2)) / n
    mc = ops.sum(lv * c, axis=(1, 2)) / n
    dr = r - mr[:, None, None]
    dc = c - mc[:, None, None]
    a = ops.sum(lv * dr * dr, axis=(1, 2)) / n + sy[:, 0] ** 2 / 12.0
    cc = ops.sum(lv * dc * dc, axis=(1, 2)) / n + sx[:, 0] ** 2 / 12.0
    b = ops.sum(lv * dr * dc, axis=(1, 2)) / n
    half = ops.sqrt(((a - cc) / 2.0) ** 2 + b * b)
    major, minor = (a + cc) / 2.0 + half, (a + cc) / 2.0 - half
    ratio = ops.sqrt(major / ops.maximum(minor, 1e-12))
    lean = ops.abs(0.5 * ops.arctan2(2.0 * b, a - cc)) * (180.0 / math.pi)
    return ratio, lean


def anatomy_flags_graph(labels, spacing=None, rules: QCRules | None = None):
    """bool [B, F] of label maps ``labels`` (integer [B, H, W], values 0..3), F =
    ``len(QC_FLAGS)`` in :data:`~cardigan_tf.metrics.anatomy.QC_FLAGS` order (True = failed).

    ``spacing``: float [B, 2] (row, col) mm per image, or None for square pixels; it only
    changes the long-axis check.
    """
    rules = rules or QCRules()
    labels = ops.cast(labels, "int32")
    batch = ops.shape(labels)[0]
    if spacing is None:
        spacing = ops.ones((batch, 2), dtype="float32")
    spacing = ops.cast(spacing, "float32")
    lv, myo, la = (ops.equal(labels, v) for v in (LV, MYO, LA))
    epi = ops.logical_or(lv, myo)
    regions = ops.stack([lv, myo, la, epi], axis=-1)                  # [B, H, W, 4]
    present = ops.any(regions[..., :3], axis=(1, 2))                  # [B, 3]
    empty = ops.logical_not(present)
    pieces, largest, in_largest = _pieces(regions)                    # [B, 4], [B, 4], [B, H, W, 4]
    area = ops.sum(ops.cast(regions, "int32"), axis=(1, 2))
    debris = ops.cast(area - largest, "float32")[:, :3]
    fragmented = debris > rules.max_debris_fraction * ops.cast(area[:, :3], "float32")
    holes = pieces - _euler_number(regions) > 0                       # holes = pieces - Euler number

    lv4 = lv[..., None]
    border = ops.logical_and(lv4, _neighbour_any(ops.logical_not(lv4), 4, outside=True))
    touching = ops.logical_and(lv4, _neighbour_any(ops.equal(labels, 0)[..., None], 4, outside=True))
    n_border = ops.maximum(ops.sum(ops.cast(border, "float32"), axis=(1, 2, 3)), 1.0)
    exposed_fraction = ops.sum(ops.cast(touching, "float32"), axis=(1, 2, 3)) / n_border
    lv_present, la_present = present[:, 0], present[:, 2]
    exposed = ops.logical_and(lv_present, exposed_fraction > rules.max_exposed_fraction)

    contact = ops.any(ops.logical_and(la[..., None], _neighbour_any(lv4, 8)), axis=(1, 2, 3))
    detached = ops.logical_and(ops.logical_and(lv_present, la_present), ops.logical_not(contact))

    ratio, lean = _long_axis_shape(ops.cast(lv, "float32"), spacing)
    lo, hi = rules.elongation
    implausible = ops.logical_or(ops.logical_or(ratio < lo, ratio > hi), lean > rules.max_axis_angle)
    long_axis = ops.logical_and(lv_present, implausible)

    heart = in_largest[..., 3]  # the epicardium's largest piece: stray pixels do not count
    edges = ops.concatenate([heart[:, 0, :], heart[:, -1, :], heart[:, :, 0], heart[:, :, -1]], axis=1)
    side = ops.cast(ops.maximum(ops.shape(labels)[1], ops.shape(labels)[2]), "float32")
    at_border = ops.sum(ops.cast(edges, "float32"), axis=1) > rules.max_border_fraction * side

    flags = ops.concatenate([empty, fragmented, holes, ops.stack([exposed, detached, long_axis, at_border], axis=-1)],
                            axis=-1)
    return flags


def qc_bitmask_graph(flags):
    """int32 [B]: the bitmask of bool flags [B, F] (bit i = ``QC_FLAGS[i]``)."""
    weights = ops.convert_to_tensor([1 << i for i in range(len(QC_FLAGS))], dtype="int32")
    return ops.sum(ops.cast(flags, "int32") * weights, axis=-1)


def qc_flags_graph(labels, spacing=None, rules: QCRules | None = None):
    """int32 ``qc_flags`` [B] of label maps (integer [B, H, W], values 0..3); ``spacing`` float
    [B, 2] (row, col) mm or None (square pixels). Equal to
    :func:`cardigan_tf.metrics.anatomy.qc_flags_batch`."""
    return qc_bitmask_graph(anatomy_flags_graph(labels, spacing, rules))
