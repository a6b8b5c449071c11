"""A compact Keras GauGAN, after the keras.io example's architecture, for the GAN benchmark.

``python -m cardigan_tf.bench gan --compare`` runs it in a subprocess; run alone with::

    python experiments/peers/keras_gaugan.py --size 256 --ngf 48 --ndf 48 --batch 4 --steps 3

It counts parameters and FLOPs with :mod:`cardigan_tf.bench.gan`'s helpers: the package is
imported from this checkout when it is not installed.

Our own code, from the published description of the keras.io "GauGAN for conditional image
generation" example (Rakshit & Paul, 2021), with its widths scaled to ngf / ndf (the example
uses 64: 1024 = 16 x 64):

- encoder: six conv3x3 stride-2 layers (ngf, 2, 4, 8, 8, 8 x ngf) with instance norm and
  LeakyReLU, flatten, Dense(z) for mean and log-variance; z = mean + eps * exp(logvar / 2).
- generator: Dense(z -> (size/64)^2 x 16ngf), reshape; residual SPADE blocks of 16, 16, 16,
  8, 4, 2 x ngf at size/64 .. size/2, each followed by nearest x2 upsampling (no block at
  full resolution), LeakyReLU, conv4x4(1), tanh. Block: SPADE -> LeakyReLU -> conv3x3
  twice, learned skip SPADE -> LeakyReLU -> conv3x3 when the width changes; no spectral
  norm. SPADE: batch moments (no running statistics), conv3x3(128)+ReLU on the mask,
  conv3x3 gamma and beta.
- discriminator: ONE PatchGAN scale on concat(mask, image): conv4x4 stride 2 (ndf, no norm),
  2ndf, 4ndf (stride 2) and 8ndf (stride 1) with instance norm, LeakyReLU(0.2) (no bias),
  conv4x4 -> 1 logit map ("valid" padding as the example).
- step (as the example): encoder forward, then the D update (G forward without tape, D on
  fake and on real, hinge), then the G update (D on real, G + D on fake, hinge + 10 x feature
  matching + 0.1 x KL; the example's VGG term is left out, as in the cardigan preset).
  Adam(0, 0.999), lr 1e-4 (G) / 4e-4 (D).

Prints one JSON line: {"impl": "keras_gaugan", "step_s": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import cardigan_tf  # noqa: F401
except ImportError:  # not installed: the package of this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _build(size, ngf, ndf, z_dim=256, label_nc=4):
    import keras
    import tensorflow as tf
    from keras import layers

    init = keras.initializers.RandomNormal(0.0, 0.02)

    class Spade(layers.Layer):
        def __init__(self, channels, **kw):
            super().__init__(**kw)
            self.shared = layers.Conv2D(128, 3, padding="same", activation="relu")
            self.gamma = layers.Conv2D(channels, 3, padding="same")
            self.beta = layers.Conv2D(channels, 3, padding="same")

        def call(self, x, mask):
            mean, var = tf.nn.moments(x, axes=(0, 1, 2), keepdims=True)
            x = (x - mean) / tf.sqrt(var + 1e-5)
            mask = tf.image.resize(mask, tf.shape(x)[1:3], method="nearest")
            a = self.shared(mask)
            return x * (1 + self.gamma(a)) + self.beta(a)

    class ResBlock(layers.Layer):
        def __init__(self, fin, fout, **kw):
            super().__init__(**kw)
            self.s1, self.s2 = Spade(fin), Spade(fout)
            self.c1 = layers.Conv2D(fout, 3, padding="same")
            self.c2 = layers.Conv2D(fout, 3, padding="same")
            self.learned = fin != fout
            if self.learned:
                self.s3 = Spade(fin)
                self.c3 = layers.Conv2D(fout, 3, padding="same")

        def call(self, x, mask):
            y = self.c1(tf.nn.leaky_relu(self.s1(x, mask), 0.2))
            y = self.c2(tf.nn.leaky_relu(self.s2(y, mask), 0.2))
            skip = self.c3(tf.nn.leaky_relu(self.s3(x, mask), 0.2)) if self.learned else x
            return skip + y

    def down(x, f, norm=True, strides=2, k=4):
        x = layers.Conv2D(f, k, strides=strides, padding="same", use_bias=False,
                          kernel_initializer=init)(x)
        if norm:
            x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5)(x)
        return layers.LeakyReLU(0.2)(x)

    image = keras.Input((size, size, 1))
    x = image
    for f in (1, 2, 4, 8, 8, 8):
        x = down(x, f * ngf, k=3)
    x = layers.Flatten()(x)
    encoder = keras.Model(image, [layers.Dense(z_dim)(x), layers.Dense(z_dim)(x)])

    z = keras.Input((z_dim,))
    mask = keras.Input((size, size, label_nc))
    s = size // 64
    x = layers.Reshape((s, s, 16 * ngf))(layers.Dense(s * s * 16 * ngf)(z))
    widths = [16 * ngf, 16 * ngf, 16 * ngf, 16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf]
    for fin, fout in zip(widths, widths[1:]):
        x = layers.UpSampling2D(2)(ResBlock(fin, fout)(x, mask))
    x = layers.Conv2D(1, 4, padding="same")(layers.LeakyReLU(0.2)(x))
    generator = keras.Model([z, mask], layers.Activation("tanh")(x))

    d_mask = keras.Input((size, size, label_nc))
    d_img = keras.Input((size, size, 1))
    x = layers.Concatenate()([d_mask, d_img])
    x1 = down(x, ndf, norm=False)
    x2 = down(x1, 2 * ndf)
    x3 = down(x2, 4 * ndf)
    x4 = down(x3, 8 * ndf, strides=1)
    x5 = layers.Conv2D(1, 4)(x4)
    discriminator = keras.Model([d_mask, d_img], [x1, x2, x3, x4, x5])
    return encoder, generator, discriminator


def run_bench(size=256, ngf=48, ndf=48, batch=4, steps=3, warmup=1, z_dim=256, seed=0) -> dict:
    """Time ``steps`` keras.io-GauGAN-style train steps (after ``warmup``); returns a dict."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    enc, gen, disc = _build(size, ngf, ndf, z_dim)
    opt_g = keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999)
    opt_d = keras.optimizers.Adam(4e-4, beta_1=0.0, beta_2=0.999)
    opt_g.build(gen.trainable_variables)
    opt_d.build(disc.trainable_variables)
    rng = np.random.default_rng(seed)
    mask = tf.one_hot(rng.integers(0, 4, (batch, size, size)), 4)
    real = tf.constant(rng.uniform(-1, 1, (batch, size, size, 1)).astype("float32"))

    def hinge_d(pred, sign):
        return tf.reduce_mean(tf.nn.relu(1.0 - sign * pred))

    @tf.function
    def step():
        mean, logvar = enc(real)
        zz = mean + tf.random.normal(tf.shape(mean)) * tf.exp(0.5 * logvar)
        fake = gen([zz, mask])
        with tf.GradientTape() as tape:
            pf = disc([mask, fake])[-1]
            pr = disc([mask, real])[-1]
            d_loss = 0.5 * (hinge_d(pf, -1.0) + hinge_d(pr, 1.0))
        opt_d.apply(tape.gradient(d_loss, disc.trainable_variables), disc.trainable_variables)
        with tf.GradientTape() as tape:
            real_out = disc([mask, real])
            fake_out = disc([mask, gen([zz, mask])])
            g_loss = -tf.reduce_mean(fake_out[-1])
            kl = -0.5 * tf.reduce_sum(1 + logvar - tf.square(mean) - tf.exp(logvar))
            feat = sum(tf.reduce_mean(tf.abs(r - f)) for r, f in zip(real_out[:-1], fake_out[:-1]))
            total = g_loss + 0.1 * kl + 10.0 * feat
        opt_g.apply(tape.gradient(total, gen.trainable_variables), gen.trainable_variables)
        return d_loss, total

    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        float(step()[1])
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step()
    float(out[1])
    dt = (time.perf_counter() - t0) / steps

    from cardigan_tf.bench.gan import count_params, forward_flops

    g_flops = forward_flops(gen, [(batch, z_dim), (batch, size, size, 4)])
    d_flops = forward_flops(disc, [(batch, size, size, 4), (batch, size, size, 1)])
    e_flops = forward_flops(enc, [(batch, size, size, 1)])
    # one step: G forward (D update) + G forward and backward (G update) = 4 G; D update on fake
    # and real (2 x forward + backward) + G update's D on real (forward) and fake (forward +
    # backward) = 10 D; encoder forward = 1 E (backward = 2x forward, as bench.gan estimates)
    return {"impl": "keras_gaugan", "size": size, "ngf": ngf, "ndf": ndf, "batch": batch,
            "num_D": 1, "warmup_s": warm, "step_s": dt, "steps": steps,
            "params_G": count_params(gen), "params_D": count_params(disc), "params_E": count_params(enc),
            "gflops_G_fwd": g_flops / 1e9, "gflops_D_fwd": d_flops / 1e9,
            "gflops_step_est": (4 * g_flops + 10 * d_flops + e_flops) / 1e9}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/peers/keras_gaugan.py")
    for name, default in (("size", 256), ("ngf", 48), ("ndf", 48), ("batch", 4), ("steps", 3),
                          ("warmup", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args(argv)
    print(json.dumps(run_bench(a.size, a.ngf, a.ndf, a.batch, a.steps, a.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
