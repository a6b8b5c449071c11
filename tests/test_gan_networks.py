"""Generator, discriminator, encoder, presets: shapes, save/load, reparameterisation, KL,
gradient flow, and (when JAX is installed) the same networks on the JAX backend."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf.config import ConfigError
from cardigan_tf.configs.gan import PRESETS as GAN_PRESETS
from cardigan_tf.configs.gan import network_configs, preset_config
from cardigan_tf.models.discriminator import AvgPoolExcludePad, DiscriminatorConfig, build_discriminator
from cardigan_tf.models.encoder import EncoderConfig, Reparameterize, build_encoder, kl_divergence
from cardigan_tf.models.generator import GeneratorConfig, build_generator
from cardigan_tf.models.spade import SPADEResBlock

from harness import run_layer_test, run_model_saving_test


REPO = Path(__file__).resolve().parents[1]


def onehot(rng, batch, size, k=4):
    return np.eye(k, dtype="float32")[rng.integers(0, k, (batch, size, size))]


# ----------------------------------------------------------------------------- generator
@pytest.mark.parametrize("size,mode,start", [(64, "normal", 2), (128, "normal", 4),
                                             (128, "more", 2)])
def test_generator_mask_only_shapes(rng, size, mode, start):
    cfg = GeneratorConfig(size=size, ngf=4, hidden=8, num_upsampling_layers=mode)
    assert cfg.start_size == start
    g = build_generator(cfg)
    assert g.name == "generator" and [i.name for i in g.inputs] == ["mask_onehot"]
    y = np.asarray(g(onehot(rng, 2, size), training=True))
    assert y.shape == (2, size, size, 1) and y.dtype == np.float32
    assert np.all(np.abs(y) <= 1.0) and y.std() > 0
    widths = {b.name: b.fout for b in g.layers if isinstance(b, SPADEResBlock)}
    assert widths == {"head_0": 64, "G_middle_0": 64, "G_middle_1": 64, "up_0_block": 32,
                      "up_1_block": 16, "up_2_block": 8, "up_3_block": 4}
    assert g.get_layer("fc").output.shape[1:3] == (start, start)


def test_generator_256_tiny_width(rng):
    g = build_generator(GeneratorConfig(size=256, ngf=2, hidden=4, norm="instance"))
    assert g(onehot(rng, 1, 256)).shape == (1, 256, 256, 1)


@pytest.mark.parametrize("style", ["z", "encoder"])
def test_generator_style_inputs(rng, style):
    g = build_generator(GeneratorConfig(size=64, ngf=4, hidden=8, style=style, z_dim=16))
    assert [tuple(i.shape) for i in g.inputs] == [(None, 64, 64, 4), (None, 16)]
    m = onehot(rng, 2, 64)
    z = rng.normal(size=(2, 16)).astype("float32")
    y1 = np.asarray(g([m, z], training=True))
    y2 = np.asarray(g([m, -z], training=True))
    assert y1.shape == (2, 64, 64, 1)
    assert np.abs(y1 - y2).max() > 1e-3


@pytest.mark.parametrize("kwargs,field", [
    (dict(size=100), "size"), (dict(size=96, num_upsampling_layers="more"), "size"),
    (dict(style="vae"), "style"), (dict(norm="layer"), "norm"),
    (dict(num_upsampling_layers="few"), "num_upsampling_layers"), (dict(ngf=0), "ngf")])
def test_generator_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_generator(GeneratorConfig(**kwargs))


@pytest.mark.parametrize("style", ["mask", "z"])
def test_generator_save_load_identical(rng, tmp_path, style):
    cfg = GeneratorConfig(size=64, ngf=4, hidden=8, style=style, z_dim=8)
    g = build_generator(cfg)
    m = onehot(rng, 2, 64)
    inputs = m if style == "mask" else [m, rng.normal(size=(2, 8)).astype("float32")]
    g(inputs, training=True)  # move BN statistics and spectral-norm vectors off their init
    run_model_saving_test(g, inputs, tmp_path, name="g.keras", predict=True)  # bit-identical predictions


def test_generator_clone_model_pairs_weights(rng):
    """clone_model (used for the EMA copy) rebuilds the same weights in the same order."""
    g = build_generator(GeneratorConfig(size=64, ngf=4, hidden=8, style="z", z_dim=8))
    inputs = [onehot(rng, 2, 64), rng.normal(size=(2, 8)).astype("float32")]
    g(inputs, training=True)
    clone = keras.models.clone_model(g)
    assert [w.shape for w in clone.weights] == [w.shape for w in g.weights]
    clone.set_weights(g.get_weights())
    np.testing.assert_array_equal(clone.predict(inputs, verbose=0), g.predict(inputs, verbose=0))


# ------------------------------------------------------------------------- discriminator
def np_avgpool_exclude_pad(x, k=3, s=2):
    b, h, w, c = x.shape
    p = k // 2
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - p, j * s - p
            win = x[:, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
            out[:, i, j] = win.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_avgpool_exclude_pad_matches_reference(rng, shape):
    x = rng.normal(size=shape).astype("float32")
    layer = AvgPoolExcludePad(3, 2)
    y = np.asarray(layer(x))
    ref = np_avgpool_exclude_pad(x.astype("float64"))
    assert y.shape == ref.shape == tuple(layer.compute_output_shape(shape))
    np.testing.assert_allclose(y, ref, atol=1e-5)
    pool = run_layer_test(AvgPoolExcludePad, dict(pool_size=3, strides=2), x, expected_output_shape=ref.shape,
                          check_compute_output_shape=True, expected_num_trainable_weights=0)
    assert AvgPoolExcludePad.from_config(pool.get_config()).strides == 2


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("num_D,n_layers", [(2, 4), (3, 3)])
def test_discriminator_features_and_shapes(rng, size, num_D, n_layers):
    cfg = DiscriminatorConfig(ndf=8, num_D=num_D, n_layers=n_layers, size=size)
    d = build_discriminator(cfg)
    x = np.concatenate([onehot(rng, 2, size), rng.uniform(-1, 1, (2, size, size, 1))], -1)
    outs = d(x.astype("float32"), training=True)
    assert len(outs) == num_D
    for i, feats in enumerate(outs):
        assert len(feats) == n_layers + 1
        h = -(-size // 2 ** i)
        for n, f in enumerate(feats[:-1]):
            side = -(-h // 2 ** min(n + 1, n_layers - 1))
            assert tuple(f.shape) == (2, side, side, min(8 * 2 ** n, 512)), (i, n)
        side = -(-h // 2 ** (n_layers - 1))
        assert tuple(feats[-1].shape) == (2, side, side, 1)
        assert all(f.dtype == "float32" for f in feats)
    # spectral norm on the middle convs only; instance norm without affine parameters
    names = {type(lyr).__name__ for lyr in d.layers}
    assert {"SpectralNormalization", "GroupNormalization", "AvgPoolExcludePad"} <= names
    assert isinstance(d.get_layer("D0_conv0"), keras.layers.Conv2D)
    assert isinstance(d.get_layer("D0_conv1"), keras.layers.SpectralNormalization)


def test_discriminator_logits_only_any_size_and_channels_cap(rng):
    d = build_discriminator(DiscriminatorConfig(ndf=300, num_D=2, n_layers=3,
                                                get_intermediate_features=False, spectral=False))
    assert tuple(d.inputs[0].shape) == (None, None, None, 5)
    x = rng.normal(size=(1, 32, 32, 5)).astype("float32")
    outs = d(x)
    assert [tuple(o[0].shape) for o in outs] == [(1, 8, 8, 1), (1, 4, 4, 1)]
    assert d.get_layer("D0_conv1").kernel.shape[-1] == 512  # min(2 * 300, 512)


def test_discriminator_save_load_identical(rng, tmp_path):
    d = build_discriminator(DiscriminatorConfig(ndf=8, size=64))
    x = rng.normal(size=(2, 64, 64, 5)).astype("float32")
    d(x, training=True)
    d2 = run_model_saving_test(d, x, tmp_path, name="d.keras", predict=True)  # every scale's features, bit-identical
    b = d2.predict(x, verbose=0)
    assert len(b) == 2 and all(len(s) == 5 for s in b)


def test_discriminator_bad_config():
    with pytest.raises(ValueError, match="norm"):
        build_discriminator(DiscriminatorConfig(norm="batch"))
    with pytest.raises(ValueError, match="size"):
        build_discriminator(DiscriminatorConfig(size=16, num_D=3, n_layers=4))


# ------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("size,n_down", [(64, 4), (128, 5)])
def test_encoder_shapes(rng, size, n_down):
    cfg = EncoderConfig(size=size, nef=4, z_dim=8)
    assert cfg.n_down == n_down
    e = build_encoder(cfg)
    mu, logvar = e(rng.uniform(-1, 1, (2, size, size, 1)).astype("float32"), training=True)
    assert tuple(mu.shape) == tuple(logvar.shape) == (2, 8)
    assert e.get_layer(f"conv{n_down - 1}").layer.kernel.shape[-1] == 4 * 2 ** min(n_down - 1, 3)
    assert e.get_layer("flatten").output.shape[-1] == 4 * 2 ** min(n_down - 1, 3) * 16


def test_encoder_save_load_identical(rng, tmp_path):
    e = build_encoder(EncoderConfig(size=64, nef=4, z_dim=8))
    x = rng.uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    e(x, training=True)
    run_model_saving_test(e, x, tmp_path, name="e.keras", predict=True)  # mu and logvar, bit-identical


def test_reparameterize_statistics_and_seeding():
    n = 20000
    mu = np.tile(np.array([[0.0, 2.0, -1.0]], "float32"), (n, 1))
    logvar = np.tile(np.array([[0.0, np.log(4.0), np.log(0.25)]], "float32"), (n, 1))
    layer = Reparameterize(seed=7)
    z = np.asarray(layer([mu, logvar]))
    np.testing.assert_allclose(z.mean(0), [0.0, 2.0, -1.0], atol=0.05)
    np.testing.assert_allclose(z.var(0), [1.0, 4.0, 0.25], rtol=0.05)
    assert not np.allclose(layer([mu[:4], logvar[:4]]), layer([mu[:4], logvar[:4]]))
    a = Reparameterize(seed=3)([mu[:4], logvar[:4]])
    b = Reparameterize.from_config(Reparameterize(seed=3).get_config())([mu[:4], logvar[:4]])
    np.testing.assert_array_equal(a, b)


def test_kl_divergence(rng):
    zero = np.zeros((5, 8), "float32")
    assert float(kl_divergence(zero, zero)) == pytest.approx(0.0, abs=1e-7)
    mu = rng.normal(size=(5, 8)).astype("float32")
    logvar = rng.normal(size=(5, 8)).astype("float32")
    ref = np.mean(0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1.0 - logvar, axis=1))
    assert float(kl_divergence(mu, logvar)) == pytest.approx(ref, rel=1e-5)
    assert float(kl_divergence(mu, zero)) > 0 and float(kl_divergence(zero, logvar)) > 0
    # mean over the batch: repeating the batch does not change it
    assert float(kl_divergence(np.tile(mu, (3, 1)), np.tile(logvar, (3, 1)))) == pytest.approx(ref, rel=1e-5)


def test_gradients_reach_encoder_through_generator(rng):
    e = build_encoder(EncoderConfig(size=64, nef=4, z_dim=8))
    g = build_generator(GeneratorConfig(size=64, ngf=4, hidden=8, style="encoder", z_dim=8))
    rep = Reparameterize(seed=1)
    image = rng.uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    m = tf.constant(onehot(rng, 2, 64))
    with tf.GradientTape() as tape:
        mu, logvar = e(image, training=True)
        fake = g([m, rep([mu, logvar])], training=True)
        loss = tf.reduce_mean(tf.abs(fake - image)) + 0.05 * kl_divergence(mu, logvar)
    grads = tape.gradient(loss, e.trainable_variables)
    assert len(grads) == len(e.trainable_variables) > 0
    assert all(gr is not None and float(tf.reduce_max(tf.abs(gr))) > 0 for gr in grads)


# ------------------------------------------------------------------------------- presets
LOAD_SCRIPT = """
import sys, numpy as np
from cardigan_tf.models.saving import load_network
d = sys.argv[1]
g = load_network(d + "/g.keras")
disc = load_network(d + "/d.keras")
np.save(d + "/g_out.npy", g.predict(np.load(d + "/m.npy"), verbose=0))
np.save(d + "/d_out.npy", disc.predict(np.load(d + "/x.npy"), verbose=0)[1][-1])
"""


def test_load_network_in_fresh_process(rng, tmp_path):
    g = build_generator(GeneratorConfig(size=64, ngf=4, hidden=8))
    disc = build_discriminator(DiscriminatorConfig(ndf=4, size=64))
    m = onehot(rng, 2, 64)
    x = np.concatenate([m, rng.uniform(-1, 1, (2, 64, 64, 1))], -1).astype("float32")
    g(m, training=True)
    g.save(tmp_path / "g.keras")
    disc.save(tmp_path / "d.keras")
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "g_out.npy"), g.predict(m, verbose=0))
    np.testing.assert_array_equal(np.load(tmp_path / "d_out.npy"), disc.predict(x, verbose=0)[1][-1])


def test_presets():
    assert set(GAN_PRESETS) >= {"tiny", "cardigan", "spade"}
    for name in GAN_PRESETS:
        p = preset_config(name)
        g, d, e = network_configs(name)
        assert (g.size, g.ngf, d.ndf, e.size) == (p.model.size, p.model.ngf, p.model.ndf, p.model.size)
        assert (d.num_D, d.n_layers, g.style, g.z_dim) == (p.model.num_D, p.model.n_layers, p.model.style, p.model.z_dim)
    c = preset_config("cardigan")
    assert (c.model.size, c.model.ngf, c.model.ndf, c.train.batch_size) == (256, 48, 48, 4)
    assert (c.train.epochs, c.data.augment.hflip) == (30, True)
    assert c.model.style == "mask" and c.train.epochs - c.train.decay_epochs == 20
    # cardiGAN passed Adam (0, 0.999); NVIDIA's TTUR default is (0, 0.9)
    assert (c.train.beta1, c.train.beta2) == (0.0, 0.999)
    assert (preset_config("spade").train.beta1, preset_config("spade").train.beta2) == (0.0, 0.9)
    preset_config("tiny").model.size = 1
    assert preset_config("tiny").model.size == 64
    with pytest.raises(ConfigError, match="preset"):
        preset_config("huge")


def test_cardigan_preset_builds_at_256():
    g_cfg, d_cfg, e_cfg = network_configs("cardigan")
    g = build_generator(g_cfg)
    d = build_discriminator(d_cfg)
    assert g.output.shape == (None, 256, 256, 1)
    assert g.count_params() > 10_000_000 and d.count_params() > 1_000_000
    assert [tuple(scale[-1].shape) for scale in d.output] == [(None, 32, 32, 1), (None, 16, 16, 1)]


# ------------------------------------------------------- training flag reaches spectral norm
def test_training_flag_reaches_spectral_norm_inside_models(rng):
    g = build_generator(GeneratorConfig(size=64, ngf=4, hidden=8))
    d = build_discriminator(DiscriminatorConfig(ndf=8, size=64))
    m = onehot(rng, 2, 64)
    x = np.concatenate([m, rng.uniform(-1, 1, (2, 64, 64, 1))], -1).astype("float32")
    sn_g = g.get_layer("up_1_block").conv_0
    sn_d = d.get_layer("D1_conv2")
    u_g, u_d = np.array(sn_g.vector_u), np.array(sn_d.vector_u)
    g(m, training=False)
    d(x, training=False)
    np.testing.assert_array_equal(sn_g.vector_u, u_g)
    np.testing.assert_array_equal(sn_d.vector_u, u_d)
    g(m, training=True)
    d(x, training=True)
    assert not np.allclose(sn_g.vector_u, u_g) and not np.allclose(sn_d.vector_u, u_d)


# ----------------------------------------------------------------------------------- JAX
@pytest.mark.slow
def test_networks_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    script = textwrap.dedent("""
        import numpy as np, keras, jax, jax.numpy as jnp
        assert keras.backend.backend() == "jax"
        from cardigan_tf.models.generator import GeneratorConfig, build_generator
        from cardigan_tf.models.discriminator import DiscriminatorConfig, build_discriminator
        from cardigan_tf.models.encoder import EncoderConfig, build_encoder, Reparameterize

        def jit_call(model, x):  # one compiled call instead of slow op-by-op eager dispatch
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            fn = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=True))
            return fn(tv, ntv, x)[0]

        rng = np.random.default_rng(0)
        m = np.eye(4, dtype="float32")[rng.integers(0, 4, (2, 64, 64))]
        g = build_generator(GeneratorConfig(size=64, ngf=2, hidden=4))
        d = build_discriminator(DiscriminatorConfig(ndf=4, size=64))
        e = build_encoder(EncoderConfig(size=64, nef=4, z_dim=8))
        x = np.concatenate([m, rng.uniform(-1, 1, (2, 64, 64, 1)).astype("float32")], -1)
        outs = jit_call(d, x)
        assert len(outs) == 2 and outs[1][-1].shape == (2, 4, 4, 1)
        mu, lv = jit_call(e, x[..., -1:])
        assert mu.shape == (2, 8)

        # a jitted stateless gradient step through the generator, as Keras' JAX trainer runs it
        tv = [v.value for v in g.trainable_variables]
        ntv = [v.value for v in g.non_trainable_variables]

        @jax.jit
        def loss_fn(tv, ntv, m):
            y, new_ntv = g.stateless_call(tv, ntv, m, training=True)
            return jnp.mean(y ** 2), (y, new_ntv)

        (loss, (y, new_ntv)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, m)
        assert y.shape == (2, 64, 64, 1)
        assert np.isfinite(float(loss)) and all(np.all(np.isfinite(gr)) for gr in grads)
        assert any(float(jnp.abs(gr).max()) > 0 for gr in grads)
        assert any(not np.allclose(a, b) for a, b in zip(ntv, new_ntv))  # BN stats / SN vectors
        print("JAX-OK")
    """)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=path, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "JAX-OK" in res.stdout, res.stderr[-3000:]
