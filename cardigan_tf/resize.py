"""The one resize path of cardigan_tf: images, masks and predicted probabilities.

Every place that changes an image's grid (prepare, the training pipeline, evaluation,
generation, GAN quality, the exported SavedModels, predict) calls this module, so that a model
sees at serving time exactly the pixels it saw in training.

- Images (float32 in [0, 1], channels last): TensorFlow's ``area`` resampling when the image
  shrinks along both axes (exact area averaging: each output pixel is the mean of the input
  area it covers, weighted by overlap), ``bilinear`` (half-pixel centres) otherwise; the result
  is clipped to [0, 1]. :data:`IMAGE_INTERPOLATION` names the rule in metadata.
- Masks (integer labels): nearest neighbour with pixel-centre mapping, output pixel ``i``
  taking input pixel ``floor((i + 0.5) * in / out)`` computed in float64 (identical to PIL's
  NEAREST), the same in NumPy and in a TF graph.
- Probabilities (B, H, W, K): bilinear, then argmax for a mask (:func:`probs_to_mask`): a
  prediction is never a nearest-upsampled low-resolution mask.
- A chain of sizes (:func:`resize_chain`): data prepared at 256x256 and trained at 64x64 went
  through original -> 256 -> 64; inference on an original image replays the same two steps.

TF functions take tensors (eager or graph, any static/dynamic shape); ``*_np`` functions take
and return NumPy arrays. TensorFlow is imported on first use.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cardigan_tf.runtime import tensorflow

IMAGE_INTERPOLATION = "area when shrinking both axes, else bilinear (half-pixel centres); clipped to [0, 1]"
MASK_INTERPOLATION = "nearest, pixel centres: src = floor((i + 0.5) * in / out)"
PROBABILITY_INTERPOLATION = "bilinear (half-pixel centres), then argmax"


def _hw(size):
    """(h, w) from an int, a pair of ints, or (in TF functions) a pair / 1-D tensor of two
    dynamic sizes, e.g. ``tf.shape(image)[1:3]``."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if hasattr(size, "dtype") and not isinstance(size, np.ndarray):  # a tensor: dynamic size
        return size[0], size[1]
    h, w = (int(s) for s in size)
    return h, w


# ----------------------------------------------------------------------------- TensorFlow
def resize_image(image, size):
    """Resize float image(s) (H, W, C) or (B, H, W, C) to ``size`` (int or (h, w)); float32."""
    tf = tensorflow()
    h, w = _hw(size)
    image = tf.convert_to_tensor(image)
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    in_h, in_w = shape[-3], shape[-2]
    if not isinstance(h, int):
        h, w = tf.cast(h, tf.int32), tf.cast(w, tf.int32)
    same = tf.logical_and(tf.equal(in_h, h), tf.equal(in_w, w))
    shrink = tf.logical_and(in_h >= h, in_w >= w)

    hw = tf.stack([h, w]) if not isinstance(h, int) else [h, w]

    def area():
        return tf.image.resize(image, hw, method="area")

    def bilinear():
        return tf.image.resize(image, hw, method="bilinear")

    def keep():
        return tf.image.resize(image, hw, method="nearest")  # identity at the same size; static shape

    out = tf.cond(same, keep, lambda: tf.cond(shrink, area, bilinear))
    return tf.clip_by_value(out, 0.0, 1.0)


def _nearest_index(n_in, n_out):
    tf = tensorflow()
    n_in64 = tf.cast(n_in, tf.float64)
    n_out64 = tf.cast(n_out, tf.float64)
    idx = tf.cast(tf.floor((tf.range(tf.cast(n_out, tf.int32), dtype=tf.float64) + 0.5) * n_in64 / n_out64), tf.int32)
    return tf.minimum(idx, tf.cast(n_in, tf.int32) - 1)


def resize_mask(mask, size):
    """Nearest (pixel-centre) resize of label mask(s) (H, W) or (B, H, W); dtype kept."""
    tf = tensorflow()
    h, w = _hw(size)
    mask = tf.convert_to_tensor(mask)
    shape = tf.shape(mask)
    rows = _nearest_index(shape[-2], h)
    cols = _nearest_index(shape[-1], w)
    out = tf.gather(mask, rows, axis=-2)
    return tf.gather(out, cols, axis=-1)


def resize_probabilities(probs, size):
    """Bilinear resize of (B, H, W, K) probabilities to ``size`` (float32)."""
    tf = tensorflow()
    h, w = _hw(size)
    probs = tf.cast(tf.convert_to_tensor(probs), tf.float32)
    return tf.image.resize(probs, tf.stack([h, w]) if not isinstance(h, int) else [h, w], method="bilinear")


def probs_to_mask(probs, size=None):
    """Argmax mask (uint8) of (B, H, W, K) probabilities, resized bilinearly to ``size`` first."""
    tf = tensorflow()
    if size is not None:
        probs = resize_probabilities(probs, size)
    return tf.cast(tf.argmax(probs, axis=-1), tf.uint8)


def resize_chain(image, sizes: Sequence):
    """Resize image(s) through each size of ``sizes`` in turn (sizes equal to the current one
    are no-ops), e.g. ``(prepared_size, working_size)``."""
    for size in sizes:
        if size:
            image = resize_image(image, size)
    return image


# ----------------------------------------------------------------------------- NumPy
def resize_images_np(images, size, chunk: int = 256) -> np.ndarray:
    """(N, H, W, 1) or (N, H, W) float images -> (N, h, w, 1) float32 (see module doc)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    h, w = _hw(size)
    if images.shape[1:3] == (h, w):
        return np.clip(images, 0.0, 1.0)
    out = np.empty((len(images), h, w, images.shape[-1]), np.float32)
    for a in range(0, len(images), chunk):
        out[a:a + chunk] = resize_image(images[a:a + chunk], (h, w)).numpy()
    return out


def resize_image_np(image, size) -> np.ndarray:
    """One 2-D (H, W) or (H, W, C) float image -> same rank at ``size``; float32."""
    image = np.asarray(image, np.float32)
    flat = image.ndim == 2
    out = resize_image(image[..., None] if flat else image, size).numpy()
    return out[..., 0] if flat else out


def resize_mask_np(mask, size) -> np.ndarray:
    """Nearest (pixel-centre) resize of a label mask (H, W) or (N, H, W); values and dtype kept."""
    m = np.asarray(mask)
    h, w = _hw(size)
    in_h, in_w = m.shape[-2], m.shape[-1]
    rows = np.minimum(((np.arange(h) + 0.5) * in_h / h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * in_w / w).astype(np.int64), in_w - 1)
    return m[..., rows, :][..., cols]


def resize_pairs_np(images, masks, size, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, 1]) and masks (N, H, W) to ``size``: (N, h, w, 1) float32, (N, h, w) uint8."""
    return resize_images_np(images, size, chunk), resize_mask_np(np.asarray(masks), size).astype(np.uint8)


def probs_to_mask_np(probs, shape) -> np.ndarray:
    """(H, W, K) or (B, H, W, K) probabilities -> uint8 mask at ``shape`` (bilinear, argmax)."""
    p = np.asarray(probs, np.float32)
    single = p.ndim == 3
    out = probs_to_mask(p[None] if single else p, shape).numpy()
    return out[0] if single else out
