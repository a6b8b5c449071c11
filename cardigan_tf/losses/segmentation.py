"""Dice + cross-entropy loss for multi-class segmentation (computed in float32).

    loss = dice_weight * (1 - mean_c softDice_c) + ce_weight * CE

- soft Dice per class c over the foreground classes (1..C-1 by default), per image:
  ``(2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)``, then averaged over the
  classes and the images of the batch. With the smoothing term, a class absent from both the
  prediction and the ground truth scores 1 (no penalty).
- CE: categorical cross-entropy of the softmax probabilities (clipped to [eps, 1]), optionally
  weighted per class (``class_weights``, one per class; the weighted mean over pixels divides
  by the sum of the pixel weights), averaged per image.

``y_true`` may be integer labels (B, H, W) / (B, H, W, 1) or one-hot (B, H, W, C); ``y_pred`` is
a softmax (B, H, W, C). The loss returns one value per image, so Keras' default reduction
("sum_over_batch_size") divides by the global batch under a tf.distribute strategy.
"""

from __future__ import annotations

import keras
from keras import ops


def _to_one_hot(y_true, num_classes: int):
    if len(y_true.shape) == 4 and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, "float32")
    if len(y_true.shape) == 4 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype="float32")


def soft_dice_per_image(y_true_1h, y_pred, classes, smooth: float = 1.0):
    """(B, H, W, C) one-hot and probabilities -> (B, len(classes)) soft Dice."""
    idx = list(classes)
    t = ops.take(y_true_1h, idx, axis=-1)
    p = ops.take(y_pred, idx, axis=-1)
    inter = ops.sum(t * p, axis=(1, 2))
    denom = ops.sum(t, axis=(1, 2)) + ops.sum(p, axis=(1, 2))
    return (2.0 * inter + smooth) / (denom + smooth)


@keras.saving.register_keras_serializable(package="cardigan_tf")
class DiceCELoss(keras.losses.Loss):
    """Weighted sum of soft Dice loss (foreground classes) and categorical cross-entropy.

    Args:
        dice_weight: weight of ``1 - mean soft Dice``.
        ce_weight: weight of the cross-entropy.
        num_classes: number of classes C.
        smooth: Dice smoothing added to numerator and denominator.
        class_weights: optional C weights for the cross-entropy.
        include_background: also average the Dice over class 0.
        epsilon: probability clip for the logarithm.

    Example::

        loss = DiceCELoss(dice_weight=1.0, ce_weight=1.0)
        value = loss(labels_bhw, softmax_bhwc)
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        num_classes: int = 4,
        smooth: float = 1.0,
        class_weights=None,
        include_background: bool = False,
        epsilon: float = 1e-7,
        name: str = "dice_ce",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight <= 0:
            raise ValueError(f"DiceCELoss: weights must be >= 0 and not both 0, got {dice_weight}, {ce_weight}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"DiceCELoss.class_weights: expected {num_classes} values, got {len(class_weights)}")
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.num_classes = int(num_classes)
        self.smooth = float(smooth)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.include_background = bool(include_background)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y1h = _to_one_hot(y_true, self.num_classes)
        total = 0.0
        if self.dice_weight > 0:
            start = 0 if self.include_background else 1
            dice = soft_dice_per_image(y1h, y_pred, range(start, self.num_classes), self.smooth)
            total = total + self.dice_weight * (1.0 - ops.mean(dice, axis=-1))
        if self.ce_weight > 0:
            logp = ops.log(ops.clip(y_pred, self.epsilon, 1.0))
            ce_pix = -ops.sum(y1h * logp, axis=-1)  # (B, H, W)
            if self.class_weights is not None:
                w = ops.sum(y1h * ops.convert_to_tensor(self.class_weights, "float32"), axis=-1)
                ce = ops.sum(w * ce_pix, axis=(1, 2)) / ops.maximum(ops.sum(w, axis=(1, 2)), self.epsilon)
            else:
                ce = ops.mean(ce_pix, axis=(1, 2))
            total = total + self.ce_weight * ce
        return total

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            dice_weight=self.dice_weight,
            ce_weight=self.ce_weight,
            num_classes=self.num_classes,
            smooth=self.smooth,
            class_weights=self.class_weights,
            include_background=self.include_background,
            epsilon=self.epsilon,
        )
        return cfg
