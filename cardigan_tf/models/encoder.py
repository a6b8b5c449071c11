"""Style encoder (VAE) for multimodal SPADE synthesis, reparameterisation and KL.

Reference: Park et al. 2019 (SPADE), Sec. 3.3 / Fig. 14: image -> (mu, logvar) of a
Gaussian over the style code z, trained with KL weight 0.05.  Our own code.

Unlike the keras.io GauGAN example, :class:`Reparameterize` is a layer meant to be called
*inside* the generator's GradientTape (so that the encoder receives gradients), draws its
noise from its own ``keras.random.SeedGenerator`` (works inside compiled steps) and
:func:`kl_divergence` averages over the batch instead of summing.

Example::

    enc = build_encoder(EncoderConfig(size=64, nef=16))
    mu, logvar = enc(image, training=True)         # image (B,64,64,1) in [-1,1]
    z = Reparameterize(seed=1)([mu, logvar])       # (B, z_dim)
    loss_kl = 0.05 * kl_divergence(mu, logvar)
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from cardigan_tf.models.spade import sn_conv, xavier


@dataclasses.dataclass
class EncoderConfig:
    """Encoder hyper-parameters.

    Stride-2 3x3 convs (channels nef, 2nef, 4nef, 8nef, 8nef, ...) with instance norm and
    LeakyReLU(0.2) halve the image until its side is <= 4 or odd (64 -> 4x4 with 4 convs,
    256 -> 4x4 with 6 convs as NVIDIA's ConvEncoder at 256), then flatten and two Dense
    layers give mu and logvar (B, z_dim).  init_gain: xavier-normal gain (NVIDIA: 0.02).
    """

    size: int = 256
    nef: int = 64
    z_dim: int = 256
    spectral: bool = True
    in_channels: int = 1
    init_gain: float = 0.02

    def validate(self) -> None:
        for name in ("size", "nef", "z_dim", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.size < 8:
            raise ValueError(f"size: expected >= 8, got {self.size}")

    @property
    def n_down(self) -> int:
        n, side = 0, self.size
        while side > 4 and side % 2 == 0:
            side //= 2
            n += 1
        return n


def build_encoder(cfg: EncoderConfig | None = None, name: str = "encoder") -> keras.Model:
    """Functional style encoder: image (B, size, size, 1) in [-1, 1] -> [mu, logvar],
    each (B, z_dim) float32."""
    cfg = cfg or EncoderConfig()
    cfg.validate()
    image = keras.Input((cfg.size, cfg.size, cfg.in_channels), name="image")
    x = image
    for i in range(cfg.n_down):
        filters = cfg.nef * 2 ** min(i, 3)
        x = sn_conv(filters, 3, cfg.spectral, f"conv{i}", use_bias=False, strides=2,
                    init_gain=cfg.init_gain)(x)
        x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5,
                                      name=f"norm{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"lrelu{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    init = xavier(cfg.init_gain)
    mu = layers.Dense(cfg.z_dim, kernel_initializer=init, dtype="float32", name="mu")(x)
    logvar = layers.Dense(cfg.z_dim, kernel_initializer=init, dtype="float32", name="logvar")(x)
    return keras.Model(image, [mu, logvar], name=name)


@keras.saving.register_keras_serializable(package="cardigan_tf")
class Reparameterize(layers.Layer):
    """z = mu + exp(0.5 * logvar) * eps, eps ~ N(0, 1) (Kingma & Welling 2014).

    Args:
        seed: seed of the layer's own ``keras.random.SeedGenerator`` (each call draws new
            noise; the generator state is a variable, so this works in compiled steps and is
            saved with the model). Under a tf.distribute strategy every replica draws the
            same eps unless the caller folds the replica id into the inputs' noise.

    Call: ``call([mu, logvar])`` with two (B, z_dim) tensors -> z (B, z_dim) float32.
    Always samples (also at inference): pass ``mu`` directly for the mean style.
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="reparam_seed")

    def call(self, inputs):
        mu, logvar = inputs
        mu = ops.cast(mu, "float32")
        logvar = ops.cast(logvar, "float32")
        eps = keras.random.normal(ops.shape(mu), dtype="float32", seed=self.seed_generator)
        return mu + ops.exp(0.5 * logvar) * eps

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)): sum over z dims, mean over the batch (float32).

    ``-0.5 * mean_b sum_d (1 + logvar - mu**2 - exp(logvar))``; 0 for mu = logvar = 0.
    Under a strategy this is the per-replica mean: scale by 1 / num_replicas when summing
    gradients across replicas.
    """
    mu = ops.cast(mu, "float32")
    logvar = ops.cast(logvar, "float32")
    per_sample = ops.sum(1.0 + logvar - ops.square(mu) - ops.exp(logvar), axis=-1)
    return -0.5 * ops.mean(per_sample)
