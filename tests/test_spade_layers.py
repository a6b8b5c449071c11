"""SPADE, SPADEResBlock and NearestResize: shapes, values against numpy, config round trips."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf.models.generator import GeneratorConfig, build_generator
from cardigan_tf.models.spade import SPADE, NearestResize, SPADEResBlock

from harness import onehot, run_layer_test, two_cpu_script


MODEL_FILES = ["spade.py", "generator.py", "discriminator.py", "encoder.py", "saving.py", "features.py"]


def block_mask(rng, batch, low, factor, k=4):
    """Labels constant over factor x factor cells, so any nearest resize to `low` is exact."""
    small = rng.integers(0, k, (batch, low, low))
    return small, np.repeat(np.repeat(small, factor, 1), factor, 2)


def zero_modulation(spade):
    for conv in (spade.mlp_gamma, spade.mlp_beta):
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
        conv.bias.assign(np.zeros(conv.bias.shape, "float32"))


def np_norm(x, axes, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("size,xs", [(64, 16), (128, 32), (64, 64)])
def test_spade_shapes(rng, norm, size, xs):
    x = rng.normal(size=(2, xs, xs, 8)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, size, size)))
    layer = SPADE(norm, hidden=16)
    y = layer(x, m, training=True)
    assert tuple(y.shape) == (2, xs, xs, 8)
    assert tuple(layer.mlp_shared.kernel.shape) == (3, 3, 4, 16)
    assert tuple(layer.mlp_gamma.kernel.shape) == (3, 3, 16, 8)
    assert tuple(layer.mlp_beta.kernel.shape) == (3, 3, 16, 8)
    assert not layer.param_free_norm.trainable_weights  # parameter-free


@pytest.mark.parametrize("norm,axes", [("batch", (0, 1, 2)), ("instance", (1, 2))])
def test_spade_zero_modulation_is_plain_norm(rng, norm, axes):
    x = (3.0 + 2.0 * rng.normal(size=(3, 16, 16, 5))).astype("float32")
    m = onehot(rng.integers(0, 4, (3, 64, 64)))
    layer = SPADE(norm, hidden=8)
    layer(x, m)
    zero_modulation(layer)
    y = np.asarray(layer(x, m, training=True))
    np.testing.assert_allclose(y, np_norm(x.astype("float64"), axes), atol=2e-4)


def test_spade_known_mask_modulation(rng):
    """Centre-tap kernels make the mask convs per-pixel: out = xn * (1 + g[label]) + b[label]."""
    k, hidden, ch = 4, 8, 3
    small, big = block_mask(rng, 2, 8, 4)
    x = rng.normal(size=(2, 8, 8, ch)).astype("float32")
    layer = SPADE("instance", hidden=hidden)
    layer(x, onehot(big))
    g = np.array([0.0, 0.5, -0.25, 2.0], "float32")
    b = np.array([1.0, -1.0, 0.0, 3.0], "float32")
    shared = np.zeros((3, 3, k, hidden), "float32")
    shared[1, 1, :, :k] = np.eye(k)
    layer.mlp_shared.kernel.assign(shared)
    layer.mlp_shared.bias.assign(np.zeros(hidden, "float32"))
    for conv, vals in ((layer.mlp_gamma, g), (layer.mlp_beta, b)):
        kern = np.zeros((3, 3, hidden, ch), "float32")
        kern[1, 1, :k, :] = vals[:, None]
        conv.kernel.assign(kern)
        conv.bias.assign(np.zeros(ch, "float32"))
    y = np.asarray(layer(x, onehot(big), training=True))
    xn = np_norm(x.astype("float64"), (1, 2))
    expected = xn * (1.0 + g[small][..., None]) + b[small][..., None]
    np.testing.assert_allclose(y, expected, atol=2e-4)


def test_spade_batch_norm_uses_moving_stats_at_inference(rng):
    """At inference a sample's output must not depend on the rest of the batch."""
    x = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    m = onehot(rng.integers(0, 4, (4, 16, 16)))
    layer = SPADE("batch", hidden=8)
    for _ in range(3):
        layer(x * 2 + 1, m, training=True)
    alone = np.asarray(layer(x[:1], m[:1], training=False))
    together = np.asarray(layer(x, m, training=False))[:1]
    np.testing.assert_allclose(alone, together, atol=1e-5)
    assert not np.allclose(np.asarray(layer(x, m, training=True))[:1], together, atol=1e-3)


def test_spade_rejects_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        SPADE("layer")
    with pytest.raises(ValueError, match="norm"):
        SPADEResBlock(8, norm="group")


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_config_round_trip(rng, norm):
    x = rng.normal(size=(2, 8, 8, 4)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, 32, 32)))
    run_layer_test(SPADE, dict(norm=norm, hidden=12, epsilon=1e-4, momentum=0.8, name="s"), (x, m),
                   expected_output_shape=(2, 8, 8, 4), call_kwargs={"training": True},
                   expected_num_trainable_weights=6,  # shared, gamma, beta convs: kernel + bias each
                   expected_num_non_trainable_weights=2 if norm == "batch" else 0)  # moving mean, variance


@pytest.mark.parametrize("fin,fout", [(16, 16), (16, 8), (8, 16)])
@pytest.mark.parametrize("size", [64, 128])
def test_resblock_shapes_and_structure(rng, fin, fout, size):
    x = rng.normal(size=(2, size // 8, size // 8, fin)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, size, size)))
    block = SPADEResBlock(fout, norm="batch", hidden=8)
    y = block(x, m, training=True)
    assert tuple(y.shape) == (2, size // 8, size // 8, fout)
    fmid = min(fin, fout)
    assert isinstance(block.conv_0, keras.layers.SpectralNormalization)
    assert tuple(block.conv_0.layer.kernel.shape) == (3, 3, fin, fmid)
    assert tuple(block.conv_1.layer.kernel.shape) == (3, 3, fmid, fout)
    assert block.learned_shortcut == (fin != fout)
    if fin != fout:
        assert tuple(block.conv_s.layer.kernel.shape) == (1, 1, fin, fout)
        assert block.conv_s.layer.bias is None
        assert block.conv_s.layer.activation is keras.activations.linear
    else:
        assert not hasattr(block, "conv_s")


def test_resblock_identity_shortcut_and_no_spectral(rng):
    x = rng.normal(size=(2, 8, 8, 6)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, 32, 32)))
    block = SPADEResBlock(6, norm="instance", spectral=False, hidden=8)
    block(x, m)
    assert isinstance(block.conv_1, keras.layers.Conv2D)
    block.conv_1.kernel.assign(np.zeros(block.conv_1.kernel.shape, "float32"))
    block.conv_1.bias.assign(np.zeros(block.conv_1.bias.shape, "float32"))
    np.testing.assert_allclose(block(x, m, training=True), x, atol=1e-6)


def test_resblock_spectral_norm_updates_only_when_training(rng):
    x = rng.normal(size=(2, 8, 8, 6)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, 32, 32)))
    block = SPADEResBlock(4, hidden=8)
    block(x, m)
    u0 = np.array(block.conv_0.vector_u)
    k0 = np.array(block.conv_0.layer.kernel)
    block(x, m, training=False)
    np.testing.assert_array_equal(block.conv_0.vector_u, u0)
    block(x, m, training=True)
    assert not np.allclose(block.conv_0.vector_u, u0)
    # after enough power iterations the kernel's largest singular value is ~1
    for _ in range(30):
        block(x, m, training=True)
    k = np.array(block.conv_0.layer.kernel).reshape(-1, k0.shape[-1])
    assert np.linalg.svd(k, compute_uv=False)[0] == pytest.approx(1.0, abs=0.05)
    assert np.linalg.svd(k0.reshape(-1, k0.shape[-1]), compute_uv=False)[0] != pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("fin,fout", [(8, 8), (8, 4)])
def test_resblock_config_round_trip(rng, fin, fout):
    x = rng.normal(size=(2, 8, 8, fin)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, 16, 16)))
    run_layer_test(SPADEResBlock, dict(fout=fout, norm="instance", spectral=True, hidden=8, name="blk"), (x, m),
                   expected_output_shape=(2, 8, 8, fout), call_kwargs={"training": True})


def test_nearest_resize_keeps_labels(rng):
    small, big = block_mask(rng, 2, 4, 8)
    layer = NearestResize(4, 4)
    np.testing.assert_array_equal(layer(onehot(big)), onehot(small))
    up = NearestResize(32, 32)(onehot(small))
    np.testing.assert_array_equal(up, onehot(big))
    resized = run_layer_test(NearestResize, dict(height=4, width=4), onehot(big), expected_output_shape=(2, 4, 4, 4),
                             expected_num_trainable_weights=0, expected_num_non_trainable_weights=0)
    assert (resized.height, resized.width) == (4, 4)


def test_model_files_use_keras_ops_only():
    root = Path(__file__).resolve().parents[1] / "cardigan_tf" / "models"
    for name in MODEL_FILES:
        text = (root / name).read_text()
        assert not re.search(r"^\s*(import tensorflow|from tensorflow)", text, re.M), name
        assert not re.search(r"\btf\.[\w.]+\(", text), name


def test_init_gain_sets_xavier_normal_std():
    layer = SPADE("instance", hidden=64, init_gain=0.02)
    layer.build((None, 8, 8, 64), (None, 8, 8, 4))
    fan_in, fan_out = 9 * 64, 9 * 64
    expected = 0.02 * np.sqrt(2.0 / (fan_in + fan_out))
    assert np.std(np.asarray(layer.mlp_gamma.kernel)) == pytest.approx(expected, rel=0.1)
    plain = SPADE("instance", hidden=64, init_gain=0)
    plain.build((None, 8, 8, 64), (None, 8, 8, 4))
    assert np.std(np.asarray(plain.mlp_gamma.kernel)) > 10 * expected


SYNC_BN = two_cpu_script("sync_bn", """
import numpy as np, tensorflow as tf
from cardigan_tf.models.spade import SPADE
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
x = rng.normal(size=(4, 4, 4, 3)).astype("float32")
x[2:] = x[2:] * 3.0 + 5.0          # the second replica's half has other statistics
m = np.eye(4, dtype="float32")[rng.integers(0, 4, (4, 8, 8))]
with strategy.scope():
    layer = SPADE("batch", hidden=4)
    layer.build((None, 4, 4, 3), (None, 8, 8, 4))
    for conv in (layer.mlp_gamma, layer.mlp_beta):
        conv.kernel.assign(tf.zeros(conv.kernel.shape))
ds = tf.data.Dataset.from_tensor_slices((x, m)).batch(4)
dist = strategy.experimental_distribute_dataset(ds)
out = []
for xb, mb in dist:
    res = strategy.run(lambda a, b: layer(a, b, training=True), args=(xb, mb))
    out = np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(res)])
mean = x.mean(axis=(0, 1, 2)); var = x.var(axis=(0, 1, 2))
ref = (x - mean) / np.sqrt(var + 1e-5)
np.testing.assert_allclose(out, ref, atol=1e-4)
print("SYNC-OK")
""", own_process=True)  # its collective ops must not meet another strategy's


def test_spade_batch_norm_is_synchronised_across_replicas(two_cpus):
    result = two_cpus[SYNC_BN]  # in a fresh process with two logical CPUs (conftest)
    assert result["ok"], result["error"]
    assert "SYNC-OK" in result["stdout"]


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_fused_gamma_beta_equals_two_convs(rng, norm, tmp_path):
    """The fused 2C-output conv gives the unfused outputs and gradients on the same weights,
    and weights saved by an unfused layer load unchanged into a fused one."""
    x = rng.normal(size=(2, 8, 8, 5)).astype("float32")
    m = onehot(rng.integers(0, 4, (2, 16, 16)))
    unfused = SPADE(norm, hidden=6, fused=False)
    unfused(x, m)
    for conv in (unfused.mlp_gamma, unfused.mlp_beta):  # non-trivial, distinct weights
        conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32") * 0.3)
        conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    fused = SPADE(norm, hidden=6, fused=True)
    fused(x, m)
    assert [v.path.split("/")[-2:] for v in fused.weights] == \
        [v.path.split("/")[-2:] for v in unfused.weights]
    fused.set_weights(unfused.get_weights())

    def run(layer):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, m, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [xt] + layer.trainable_weights)
        return np.asarray(y), [np.asarray(g) for g in grads]

    y0, g0 = run(unfused)
    y1, g1 = run(fused)
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) == 1 + 6
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # and against an independent numpy evaluation of gamma and beta from the shared activation
    actv = np.asarray(fused.mlp_shared(m[:, ::2, ::2]))
    gamma, beta = (np.asarray(t) for t in fused.gamma_beta(actv))
    np.testing.assert_allclose(gamma, np.asarray(unfused.mlp_gamma(actv)), atol=1e-5)
    np.testing.assert_allclose(beta, np.asarray(unfused.mlp_beta(actv)), atol=1e-5)
    assert SPADE.from_config(fused.get_config()).fused and not SPADEResBlock(4).fused


def test_unfused_generator_weights_load_into_fused(rng, tmp_path):
    """A generator saved with two gamma/beta convs (fused_spade=False, the default) loads into
    a fused one and gives the same images."""
    old = build_generator(GeneratorConfig(size=32, ngf=2, hidden=4, init_gain=1.0, fused_spade=False))
    path = tmp_path / "old.weights.h5"
    old.save_weights(path)
    new = build_generator(GeneratorConfig(size=32, ngf=2, hidden=4, init_gain=1.0, fused_spade=True))
    new.load_weights(path)
    m = onehot(rng.integers(0, 4, (2, 32, 32)))
    np.testing.assert_allclose(np.asarray(new(m, training=False)), np.asarray(old(m, training=False)),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(build_generator(GeneratorConfig(size=32, ngf=2, hidden=4, init_gain=1.0))(m)),
                           np.asarray(old(m)), atol=1e-3)
