"""Quality of generated images: FID, KID and segmentation consistency.

FID (Heusel et al., 2017) is the Frechet distance between Gaussians fitted to the features of
real and generated images; KID (Binkowski et al., 2018) is the unbiased squared MMD with the
cubic polynomial kernel ``k(x, y) = (x . y / D + 1) ** 3``, averaged over random subsets.
Both depend entirely on the feature network, so the report must name it:

- :func:`inception_features` -- InceptionV3 pool features (2048-D), the usual FID network,
  only when the user gives its weights file (nothing is downloaded);
- :func:`encoder_features` -- the global-average-pooled bottleneck of a U-Net trained on real
  echocardiograms (the default: domain-specific, no external weights). Numbers from it are not
  comparable with published Inception FIDs.

Segmentation consistency (SPADE's protocol): a segmenter trained on real images segments the
generated images, and its output is scored (Dice) against the masks the images were generated
from.

Example::

    feats = encoder_features(unet)                   # or inception_features("inception.h5")
    f = fid(feats(real_images), feats(fake_images))
    k = kid(feats(real_images), feats(fake_images))  # {"mean", "std"}
    dice = segmentation_consistency(unet, fake_images, input_masks)  # {"lv_endo": ..., ...}
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import linalg

from cardigan_tf.labels import STRUCTURES

FeatureFn = Callable[[np.ndarray], np.ndarray]


def _stats(feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feat = np.asarray(feat, dtype=np.float64)
    if feat.ndim != 2 or feat.shape[0] < 2:
        raise ValueError(f"features: expected (N >= 2, D), got shape {feat.shape}")
    return feat.mean(axis=0), np.atleast_2d(np.cov(feat, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    The matrix square root comes from ``scipy.linalg.sqrtm``; when it is not finite (singular
    product) ``eps`` is added to both diagonals; small imaginary parts from round-off are
    dropped (a large one raises ValueError).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise ValueError(f"frechet_distance: sqrtm has a large imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid(feat_real: np.ndarray, feat_fake: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets (N, D) and (M, D)."""
    return frechet_distance(*_stats(feat_real), *_stats(feat_fake))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(feat_real: np.ndarray, feat_fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict:
    """Kernel inception distance: unbiased MMD^2, cubic polynomial kernel, over random subsets.

    ``subset_size`` is capped at the size of the smaller set. Returns ``{"mean", "std",
    "subsets", "subset_size"}``.
    """
    x = np.asarray(feat_real, dtype=np.float64)
    y = np.asarray(feat_fake, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: expected features (N, D) and (M, D), got {x.shape} and {y.shape}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"kid: need at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array([_poly_mmd2(x[rng.choice(len(x), size, replace=False)],
                                  y[rng.choice(len(y), size, replace=False)]) for _ in range(subsets)])
    return {"mean": float(values.mean()), "std": float(values.std()), "subsets": subsets, "subset_size": size}


def _batched(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = [np.asarray(fn(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


def _check_images(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images: expected (N, H, W, 1) in [0, 1], got shape {images.shape}")
    return images


def inception_features(weights_path: str | Path, batch_size: int = 32) -> FeatureFn:
    """InceptionV3 pool features (N, 2048) from a user-given weights file (no download).

    ``weights_path``: Keras InceptionV3 weights without the top (e.g.
    ``inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5``). Gray [0, 1] images are
    repeated to 3 channels, resized bilinearly to 299x299 and mapped to [-1, 1].
    Raises FileNotFoundError naming the path when the file is missing.
    """
    path = Path(weights_path) if weights_path else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{weights_path}: InceptionV3 weights file not found (field: inception weights). "
            "FID/KID with InceptionV3 need a local Keras weights file (include_top=False); "
            "nothing is downloaded. Leave it unset to use the U-Net encoder features instead.")
    import keras

    net = keras.applications.InceptionV3(weights=str(path), include_top=False, pooling="avg",
                                         input_shape=(299, 299, 3))

    def features(images: np.ndarray) -> np.ndarray:
        x = _check_images(images)

        def run(batch):
            b = keras.ops.image.resize(keras.ops.repeat(batch, 3, axis=-1), (299, 299), interpolation="bilinear")
            return net(b * 2.0 - 1.0, training=False)

        return _batched(run, x, batch_size).astype(np.float64)

    features.name = f"InceptionV3 pool (2048-D, weights {path.name})"
    return features


def _spatial(shape) -> int | None:
    if shape is None or len(shape) != 4 or shape[1] is None:
        return None
    return int(shape[1])


def bottleneck_layer(model):
    """The deepest encoder layer of a functional U-Net: among the layers before the spatial
    size first increases, the last one at the smallest spatial size."""
    best, best_size = None, None
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer.output, (list, tuple)):
            continue
        size = _spatial(shape)
        if size is None:
            continue
        if best_size is not None and size > best_size:
            break  # first upsampling: the decoder starts here
        if best_size is None or size <= best_size:
            best, best_size = layer, size
    if best is None:
        raise ValueError(f"{model.name}: no 4-D layer output found; expected a functional U-Net")
    return best


def encoder_features(unet_model, batch_size: int = 32) -> FeatureFn:
    """Global-average-pooled bottleneck activations of a trained U-Net, (N, C).

    The bottleneck is found by :func:`bottleneck_layer`; the returned function takes images
    (N, H, W, 1) in [0, 1] at the U-Net's input size. ``features.name`` names the layer.
    """
    import keras

    layer = bottleneck_layer(unet_model)
    inputs = unet_model.inputs[0] if len(unet_model.inputs) == 1 else unet_model.inputs
    sub = keras.Model(inputs, layer.output, name=f"{unet_model.name}_encoder")

    def features(images: np.ndarray) -> np.ndarray:
        x = _check_images(images)
        act = _batched(lambda b: sub(b, training=False), x, batch_size)
        return act.mean(axis=(1, 2)).astype(np.float64)

    features.name = f"U-Net encoder '{layer.name}' ({tuple(layer.output.shape[1:])}, global average pooled)"
    return features


def _dice_np(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def segmentation_consistency(segmenter, images: np.ndarray, masks: np.ndarray, batch_size: int = 16,
                             per_image: bool = False) -> dict:
    """Dice per structure (``labels.STRUCTURES``) between ``segmenter(images)`` and ``masks``.

    ``segmenter``: a Keras model or callable mapping (B, H, W, 1) in [0, 1] to softmax
    (B, H, W, 4) (a list of outputs: the first is used). Returns the mean Dice per structure
    (NaN-ignoring: a structure absent from both masks gives NaN for that image) or, with
    ``per_image=True``, arrays of per-image Dice.
    """
    x = _check_images(images)
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != x.shape[:3]:
        raise ValueError(f"masks: expected shape {x.shape[:3]} to match the images, got {masks.shape}")

    def run(batch):
        out = segmenter(batch, training=False) if hasattr(segmenter, "layers") else segmenter(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.argmax(np.asarray(out), axis=-1)

    pred = _batched(run, x, batch_size)
    result = {}
    for name, labels in STRUCTURES.items():
        values = np.array([_dice_np(np.isin(p, labels), np.isin(m, labels)) for p, m in zip(pred, masks)])
        if per_image:
            result[name] = values
        else:
            result[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return result
