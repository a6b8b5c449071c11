"""A small mask variational autoencoder: new label masks decoded from N(0, I).

cardiGAN took its synthetic masks from an *anatomically constrained* autoencoder (Painchaud
et al., "Cardiac segmentation with strong anatomical guarantees", MICCAI 2019 / TMI 2020),
whose latent space is warped so that every decoded mask is anatomically valid. Ours is a plain
VAE (Kingma & Welling, 2014) on one-hot masks; its decoded samples are *filtered* by a validity
check the caller passes in (usually :func:`cardigan_tf.data.masks.validity_check`: clean, then
the anatomical rules), and the rejects are counted (:func:`sample_valid_masks`). Garbage samples are therefore never used; the price is a
rejection rate.

Architecture (``filters = (f1, ..., fn)``): encoder ``n`` x [3x3 conv stride 2 + ReLU] ->
flatten -> dense ``mu`` and ``log_var`` (``latent_dim`` each); decoder dense -> reshape to
``size / 2**n`` -> ``n`` x [nearest 2x upsampling + 3x3 conv + ReLU] -> 1x1 conv -> softmax over
the 4 labels. Loss per pixel: categorical cross-entropy + ``kl_weight`` x KL(q(z|x) || N(0, I))
/ (H * W), so ``kl_weight = 1`` is the evidence lower bound divided by the pixel count.
Layers use ``keras.ops`` only; the KL term is added with ``add_loss`` (no custom train step),
so the model trains with ``fit`` on any Keras backend.

Example::

    cfg = MaskAEConfig(size=64, latent_dim=32, filters=(16, 32, 64))
    vae = train_mask_vae(train_masks, cfg, epochs=30, seed=0)      # (N, 64, 64) uint8
    new = sample_masks(vae, 16, seed=1)                             # (16, 64, 64) uint8
    valid, stats = sample_valid_masks(vae, 16, seed=1)               # filtered, rejects counted
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

import keras
import numpy as np
from keras import layers, ops

from cardigan_tf.labels import NUM_CLASSES


@dataclasses.dataclass
class MaskAEConfig:
    """Mask VAE hyper-parameters.

    Args:
        size: mask size (square); divisible by ``2 ** len(filters)``.
        latent_dim: dimension of z.
        filters: encoder filters per stride-2 level (the decoder mirrors them).
        kl_weight: weight of the KL term (1 = ELBO per pixel; smaller = sharper, less regular).
        learning_rate: Adam learning rate.
        batch_size: training batch size.
    """

    size: int = 64
    latent_dim: int = 32
    filters: tuple[int, ...] = (16, 32, 64)
    kl_weight: float = 1.0
    learning_rate: float = 2e-3
    batch_size: int = 16

    def validate(self) -> None:
        if not self.filters:
            raise ValueError("MaskAEConfig.filters: expected at least one level")
        if self.size % (2 ** len(self.filters)):
            raise ValueError(f"MaskAEConfig.size: {self.size} is not divisible by 2**{len(self.filters)}")
        if self.latent_dim < 1 or self.kl_weight < 0:
            raise ValueError("MaskAEConfig: latent_dim must be >= 1 and kl_weight >= 0")

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        self.validate()


@keras.saving.register_keras_serializable(package="cardigan_tf")
class GaussianSample(layers.Layer):
    """Reparameterised Gaussian sample (Kingma & Welling, 2014).

    Args:
        seed: seed of the layer's ``keras.random.SeedGenerator``.

    Call: ``[mu, log_var]`` each (B, D) -> z (B, D) = mu + exp(log_var / 2) * eps when
    training, else mu.

    Example::

        z = GaussianSample(seed=0)([mu, log_var], training=True)
    """

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mu, log_var = inputs
        if not training:
            return mu
        eps = keras.random.normal(ops.shape(mu), seed=self.seed_generator, dtype=mu.dtype)
        return mu + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_mask_encoder(cfg: MaskAEConfig) -> keras.Model:
    """One-hot mask (B, S, S, 4) -> [mu (B, D), log_var (B, D)]."""
    inp = keras.Input((cfg.size, cfg.size, NUM_CLASSES), name="mask_onehot")
    x = inp
    for i, f in enumerate(cfg.filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"down{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    mu = layers.Dense(cfg.latent_dim, name="mu")(x)
    log_var = layers.Dense(cfg.latent_dim, name="log_var")(x)
    return keras.Model(inp, [mu, log_var], name="mask_encoder")


def build_mask_decoder(cfg: MaskAEConfig) -> keras.Model:
    """z (B, D) -> softmax (B, S, S, 4) float32."""
    s0 = cfg.size // 2 ** len(cfg.filters)
    inp = keras.Input((cfg.latent_dim,), name="z")
    x = layers.Dense(s0 * s0 * cfg.filters[-1], activation="relu", name="project")(inp)
    x = layers.Reshape((s0, s0, cfg.filters[-1]), name="reshape")(x)
    for i, f in enumerate(reversed(cfg.filters)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = layers.Conv2D(NUM_CLASSES, 1, name="logits")(x)
    out = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inp, out, name="mask_decoder")


@keras.saving.register_keras_serializable(package="cardigan_tf")
class MaskVAE(keras.Model):
    """Mask VAE: one-hot (B, S, S, 4) -> reconstructed softmax (B, S, S, 4); KL via add_loss.

    Attributes ``encoder`` and ``decoder`` are functional sub-models; ``decoder`` maps
    z ~ N(0, I) (B, latent_dim) to new masks. Build with :func:`build_mask_vae`.
    """

    def __init__(self, config: dict | None = None, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.cfg = MaskAEConfig(**(config or {}))
        self.seed = seed
        self.encoder = build_mask_encoder(self.cfg)
        self.decoder = build_mask_decoder(self.cfg)
        self.sampler = GaussianSample(seed=seed, name="sample_z")

    def build(self, input_shape=None):
        # encoder and decoder are functional models, built at construction; the sampler has
        # no weights.
        self.built = True

    def call(self, x, training=None):
        mu, log_var = self.encoder(x, training=training)
        z = self.sampler([mu, log_var], training=training)
        kl = -0.5 * ops.mean(ops.sum(1.0 + log_var - ops.square(mu) - ops.exp(log_var), axis=-1))
        self.add_loss(self.cfg.kl_weight * kl / float(self.cfg.size * self.cfg.size))
        return self.decoder(z, training=training)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.cfg), "seed": self.seed}


def build_mask_vae(cfg: MaskAEConfig | None = None, seed: int = 0) -> MaskVAE:
    """Build (and compile) a :class:`MaskVAE`; returns the model (``.encoder``, ``.decoder``)."""
    cfg = cfg or MaskAEConfig()
    model = MaskVAE(dataclasses.asdict(cfg), seed=seed, name="mask_vae")
    model.build((None, cfg.size, cfg.size, NUM_CLASSES))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy())
    return model


def to_onehot(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) labels -> (N, H, W, 4) float32 one-hot."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(masks, dtype=np.int64)]


def _check_masks(masks, cfg: MaskAEConfig) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3 or masks.shape[1:] != (cfg.size, cfg.size):
        raise ValueError(f"masks: expected shape (N, {cfg.size}, {cfg.size}) (MaskAEConfig.size), "
                         f"got {masks.shape}; resize them with nearest neighbour first")
    if masks.size and (masks.min() < 0 or masks.max() >= NUM_CLASSES):
        raise ValueError(f"masks: labels must be in 0..{NUM_CLASSES - 1}, got [{masks.min()}, {masks.max()}]")
    return masks


def train_mask_vae(masks: np.ndarray, cfg: MaskAEConfig | None = None, epochs: int = 30, seed: int = 0,
                   verbose: int = 0, callbacks=None) -> MaskVAE:
    """Train a mask VAE on training masks (N, S, S) uint8; returns the trained model.

    Seeds Python, NumPy and the backend with ``seed`` (``keras.utils.set_random_seed``).
    """
    cfg = cfg or MaskAEConfig()
    masks = _check_masks(masks, cfg)
    if len(masks) == 0:
        raise ValueError("masks: no training masks given")
    keras.utils.set_random_seed(seed)
    model = build_mask_vae(cfg, seed=seed)
    x = to_onehot(masks)
    model.fit(x, x, batch_size=min(cfg.batch_size, len(x)), epochs=epochs, shuffle=True,
              verbose=verbose, callbacks=callbacks)
    return model


def reconstruct_masks(model: MaskVAE, masks: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Encode (posterior mean) and decode label masks; (N, S, S) uint8."""
    masks = _check_masks(masks, model.cfg)
    probs = model.predict(to_onehot(masks), batch_size=batch_size, verbose=0)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def sample_masks(model: MaskVAE, n: int, seed: int = 0, temperature: float = 1.0,
                 batch_size: int = 64) -> np.ndarray:
    """Decode ``n`` draws z ~ N(0, temperature^2 I); (n, S, S) uint8 (argmax of the softmax)."""
    z = np.random.default_rng(seed).normal(0.0, temperature, size=(n, model.cfg.latent_dim)).astype(np.float32)
    probs = model.decoder.predict(z, batch_size=batch_size, verbose=0)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def sample_valid_masks(model: MaskVAE, n: int, check: Callable[[np.ndarray], tuple[np.ndarray, list[str]]],
                       seed: int = 0, temperature: float = 1.0, max_draws: int | None = None,
                       batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """Draw masks until ``n`` pass ``check``.

    ``check(mask) -> (mask, failed_rules)``: the caller's validity test (it may clean the mask
    first, and returns the mask to keep and the names of the rules it fails; empty = valid).
    The network knows no anatomy rules: the data layer's
    :func:`cardigan_tf.data.masks.validity_check` is the usual choice.

    Returns ``(masks (k, S, S) uint8, stats)`` with ``k <= n`` (fewer only when ``max_draws``,
    default ``20 * n``, ran out) and ``stats = {"drawn", "accepted", "rejected", "by_rule"}``
    (``by_rule`` counts the failed rules of the rejected draws).
    """
    max_draws = 20 * n if max_draws is None else max_draws
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    by_rule: Counter = Counter()
    drawn = 0
    rejected = 0
    while len(kept) < n and drawn < max_draws:
        k = min(batch_size, max_draws - drawn)
        for m in sample_masks(model, k, seed=int(rng.integers(2**31)), temperature=temperature, batch_size=batch_size):
            if len(kept) == n:
                break
            drawn += 1
            m, failed = check(m)
            if failed:
                rejected += 1
                by_rule.update(set(failed))
            else:
                kept.append(m)
    size = model.cfg.size
    out = np.stack(kept) if kept else np.zeros((0, size, size), np.uint8)
    return out, {"drawn": drawn, "accepted": len(kept), "rejected": rejected, "by_rule": dict(by_rule)}
