"""Feature networks for FID / KID (:mod:`cardigan_tf.metrics.synthesis` takes their outputs).

- :func:`inception_features` -- InceptionV3 pool features (2048-D), the usual FID network, only
  when the user gives its weights file (nothing is downloaded);
- :func:`encoder_features` -- the global-average-pooled bottleneck of a U-Net trained on real
  echocardiograms (the default: domain-specific, no external weights). Numbers from it are not
  comparable with published Inception FIDs.

Each returns a function ``images (N, H, W, 1) in [0, 1] -> features (N, D) float64`` with a
``name`` attribute that reports cite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np

FeatureFn = Callable[[np.ndarray], np.ndarray]


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
    layer = bottleneck_layer(unet_model)
    inputs = unet_model.inputs[0] if len(unet_model.inputs) == 1 else unet_model.inputs
    sub = keras.Model(inputs, layer.output, name=f"{unet_model.name}_encoder")

    def features(images: np.ndarray) -> np.ndarray:
        x = _check_images(images)
        act = _batched(lambda b: sub(b, training=False), x, batch_size)
        return act.mean(axis=(1, 2)).astype(np.float64)

    features.name = f"U-Net encoder '{layer.name}' ({tuple(layer.output.shape[1:])}, global average pooled)"
    return features
