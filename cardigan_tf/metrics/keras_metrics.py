"""Keras metrics for training progress: Dice of LV endo, LV epi and LA from argmax predictions.

The Dice is accumulated over the epoch as a pooled ratio ``2 * sum|P & G| / (sum|P| + sum|G|)``
over every pixel of every image seen (not a mean of per-image Dice), so it is exact for any
batching and cheap. ``structure="mean"`` averages the three structures' pooled Dice (the
quantity the best model is selected on). An epoch with no pixel of a structure in either mask
scores 1 for it.

The per-image Dice at the original resolution, in mm-metrics reports, comes from
cardigan_tf.metrics.segmentation (numpy), not from here.
"""

from __future__ import annotations

import keras
from keras import ops

from cardigan_tf.labels import STRUCTURES

_ORDER = tuple(STRUCTURES)


@keras.saving.register_keras_serializable(package="cardigan_tf")
class StructureDice(keras.metrics.Metric):
    """Epoch-pooled Dice of one CAMUS structure (or their mean), from argmax predictions.

    Args:
        structure: "lv_endo" (label 1), "lv_epi" (labels 1+2), "la" (label 3) or "mean".
        num_classes: channels of the softmax.

    ``update_state(y_true, y_pred)``: y_true integer labels (B, H, W[, 1]) or one-hot
    (B, H, W, C); y_pred probabilities (B, H, W, C).

    Example::

        m = StructureDice("lv_endo")
        m.update_state(labels, probs); m.result()
    """

    def __init__(self, structure: str = "lv_endo", num_classes: int = 4, name: str | None = None, **kwargs):
        if structure not in (*_ORDER, "mean"):
            raise ValueError(f"StructureDice.structure: expected one of {(*_ORDER, 'mean')}, got {structure!r}")
        super().__init__(name=name or f"dice_{structure}", **kwargs)
        self.structure = structure
        self.num_classes = int(num_classes)
        self.structures = _ORDER if structure == "mean" else (structure,)
        n = len(self.structures)
        self.intersection = self.add_variable(shape=(n,), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(n,), initializer="zeros", name="total")

    def _labels(self, y_true):
        if len(y_true.shape) == 4 and y_true.shape[-1] == self.num_classes and self.num_classes > 1:
            return ops.argmax(y_true, axis=-1)
        if len(y_true.shape) == 4 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, -1)
        return ops.cast(y_true, "int32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        gt = ops.cast(self._labels(y_true), "int32")
        pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        inters, totals = [], []
        for s in self.structures:
            g = ops.zeros_like(gt, dtype="bool")
            p = ops.zeros_like(pred, dtype="bool")
            for lab in STRUCTURES[s]:
                g = ops.logical_or(g, ops.equal(gt, lab))
                p = ops.logical_or(p, ops.equal(pred, lab))
            g = ops.cast(g, "float32")
            p = ops.cast(p, "float32")
            inters.append(ops.sum(g * p))
            totals.append(ops.sum(g) + ops.sum(p))
        self.intersection.assign_add(ops.stack(inters))
        self.total.assign_add(ops.stack(totals))

    def result(self):
        dice = ops.where(self.total > 0, 2.0 * self.intersection / ops.maximum(self.total, 1.0), 1.0)
        return ops.mean(dice)

    def reset_state(self):
        self.intersection.assign(ops.zeros_like(self.intersection))
        self.total.assign(ops.zeros_like(self.total))

    def get_config(self):
        return {"structure": self.structure, "num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


def structure_dice_metrics(num_classes: int = 4) -> list[StructureDice]:
    """The progress metrics used by ``train seg``: dice_lv_endo, dice_lv_epi, dice_la, dice_mean."""
    return [StructureDice(s, num_classes) for s in (*_ORDER, "mean")]
