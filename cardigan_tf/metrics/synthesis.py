"""Quality of generated images: FID, KID and segmentation consistency.

FID (Heusel et al., 2017) is the Frechet distance between Gaussians fitted to the features of
real and generated images; KID (Binkowski et al., 2018) is the unbiased squared MMD with the
cubic polynomial kernel ``k(x, y) = (x . y / D + 1) ** 3``, averaged over random subsets.
Both depend entirely on the feature network, so the report must name it; the networks are
built in :mod:`cardigan_tf.models.features` (InceptionV3 from a local weights file, or a real-
trained U-Net's encoder). This module takes feature arrays and masks only.

Segmentation consistency (SPADE's protocol): a segmenter trained on real images segments the
generated images, and its predictions are scored (Dice) against the masks the images were
generated from.

Example::

    feats = encoder_features(unet)                   # cardigan_tf.models.features
    f = fid(feats(real_images), feats(fake_images))
    k = kid(feats(real_images), feats(fake_images))  # {"mean", "std"}
    dice = segmentation_consistency(predicted_masks, input_masks)  # {"lv_endo": ..., ...}
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from cardigan_tf.labels import STRUCTURES


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


def _dice_np(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def segmentation_consistency(pred_masks: np.ndarray, masks: np.ndarray, per_image: bool = False) -> dict:
    """Dice per structure (``labels.STRUCTURES``) between a segmenter's predictions on generated
    images (``pred_masks``, label masks (N, H, W)) and the masks the images were generated from.

    Returns the mean Dice per structure (NaN-ignoring: a structure absent from both masks gives
    NaN for that image) or, with ``per_image=True``, arrays of per-image Dice.
    """
    pred = np.asarray(pred_masks)
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if pred.shape != masks.shape:
        raise ValueError(f"masks: expected shape {pred.shape} to match the predicted masks, got {masks.shape}")
    result = {}
    for name, labels in STRUCTURES.items():
        values = np.array([_dice_np(np.isin(p, labels), np.isin(m, labels)) for p, m in zip(pred, masks)])
        if per_image:
            result[name] = values
        else:
            result[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return result
