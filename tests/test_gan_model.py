"""SpadeGAN (cardigan_tf.models.gan): training behaviour at 32x32 on phantom pairs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf.configs.gan import network_configs
from cardigan_tf.losses.gan import VGGPerceptualLoss
from cardigan_tf.models.discriminator import build_discriminator
from cardigan_tf.models.encoder import build_encoder
from cardigan_tf.models.gan import ConstantThenLinearDecay, SpadeGAN
from cardigan_tf.models.generator import build_generator

from harness import phantom_pairs, two_cpu_script


SIZE = 32
STEPS = 6  # eager training steps of the tiny GAN (the last 5 are checked for a separating D)


def _pairs(n=8, seed=0):
    return phantom_pairs(n, SIZE, seed, pattern="cycle")


def _gan(style="encoder", num_d=2, seed=0, run_eagerly=False):
    g, d, e = network_configs("tiny", size=SIZE, ngf=8, ndf=8, nef=8, z_dim=16, style=style, num_D=num_d)
    enc = build_encoder(e) if style == "encoder" else None
    gan = SpadeGAN(build_generator(g), build_discriminator(d), enc, ema_decay=0.9, seed=seed)
    gan.compile(keras.optimizers.Adam(1e-4, beta_1=0.0, beta_2=0.999),
                keras.optimizers.Adam(4e-4, beta_1=0.0, beta_2=0.999), jit_compile=False,
                run_eagerly=run_eagerly)
    return gan


class _PerStep(keras.callbacks.Callback):
    """Reset trackers before each batch and keep each step's logs."""

    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_begin(self, batch, logs=None):
        for m in self.model.metrics:
            m.reset_state()

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append({k: float(v) for k, v in logs.items()})


def _copy(variables):
    return [np.array(v) for v in variables]


def _changed(before, variables):
    return max(float(np.abs(a - np.asarray(v)).max()) for a, v in zip(before, variables))


def test_tiny_gan_trains_encoder_ema_and_both_networks():
    images, masks = _pairs()
    gan = _gan("encoder", run_eagerly=True)  # eager: no slow trace (the job tests trace)
    onehot = np.eye(4, dtype="float32")[masks[:2]]
    z0 = np.zeros((2, 16), "float32")
    out0 = np.asarray(gan.generator([onehot, z0], training=False))
    g0, d0, e0 = _copy(gan.generator.trainable_weights), _copy(gan.discriminator.trainable_weights), \
        _copy(gan.encoder.trainable_weights)
    ema0 = _copy(gan.generator_ema.weights)
    np.testing.assert_allclose(ema0[0], g0[0])  # EMA starts as a copy of G
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).repeat().batch(4)
    cb = _PerStep()
    gan.fit(ds, epochs=1, steps_per_epoch=STEPS, callbacks=[cb], verbose=0)

    assert len(cb.logs) == STEPS
    for logs in cb.logs:
        for key in ("d_loss", "d_real", "d_fake", "g_gan", "g_feat", "g_kl", "g_total", "lr_g", "lr_d"):
            assert np.isfinite(logs[key]), (key, logs)
    assert "g_vgg" not in cb.logs[-1]  # VGG off without weights
    assert cb.logs[-1]["lr_d"] == pytest.approx(4e-4)
    d_losses = [x["d_loss"] for x in cb.logs]
    assert np.std(d_losses) > 1e-3, "discriminator loss is constant"
    assert any(abs(x["d_real"] - x["d_fake"]) > 1e-3 for x in cb.logs[-5:]), "D does not separate"
    assert _changed(g0, gan.generator.trainable_weights) > 0
    assert _changed(d0, gan.discriminator.trainable_weights) > 0
    assert _changed(e0, gan.encoder.trainable_weights) > 0, "encoder did not train"
    out1 = np.asarray(gan.generator([onehot, z0], training=False))
    assert np.abs(out1 - out0).max() > 1e-4
    # EMA moved from its start and differs from G
    assert _changed(ema0, gan.generator_ema.weights) > 0
    diffs = [np.abs(np.asarray(e) - np.asarray(w)).max()
             for e, w in zip(gan.generator_ema.weights, gan.generator.weights)]
    assert max(diffs) > 0
    assert int(gan.step.numpy()) == STEPS

    # evaluate (test_step) updates nothing
    g1 = _copy(gan.generator.trainable_weights)
    res = gan.evaluate(ds, steps=1, verbose=0, return_dict=True)
    assert np.isfinite(res["g_total"]) and "d_loss" in res
    assert _changed(g1, gan.generator.trainable_weights) == 0

    # generate: [0, 1], int masks == one-hot masks, EMA vs raw generator differ
    imgs = gan.generate(masks[:2], image=images[:2])
    assert imgs.shape == (2, SIZE, SIZE, 1) and imgs.min() >= 0 and imgs.max() <= 1
    np.testing.assert_allclose(imgs, gan.generate(np.eye(4)[masks[:2]], image=images[:2]), atol=1e-6)
    assert np.abs(imgs - gan.generate(masks[:2], image=images[:2], use_ema=False)).max() > 0


def test_schedule_constant_then_linear_decay():
    s = ConstantThenLinearDecay(1e-3, total_steps=10, decay_start=6)
    got = [float(s(i)) for i in (0, 6, 8, 10, 12)]
    np.testing.assert_allclose(got, [1e-3, 1e-3, 5e-4, 0.0, 0.0], rtol=1e-6, atol=1e-9)
    again = ConstantThenLinearDecay.from_config(s.get_config())
    assert float(again(8)) == pytest.approx(5e-4)


def test_mixed_float16_wraps_both_optimizers_and_steps():
    keras.utils.set_random_seed(0)  # the same initial weights whatever ran before in this process
    images, masks = _pairs(4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        gan = _gan("mask", num_d=1)
        assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
        g0 = _copy(gan.generator.trainable_weights)
        logs = gan.train_step((tf.constant(images), tf.constant(masks)))  # one eager step
        assert all(np.isfinite(float(v)) for v in logs.values())
        assert _changed(g0, gan.generator.trainable_weights) > 0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_single_scale_discriminator_and_z_style():
    images, masks = _pairs(4)
    gan = _gan("z", num_d=1)
    logs = gan.train_step((tf.constant(images), tf.constant(masks)))
    assert np.isfinite(float(logs["g_total"])) and "g_kl" not in logs


def test_num_classes_sets_the_mask_channels():
    """GanModelConfig.num_classes reaches both networks; integer masks are one-hot encoded to as
    many channels in the train step and in generate."""
    from cardigan_tf.configs.gan import network_configs
    from cardigan_tf.models.discriminator import build_discriminator
    from cardigan_tf.models.generator import build_generator

    g, d, _ = network_configs("tiny", size=SIZE, ngf=8, ndf=8, style="mask", num_D=1, num_classes=3)
    gan = SpadeGAN(build_generator(g), build_discriminator(d), ema_decay=0.9)
    gan.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(4e-4), jit_compile=False)
    images, masks = _pairs(4)
    masks = np.minimum(masks, 2)  # labels 0..2
    logs = gan.train_step((tf.constant(images), tf.constant(masks)))
    assert gan.num_classes == 3 and np.isfinite(float(logs["g_total"]))
    assert gan.generate(masks[:2]).shape == (2, SIZE, SIZE, 1)


def test_vgg_term_in_the_train_step(tmp_path):
    path = tmp_path / "vgg19_notop.weights.h5"
    keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3)).save_weights(path)
    images, masks = _pairs(2)
    gan = _gan("mask", num_d=1)
    gan.compile(keras.optimizers.Adam(1e-4, beta_1=0.0), keras.optimizers.Adam(4e-4, beta_1=0.0),
                vgg=VGGPerceptualLoss(path), lambda_vgg=10.0)
    logs = gan.train_step((tf.constant(images), tf.constant(masks)))
    assert "g_vgg" in logs and np.isfinite(float(logs["g_vgg"])) and float(logs["g_vgg"]) > 0
    want = float(logs["g_gan"]) + 10.0 * float(logs["g_feat"]) + 10.0 * float(logs["g_vgg"])
    assert float(logs["g_total"]) == pytest.approx(want, rel=1e-4)


MIRRORED = two_cpu_script("mirrored_gan", """
    import numpy as np
    import tensorflow as tf
    from cardigan_tf.configs.gan import GanConfig
    from cardigan_tf.jobs.gan_loop import build_gan
    from cardigan_tf.runtime import get_strategy
    cfg = GanConfig()
    cfg.model.size, cfg.model.ngf, cfg.model.ndf, cfg.model.num_D = 32, 8, 8, 1
    cfg.model.style, cfg.model.z_dim = "z", 8
    cfg.train.steps, cfg.train.steps_per_epoch = 2, 2
    strategy = get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    gan = build_gan(cfg, strategy)
    gan.run_eagerly = True  # the replicas still run through strategy.run; skips a slow trace
    g0 = [np.array(v) for v in gan.generator.trainable_weights]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 32, 32, 1)).astype("float32")
    m = rng.integers(0, 4, (4, 32, 32)).astype("int32")
    ds = tf.data.Dataset.from_tensors((x, m)).repeat()
    hist = gan.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    assert all(np.isfinite(v[-1]) for v in hist.history.values()), hist.history
    assert int(gan.step.numpy()) == 2, gan.step.numpy()
    assert max(np.abs(a - np.array(v)).max() for a, v in zip(g0, gan.generator.trainable_weights)) > 0
    ema = [np.array(v) for v in gan.generator_ema.weights]
    assert max(np.abs(a - b).max() for a, b in zip(ema, [np.array(v) for v in gan.generator.weights])) > 0
    print("MIRRORED_OK", strategy.num_replicas_in_sync)
    """)


def test_mirrored_strategy_two_logical_cpus(two_cpus):
    result = two_cpus[MIRRORED]  # in a fresh process with two logical CPUs (conftest)
    assert result["ok"], result["error"]
    assert "MIRRORED_OK 2" in result["stdout"]
