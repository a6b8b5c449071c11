"""Mask-consistent augmentation for tf.data: one geometric warp for image and mask, intensity
changes on the image only.

Geometry (rotation about the image centre, isotropic scale, translation, optional left-right
flip) is applied as ONE ``ImageProjectiveTransformV3`` per batch with per-sample transforms:
bilinear for the image, nearest neighbour for the mask, zero (black / background) outside.
Intensity: brightness, contrast, gamma, Gaussian noise and blur, clipped to [0, 1].

Every random number comes from ``tf.random.stateless_*`` with an explicit seed (shape (2,)),
so a given seed gives the same augmentation; the pipeline derives it from (seed, batch index).
Parameters are drawn per sample, so batching first and augmenting the whole batch keeps
per-sample randomness (and is much faster than one op per sample).

Example::

    cfg = AugmentConfig(rotation=10, scale=(0.9, 1.1))
    images, masks = augment_batch(images, masks, tf.constant([0, 7]), cfg)  # (B,H,W,1), (B,H,W)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from PIL import Image

from cardigan_tf.config import ConfigError


@dataclass
class AugmentConfig:
    """Augmentation ranges. Each op is drawn per sample; a range (lo, hi) is uniform.

    rotation: max |angle| in degrees, about the image centre.
    scale: zoom factor range (>1 magnifies).
    translation: max shift as a fraction of the image size, per axis.
    hflip: left-right flip with probability 0.5. Off by default: a left-right flip changes the
        anatomy of an apical view (it swaps the septal and lateral sides, e.g. puts the RV of a
        4CH view on the wrong side), so it is not a label-preserving transform here.
    p_geometric: probability of warping a sample (identity otherwise). 0.5 by default: spatial
        augmentation on about half the samples (nnU-Net draws rotation and scaling with p=0.2
        each), and the warp is the pipeline's main CPU cost, paid only for warped samples.
    brightness: max |additive| change.  contrast: factor range around the sample mean.
    gamma: exponent range.  noise_std: max standard deviation of added Gaussian noise.
    blur_prob / blur_sigma: probability of blurring, and the Gaussian sigma (pixels) at full
        strength; the strength is drawn uniformly in [0, 1] (a blend with the blurred image).
    p_intensity: probability of applying each intensity op to a sample.
    """

    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translation: float = 0.05
    hflip: bool = False
    p_geometric: float = 0.5
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.8, 1.2)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.03
    blur_prob: float = 0.2
    blur_sigma: float = 1.0
    p_intensity: float = 0.5

    def validate(self) -> None:
        def rng_ok(name, lo_min):
            lo, hi = getattr(self, name)
            if not (lo_min <= lo <= hi):
                raise ConfigError(f"augment.{name}: expected {lo_min} <= lo <= hi, got {getattr(self, name)}")

        if not 0 <= self.rotation <= 180:
            raise ConfigError(f"augment.rotation: expected degrees in [0, 180], got {self.rotation}")
        rng_ok("scale", 1e-3)
        rng_ok("contrast", 0.0)
        rng_ok("gamma", 1e-3)
        for name in ("p_geometric", "blur_prob", "p_intensity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        for name in ("translation", "brightness", "noise_std", "blur_sigma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name}: expected >= 0, got {getattr(self, name)}")

    def scaled(self, geometric: float = 1.0, intensity: float = 1.0) -> AugmentConfig:
        """A copy with the geometric and intensity groups scaled by one strength each.

        A strength ``s`` multiplies every magnitude of its group (rotation, translation, the
        deviation of ``scale`` from 1; brightness, the deviation of ``contrast`` from 1, the
        log of the ``gamma`` range, noise and blur sigma) by ``s``, and its probabilities
        (p_geometric; p_intensity, blur_prob) by ``min(s, 1)``: 0 switches the group off, 1 is
        this config, 2 doubles the magnitudes at this config's probabilities.
        """
        g, i = float(geometric), float(intensity)
        if g < 0 or i < 0:
            raise ConfigError(f"augmentation strengths must be >= 0, got geometric={g}, intensity={i}")
        pg, pi = min(g, 1.0), min(i, 1.0)

        def around_one(rng, s):
            lo, hi = rng
            return (max(1e-3, 1.0 + (lo - 1.0) * s), 1.0 + (hi - 1.0) * s)

        def log_range(rng, s):
            lo, hi = rng
            return (math.exp(math.log(max(lo, 1e-3)) * s), math.exp(math.log(max(hi, 1e-3)) * s))

        return dataclasses.replace(
            self,
            rotation=min(180.0, self.rotation * g),
            scale=around_one(self.scale, g),
            translation=self.translation * g,
            p_geometric=self.p_geometric * pg,
            hflip=self.hflip and g > 0,
            brightness=self.brightness * i,
            contrast=(max(0.0, 1.0 + (self.contrast[0] - 1.0) * i), 1.0 + (self.contrast[1] - 1.0) * i),
            gamma=log_range(self.gamma, i),
            noise_std=self.noise_std * i,
            blur_sigma=self.blur_sigma * i,
            blur_prob=self.blur_prob * pi,
            p_intensity=self.p_intensity * pi,
        )


def affine_transforms(batch: tf.Tensor, height: int, width: int, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """(B, 8) output->input transforms for ImageProjectiveTransformV3, drawn per sample.

    Forward map: ``out = s R(theta) F (in - c) + c + t``; the op needs its inverse
    ``in = F R(-theta) / s (out - c - t) + c``. ``F`` flips x when hflip is drawn.
    """
    u = tf.random.stateless_uniform([batch, 6], seed=seed, dtype=tf.float32)
    apply = tf.cast(u[:, 0] < cfg.p_geometric, tf.float32)
    theta = (2.0 * u[:, 1] - 1.0) * (cfg.rotation * math.pi / 180.0) * apply
    lo, hi = cfg.scale
    scale = 1.0 + (lo + (hi - lo) * u[:, 2] - 1.0) * apply
    tx = (2.0 * u[:, 3] - 1.0) * cfg.translation * width * apply
    ty = (2.0 * u[:, 4] - 1.0) * cfg.translation * height * apply
    flip = tf.where((u[:, 5] < 0.5) & tf.constant(bool(cfg.hflip)), -1.0, 1.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta) / scale, tf.sin(theta) / scale
    m00, m01 = flip * cos, flip * sin
    m10, m11 = -sin, cos
    ox, oy = cx + tx, cy + ty
    a2 = cx - m00 * ox - m01 * oy
    b2 = cy - m10 * ox - m11 * oy
    zeros = tf.zeros_like(theta)
    return tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)


_IDENTITY = tf.constant([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def warp(images: tf.Tensor, transforms: tf.Tensor, interpolation: str) -> tf.Tensor:
    """Apply (B, 8) transforms to (B, H, W, C) images (float32 or uint8); zero outside."""
    shape = tf.shape(images)[1:3]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape, fill_value=0.0,
        interpolation=interpolation, fill_mode="CONSTANT",
    )


def _clip01(x: tf.Tensor) -> tf.Tensor:
    """Clip to [0, 1] in one pass (``tf.clip_by_value`` is two: maximum, then minimum)."""
    return tf.raw_ops.ClipByValue(t=x, clip_value_min=tf.constant(0.0, x.dtype),
                                  clip_value_max=tf.constant(1.0, x.dtype))


def blur(images: tf.Tensor, sigma: float) -> tf.Tensor:
    """Approximately Gaussian blur of (B, H, W, C) images: two box passes of 2r+1 pixels,
    r = max(1, round(sigma / 1.15)) (two 3-pixel boxes give sigma ~ 1.15). Borders average the
    pixels that exist.

    Runs on a (1, H, W, B*C) view (samples as channels): ``avg_pool2d`` vectorises over the
    channel axis, which makes it ~6x cheaper than on (B, H, W, 1), transposes included."""
    shape = tf.shape(images)
    k = 2 * max(1, int(round(sigma / 1.15))) + 1
    x = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), tf.stack([1, shape[1], shape[2], -1]))
    x = tf.nn.avg_pool2d(tf.nn.avg_pool2d(x, k, 1, "SAME"), k, 1, "SAME")
    x = tf.reshape(x, tf.stack([shape[1], shape[2], shape[0], shape[3]]))
    return tf.transpose(x, [2, 0, 1, 3])


def _normal(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Exact N(0, 1) samples of ``shape`` (first dimension even) by Box-Muller from stateless
    uniforms: ~2x cheaper on CPU than ``stateless_normal``."""
    half = tf.concat([[2, shape[0] // 2], shape[1:]], axis=0)
    u = tf.random.stateless_uniform(half, seed=seed, dtype=tf.float32)
    r = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u in (0, 1]
    t = (2.0 * math.pi) * u[1]
    return tf.concat([r * tf.cos(t), r * tf.sin(t)], axis=0)


def batch_noise(shape: tf.Tensor, seed: tf.Tensor, std: tf.Tensor | None = None) -> tf.Tensor:
    """Gaussian noise of ``shape`` (B, H, W, C): sample i gets white N(0, std[i]^2) noise
    (std 1 when ``std`` is None), at about 1/8 of the cost of drawing B fields.

    K = 2 * ceil(B / 16) base fields of i.i.d. N(0, 1) are drawn; sample i's noise is
    ``sum_j w_ij N_j`` with a random unit vector w_i (drawn per sample from the seed), which is
    again exactly i.i.d. N(0, 1) per pixel. Honest caveat: the samples of one batch share the
    K base fields, so their noise fields are correlated with each other (correlation
    w_i . w_k, ~1/sqrt(K) in size), never within a sample; a model sees each sample on its own.
    One matmul mixes the fields and applies ``std``."""
    b = shape[0]
    k = 2 * ((b + 15) // 16)
    s_base, s_mix = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    base = _normal(tf.stack([k, tf.reduce_prod(shape[1:])]), s_base)
    w = tf.random.stateless_normal(tf.stack([b, k]), seed=s_mix, dtype=tf.float32)
    scale = tf.math.rsqrt(tf.reduce_sum(w * w, axis=1))
    if std is not None:
        scale = scale * tf.cast(std, tf.float32)
    return tf.reshape(tf.matmul(w * scale[:, None], base), shape)


def _on_subset(x: tf.Tensor, selected: tf.Tensor, fn) -> tf.Tensor:
    """Apply ``fn(sub, index)`` to the selected samples only (whole-image gathers are cheap; the
    ops are not), leave the others unchanged."""
    idx = tf.where(selected)
    sub = tf.gather_nd(x, idx)
    return tf.tensor_scatter_nd_update(x, idx, fn(sub, idx[:, 0]))


def intensity(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Blur, brightness, contrast, gamma and noise on (B, H, W, 1) images in [0, 1], per sample.

    Each op is drawn per sample (blur with ``blur_prob``, the others with ``p_intensity``) and
    applied in that order, each result clipped to [0, 1]. Written for CPU time: blur, gamma and
    noise run only on the samples that drew them (gather, op, scatter); brightness and contrast
    are one multiply-add over the batch (identity where not drawn); gamma is exp(g log x)
    (``tf.pow`` is ~5x slower; log 0 = -inf gives 0^g = 0); clips are single ``ClipByValue``
    passes; noise is :func:`batch_noise`."""
    b = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([b, 9], seed=seeds[0], dtype=tf.float32)
    per = lambda v: tf.reshape(v, [-1, 1, 1, 1])  # noqa: E731
    p = cfg.p_intensity
    x = images
    if cfg.blur_prob > 0 and cfg.blur_sigma > 0:
        a = u[:, 1]
        x = _on_subset(x, u[:, 0] < cfg.blur_prob,
                       lambda s, i: s + per(tf.gather(a, i)) * (blur(s, cfg.blur_sigma) - s))
    lo, hi = cfg.contrast
    if (lo, hi) != (1.0, 1.0) or cfg.brightness > 0:
        c = 1.0 + tf.cast(u[:, 4] < p, tf.float32) * (lo + (hi - lo) * u[:, 5] - 1.0)
        d = tf.cast(u[:, 2] < p, tf.float32) * (2.0 * u[:, 3] - 1.0) * cfg.brightness
        mean = tf.reduce_mean(x, axis=[1, 2, 3])
        x = _clip01(x * per(c) + per((1.0 - c) * mean + d))  # c = 1, d = 0: unchanged
    lo, hi = cfg.gamma
    if (lo, hi) != (1.0, 1.0):
        # log-uniform exponent: symmetric around 1 in ratio; stays in [0, 1]
        g = tf.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[:, 6])
        x = _on_subset(x, u[:, 7] < p, lambda s, i: tf.exp(tf.math.log(s) * per(tf.gather(g, i))))
    if cfg.noise_std > 0:
        std = u[:, 8] / max(p, 1e-6) * cfg.noise_std  # u < p  ->  std uniform in [0, noise_std)
        x = _on_subset(x, u[:, 8] < p, lambda s, i: _clip01(
            s + batch_noise(tf.shape(s), seeds[1], tf.gather(std, i))))
    return x  # every op above keeps [0, 1] (blur is a convex blend of values in [0, 1])


def _pillow_warp(images: np.ndarray, masks: np.ndarray, transforms: np.ndarray, moved: np.ndarray):
    """numpy/Pillow form of :func:`warp` for the selected samples: bilinear for ``images``
    (B, H, W, C) float32, nearest for ``masks`` (B, H, W) uint8; the others are copied.

    Same map and zero fill as ``ImageProjectiveTransformV3`` (``warp``): Pillow samples output
    pixel (x, y) at ``A (x + 1/2, y + 1/2) + c`` in continuous coordinates (pixel index + 1/2),
    so ``c = t + 1/2 - A (1/2, 1/2)`` gives TF's index map ``A (x, y) + t``. The image gets a
    one-pixel zero border first: Pillow's bilinear clamps neighbours at the edge and returns 0
    outside, TF's reads zeros outside; on the padded image both give the same values (to float
    rounding, < 3e-5). Pillow's nearest rounds halves up where TF rounds them away from zero:
    the masks differ only where a coordinate falls on a half pixel to float precision
    (~1e-5 of the pixels). Pillow's affine transform is C code that releases the GIL and costs
    less CPU than the TF op (docs/bench_pipeline.md)."""
    b, h, w, c = images.shape
    out_i, out_m = np.empty_like(images), np.empty_like(masks)
    padded = np.zeros((h + 2, w + 2), np.float32)  # one buffer, its border stays zero
    affine, bilinear, nearest = Image.Transform.AFFINE, Image.Resampling.BILINEAR, Image.Resampling.NEAREST
    for k in range(b):  # sample by sample: the copies stay in the cache
        if not moved[k]:
            out_i[k], out_m[k] = images[k], masks[k]
            continue
        a0, a1, a2, b0, b1, b2 = (float(v) for v in transforms[k, :6])
        cx, cy = a2 + 0.5 - 0.5 * (a0 + a1), b2 + 0.5 - 0.5 * (b0 + b1)
        for ch in range(c):
            padded[1:-1, 1:-1] = images[k, :, :, ch]
            out_i[k, :, :, ch] = Image.fromarray(padded).transform(
                (w, h), affine, (a0, a1, cx + 1.0, b0, b1, cy + 1.0), resample=bilinear)
        out_m[k] = Image.fromarray(masks[k]).transform((w, h), affine, (a0, a1, cx, b0, b1, cy), resample=nearest)
    return out_i, out_m


WARP_IMPLS = ("pillow", "tf")


def augment_batch(images: tf.Tensor, masks: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig,
                  warp_impl: str = "pillow") -> tuple[tf.Tensor, tf.Tensor]:
    """Augment a batch: images float32 (B, H, W, 1) in [0, 1], masks integer (B, H, W) or
    one-hot float (B, H, W, K). Same geometric transform for both; intensity on images only.
    ``seed``: int tensor of shape (2,); the same seed gives the same output.

    warp_impl: "pillow" (default) warps label masks and their images with Pillow inside a
        ``tf.numpy_function`` (:func:`_pillow_warp`: same map, same zero fill, less CPU than
        the TF op; needs Python, so not for graphs that must run without it, e.g. a tf.data
        service); "tf" uses ``ImageProjectiveTransformV3`` (:func:`warp`). One-hot
        masks always take the "tf" path.
    """
    if warp_impl not in WARP_IMPLS:
        raise ValueError(f"warp_impl: expected one of {WARP_IMPLS}, got {warp_impl!r}")
    seed = tf.cast(seed, tf.int64)
    geo_seed, int_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    t = affine_transforms(shape[0], images.shape[1] or shape[1], images.shape[2] or shape[2], geo_seed, cfg)
    t = tf.cast(t, tf.float32)
    # warp only the samples that drew a transform (the warp is the pipeline's main CPU cost)
    moved = tf.reduce_any(tf.abs(t - _IDENTITY) > 1e-6, axis=1)
    if warp_impl == "pillow" and not masks.dtype.is_floating:
        out_images, m = tf.numpy_function(_pillow_warp, [images, tf.cast(masks, tf.uint8), t, moved],
                                          [tf.float32, tf.uint8], stateful=False)
        out_images = tf.ensure_shape(out_images, images.shape)
        out_masks = tf.cast(tf.ensure_shape(m, masks.shape), masks.dtype)
        return intensity(out_images, int_seed, cfg), out_masks
    out_images = _on_subset(images, moved, lambda s, i: warp(s, tf.gather(t, i), "BILINEAR"))
    if masks.dtype.is_floating:  # one-hot: warp every channel with nearest neighbour
        def warp_onehot(s, i):
            w = warp(s, tf.gather(t, i), "NEAREST")
            outside = tf.cast(tf.reduce_sum(w, axis=-1, keepdims=True) < 0.5, s.dtype)  # background
            return w + outside * tf.one_hot(0, tf.shape(s)[-1], dtype=s.dtype)

        out_masks = _on_subset(masks, moved, warp_onehot)
    else:  # labels: nearest on uint8 (a third cheaper than on float32)
        m = _on_subset(tf.cast(masks[..., None], tf.uint8), moved, lambda s, i: warp(s, tf.gather(t, i), "NEAREST"))
        out_masks = tf.cast(m[..., 0], masks.dtype)
    return intensity(out_images, int_seed, cfg), out_masks


def augment_pair(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig,
                 warp_impl: str = "pillow") -> tuple[tf.Tensor, tf.Tensor]:
    """Augment one (H, W, 1) image and its (H, W) mask (per-element form of augment_batch)."""
    im, m = augment_batch(image[None], mask[None], seed, cfg, warp_impl)
    return im[0], m[0]
