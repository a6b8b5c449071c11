"""The per-image uncertainty of :mod:`cardigan_tf.metrics.uncertainty` as a graph (keras.ops).

For the serving signatures: traces into a ``tf.function`` (SavedModel) and converts to ONNX.
Same definitions as the NumPy reference (foreground-region normalised entropy, 1.0 without a
foreground pixel; 1 - mean pairwise structure Dice, NaN for one member).
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from cardigan_tf.labels import BACKGROUND, STRUCTURES
from cardigan_tf.metrics.uncertainty import EMPTY_UNCERTAINTY

__all__ = ["member_disagreement_graph", "member_uncertainty_graph", "predictive_entropy_graph"]


def _classes(p) -> int:
    c = p.shape[-1]
    if c is None or c < 2:
        raise ValueError(f"member probabilities: expected a static class axis C >= 2, got shape {p.shape}")
    return int(c)


def _argmax(x):
    """int32 argmax over the last axis, the first index on ties (as NumPy); keras' float argmax
    tests the sign bit with a bitcast, which ONNX lacks."""
    c = x.shape[-1]
    top = ops.max(x, axis=-1, keepdims=True)
    index = ops.reshape(ops.arange(c, dtype="int32"), (1,) * (len(x.shape) - 1) + (c,))
    return ops.min(ops.where(ops.equal(x, top), index, c), axis=-1)


def predictive_entropy_graph(member_probs):
    """float32 [B] from float member probabilities [M, B, H, W, C]: the mean normalised entropy
    of the mean probabilities over each image's foreground region."""
    p = ops.cast(member_probs, "float32")
    mean = ops.mean(p, axis=0)
    entropy = -ops.sum(mean * ops.log(ops.maximum(mean, 1e-12)), axis=-1) / math.log(_classes(p))
    region = ops.logical_or(ops.any(ops.not_equal(_argmax(p), BACKGROUND), axis=0),
                            ops.not_equal(_argmax(mean), BACKGROUND))
    weight = ops.cast(region, "float32")
    n = ops.sum(weight, axis=(1, 2))
    total = ops.sum(entropy * weight, axis=(1, 2))
    return ops.where(n > 0, total / ops.maximum(n, 1.0), EMPTY_UNCERTAINTY)


def _membership(num_classes: int) -> np.ndarray:
    """[C, S]: 1 where class c belongs to structure s."""
    return np.array([[float(c in ids) for ids in STRUCTURES.values()] for c in range(num_classes)], np.float32)


def member_disagreement_graph(member_probs):
    """float32 [B] from member probabilities [M, B, H, W, C]: 1 - the mean pairwise structure
    Dice of the members' argmax maps; NaN when M = 1."""
    p = ops.cast(member_probs, "float32")
    c = _classes(p)
    shape = ops.shape(p)
    m = shape[0]
    onehot = ops.one_hot(_argmax(p), c)                                # [M, B, H, W, C]
    maps = ops.reshape(ops.matmul(onehot, _membership(c)), (m, shape[1], -1, len(STRUCTURES)))  # [M, B, P, S]
    inter = ops.einsum("mbps,nbps->mnbs", maps, maps)
    size = ops.sum(maps, axis=2)                                       # [M, B, S]
    total = size[:, None] + size[None, :]                              # [M, M, B, S]
    dice = ops.where(total > 0, 2.0 * inter / ops.maximum(total, 1.0), 1.0)
    idx = ops.arange(m)
    upper = ops.cast(idx[:, None] < idx[None, :], "float32")[:, :, None]  # pairs i < j
    mean_dice = ops.sum(ops.mean(dice, axis=-1) * upper, axis=(0, 1)) / ops.sum(upper)
    return 1.0 - mean_dice


def member_uncertainty_graph(member_probs):
    """{"uncertainty": float32 [B], "disagreement": float32 [B]} from member probabilities
    [M, B, H, W, C] (disagreement NaN when M = 1)."""
    return {"uncertainty": predictive_entropy_graph(member_probs),
            "disagreement": member_disagreement_graph(member_probs)}
