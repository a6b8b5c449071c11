"""The one inference input path: images (or masks) in, model outputs at the right size out.

Used by evaluation, generation, GAN quality, export and predict, so that a model is always fed
exactly as it was trained (:mod:`cardigan_tf.resize`):

- :class:`Preprocessing` names the resize chain of a run: data prepared at ``prepared_size``
  (the seed-layout file's image size) and trained at ``working_size``. An image at any other
  size goes through both steps, as the training images did.
- U-Net (or an ensemble of them, :mod:`cardigan_tf.models.ensemble`): :func:`model_input` ->
  (N, s, s, 1) float32 in [0, 1]; :func:`predict_probabilities` (an ensemble's mean);
  :func:`member_probabilities` (each member and test-time view, for uncertainty);
  :func:`combine_members` turns member probabilities [M, N, s, s, C] (M = 1 for one model) into
  one prediction and its per-image uncertainty;
  :func:`masks_from_probabilities` resizes probabilities (bilinear) to each target shape, then
  takes the argmax; :func:`segment` chains model input, probabilities and masks.
- GAN: :func:`onehot_masks` (nearest resize + one-hot) and :func:`synthesize` (images in [0, 1]).

Inputs may be a list of 2-D arrays of different shapes, or an (N, H, W[, 1]) array; uint8
images are divided by 255, float images are taken as [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from cardigan_tf import resize
from cardigan_tf.labels import NUM_CLASSES
from cardigan_tf.metrics.uncertainty import check_member_probs, member_uncertainty


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images reach a model: through ``prepared_size`` (when set), then ``working_size``."""

    working_size: int
    prepared_size: int | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s for s in (self.prepared_size, self.working_size) if s)

    def to_dict(self) -> dict[str, Any]:
        return {"working_size": self.working_size, "prepared_size": self.prepared_size,
                "image_interpolation": resize.IMAGE_INTERPOLATION,
                "mask_interpolation": resize.MASK_INTERPOLATION,
                "output_interpolation": resize.PROBABILITY_INTERPOLATION,
                "input_range": "float [0, 1], or uint8 divided by 255"}


def _as_float_image(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"image: expected a 2-D gray image (H, W) or (H, W, 1), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32)


def _as_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and not (images.ndim == 3 and images.shape[-1] == 1):
        return [images[i] for i in range(len(images))]
    if isinstance(images, np.ndarray):
        return [images]
    return list(images)


def model_input(images, pre: Preprocessing) -> np.ndarray:
    """Images (list or array, any sizes) -> (N, s, s, 1) float32 in [0, 1] at the working size."""
    out = []
    for im in _as_list(images):
        x = _as_float_image(im)[None, ..., None]
        for size in pre.sizes:
            if x.shape[1:3] != (size, size):
                x = resize.resize_image(x, size).numpy()
        out.append(np.clip(x[0], 0.0, 1.0))
    if not out:
        return np.zeros((0, pre.working_size, pre.working_size, 1), np.float32)
    return np.stack(out).astype(np.float32)


def predict_probabilities(model, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Softmax (N, s, s, K) of a U-Net (the first output when it has several) on model input."""
    if len(x) == 0:
        return np.zeros((0, *x.shape[1:3], NUM_CLASSES), np.float32)
    out = []
    for a in range(0, len(x), batch_size):
        y = model(x[a:a + batch_size], training=False)
        if isinstance(y, (list, tuple)):
            y = y[0]
        out.append(np.asarray(y, np.float32))
    return np.concatenate(out)


def member_probabilities(model, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(M, N, s, s, K) softmax of every member and test-time view of an ensemble
    (:func:`cardigan_tf.models.ensemble.build_ensemble`, its second output), or (1, N, s, s, K)
    for a single U-Net; their mean over M is :func:`predict_probabilities`."""
    out = []
    for a in range(0, len(x), batch_size):
        y = model(x[a:a + batch_size], training=False)
        if isinstance(y, (list, tuple)) and len(y) > 1 and len(y[1].shape) == 5:
            out.append(np.moveaxis(np.asarray(y[1], np.float32), 1, 0))
        else:
            out.append(np.asarray(y[0] if isinstance(y, (list, tuple)) else y, np.float32)[None])
    if not out:
        return np.zeros((1, 0, *x.shape[1:3], NUM_CLASSES), np.float32)
    return np.concatenate(out, axis=1)


def combine_members(member_probs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Member probabilities float [M, N, s, s, C] (M >= 1 members: fold models and/or test-time
    views mapped back onto the image; M = 1 for a single model's softmax) -> (the mean
    probabilities float32 [N, s, s, C], {"uncertainty": float32 [N]} plus "disagreement"
    float32 [N] when M > 1), as :mod:`cardigan_tf.metrics.uncertainty` defines them.

    The one place where members become one prediction: evaluation and prediction call it with
    whatever members they have."""
    p = check_member_probs(member_probs)
    scores = member_uncertainty(p)
    if len(p) == 1:
        del scores["disagreement"]
    return p.mean(axis=0), scores


def masks_from_probabilities(probs: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """uint8 masks at each target shape: probabilities resized bilinearly, then argmax."""
    return [resize.probs_to_mask_np(p, tuple(shape)[:2]) for p, shape in zip(probs, shapes)]


def segment(model, images, pre: Preprocessing, shapes: Sequence[tuple[int, int]] | None = None,
            batch_size: int = 16) -> list[np.ndarray]:
    """Masks for ``images`` at ``shapes`` (default: each image's own shape)."""
    imgs = _as_list(images)
    shapes = [np.asarray(im).shape[:2] for im in imgs] if shapes is None else list(shapes)
    probs = predict_probabilities(model, model_input(imgs, pre), batch_size)
    return masks_from_probabilities(probs, shapes)


def onehot_masks(masks, size: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Label masks (list or (N, H, W)) -> one-hot (N, size, size, C) float32 (nearest resize)."""
    out = []
    for m in _as_list(masks):
        m = np.asarray(m)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.max(initial=0) >= num_classes:
            raise ValueError(f"mask: labels must be in [0, {num_classes - 1}], got {int(m.max())}")
        out.append(resize.resize_mask_np(m.astype(np.int64), size))
    labels = np.stack(out) if out else np.zeros((0, size, size), np.int64)
    return np.eye(num_classes, dtype=np.float32)[labels]


def synthesize(generator, masks, seed: int = 0, batch_size: int = 16, z: np.ndarray | None = None) -> np.ndarray:
    """Generator images in [0, 1], (N, s, s), for label masks at any size (resized to the
    generator's size by nearest); a style generator draws ``z ~ N(0, 1)`` from ``seed``."""
    size = int(generator.inputs[0].shape[1])
    onehot = onehot_masks(masks, size)
    inputs: Any = onehot
    if len(generator.inputs) > 1:
        z_dim = int(generator.inputs[1].shape[-1])
        if z is None:
            z = np.random.default_rng(seed).standard_normal((len(onehot), z_dim)).astype(np.float32)
        inputs = [onehot, np.asarray(z, np.float32)]
    out = generator.predict(inputs, batch_size=batch_size, verbose=0)
    return ((np.clip(np.asarray(out, np.float32), -1.0, 1.0) + 1.0) / 2.0)[..., 0]
