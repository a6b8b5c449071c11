"""An ensemble of U-Nets with test-time augmentation (TTA) as ONE Keras model.

:func:`build_ensemble` wraps trained U-Nets (main output only, see
``cardigan_tf.models.unet.inference_model``) of the same working size into one functional
model: image (B, s, s, 1) in [0, 1] -> ``[probabilities, member_probabilities]``:

- ``probabilities`` (B, s, s, K): the mean of the softmax probabilities over every member and
  every view, the geometric views undone first (the ensemble's answer; the first output, which
  :func:`cardigan_tf.inference.predict_probabilities` and the serving graphs take);
- ``member_probabilities`` (B, M, s, s, K): each member on each view, M = members x views,
  member-major (member i, view j at ``i * views + j``); view 0 is the identity.
  :func:`cardigan_tf.inference.member_probabilities` returns them as (M, B, s, s, K).

The views of one batch run as one batch of V x B images through each member: one graph, one
input, each member called once.

Views (:func:`parse_view`; the identity always comes first and is not named):

- ``hflip``: left-right flip, undone on the probabilities (flipped back). Valid only for
  models trained with left-right flips (``augment.hflip``): in an apical view a flip swaps the
  septal and lateral sides, an anatomy a model trained without flips never saw. The labels
  (LV cavity, myocardium, LA) have no left/right variants, so no label is swapped.
- ``gamma:G``: ``x ** G`` (as ``data.augment.intensity``: exp(G log x)).
- ``contrast:C``: ``mean + C (x - mean)`` per image, clipped to [0, 1] (as the augmentation).

Intensity views change no geometry: nothing to undo. Which views fit a model's training is
checked where the training config is known (``cardigan_tf.configs.cv.check_tta``).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers, ops

#: view name -> whether it takes a parameter (``name:value``)
VIEW_KINDS = {"hflip": False, "gamma": True, "contrast": True}
#: views whose geometry is undone on the probabilities
GEOMETRIC = ("hflip",)


def parse_view(spec: str) -> tuple[str, float | None]:
    """``"hflip"`` -> ("hflip", None); ``"gamma:0.8"`` -> ("gamma", 0.8). ValueError naming the
    spec and what is expected otherwise."""
    text = str(spec).strip()
    name, sep, value = text.partition(":")
    if name not in VIEW_KINDS:
        raise ValueError(f"test-time view {spec!r}: expected one of hflip, gamma:G, contrast:C")
    if not VIEW_KINDS[name]:
        if sep:
            raise ValueError(f"test-time view {spec!r}: {name} takes no value")
        return name, None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"test-time view {spec!r}: expected {name}:NUMBER, e.g. {name}:0.8") from None
    if not number > 0:
        raise ValueError(f"test-time view {spec!r}: expected a positive {name}")
    return name, number


def _apply_view(x, spec: str):
    name, value = parse_view(spec)
    if name == "hflip":
        return ops.flip(x, axis=2)
    if name == "gamma":
        return ops.exp(ops.log(x) * value)  # log 0 = -inf: 0 ** G = 0
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    return ops.clip(mean + value * (x - mean), 0.0, 1.0)


@keras.saving.register_keras_serializable(package="cardigan_tf")
class AugmentedViews(layers.Layer):
    """(B, H, W, C) images -> (V x B, H, W, C): the identity, then each view of ``views``,
    view-major (rows j*B .. j*B + B - 1 hold view j)."""

    def __init__(self, views: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.views = [str(v) for v in views]
        for v in self.views:
            parse_view(v)

    def call(self, x):
        return ops.concatenate([x, *(_apply_view(x, v) for v in self.views)], axis=0)

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        return (None if b is None else b * (len(self.views) + 1), *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": list(self.views)}


@keras.saving.register_keras_serializable(package="cardigan_tf")
class UndoViews(layers.Layer):
    """(V x B, H, W, K) probabilities of :class:`AugmentedViews`' rows -> (B, V, H, W, K), each
    geometric view undone (``hflip``: flipped back)."""

    def __init__(self, views: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.views = [str(v) for v in views]
        for v in self.views:
            parse_view(v)

    def call(self, p):
        n = len(self.views) + 1
        if n == 1:
            return ops.expand_dims(p, 1)  # no view: a reshape, no copy
        b = ops.shape(p)[0] // n
        parts = []
        for j, view in enumerate(["identity", *self.views]):
            part = p[j * b:(j + 1) * b]
            if view in GEOMETRIC:
                part = ops.flip(part, axis=2)
            parts.append(part)
        return ops.stack(parts, axis=1)

    def compute_output_shape(self, input_shape):
        n = len(self.views) + 1
        b = input_shape[0]
        return (None if b is None else b // n, n, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": list(self.views)}


@keras.saving.register_keras_serializable(package="cardigan_tf")
class MemberMean(layers.Layer):
    """A list of (B, V, H, W, K) tensors (one per member) -> (B, H, W, K): the mean over the
    members and the views, float32. It reads the members' own outputs, not their concatenation,
    so a graph that needs only the mean (a serving signature) never builds the stack."""

    def call(self, parts):
        parts = parts if isinstance(parts, (list, tuple)) else [parts]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return ops.mean(ops.cast(total, "float32"), axis=1) / len(parts)

    def compute_output_shape(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        return (shape[0], *shape[2:])


def build_ensemble(members: Sequence[keras.Model], views: Sequence[str] = (), name: str = "ensemble") -> keras.Model:
    """One model running every member on every view (see the module docstring).

    ``members``: single-output U-Nets, (B, s, s, 1) -> (B, s, s, K), all of one input size and
    class count; ``views``: test-time views besides the identity (:func:`parse_view`).
    ValueError for no member, differing sizes or class counts, or a bad view."""
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one member model")
    shapes = {(tuple(m.inputs[0].shape[1:]), tuple(m.outputs[0].shape[1:])) for m in members}
    if any(len(m.outputs) != 1 for m in members):
        raise ValueError("ensemble members: expected single-output models (inference_model of each U-Net)")
    if len(shapes) != 1:
        raise ValueError(f"ensemble members: expected one input and output shape, got {sorted(shapes)}")
    views = [str(v) for v in views]
    inp = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    x = AugmentedViews(views, name="views")(inp)
    undo = UndoViews(views, name="undo_views")
    per_member = []
    for i, member in enumerate(members):
        wrapped = keras.Model(member.inputs[0], member.outputs[0], name=f"member_{i}")  # unique names in one graph
        per_member.append(undo(wrapped(x)))
    stacked = per_member[0] if len(per_member) == 1 else layers.Concatenate(axis=1, name="members")(per_member)
    mean = MemberMean(name="mean", dtype="float32")(per_member)
    return keras.Model(inp, [mean, stacked], name=name)
