"""FID / KID against closed forms, feature extractors, segmentation consistency."""

import keras
import numpy as np
import pytest

from cardigan_tf.metrics.synthesis import fid, frechet_distance, kid, segmentation_consistency
from cardigan_tf.models.features import bottleneck_layer, encoder_features, inception_features
from cardigan_tf.models.unet import UNetConfig, build_unet

from _heart_masks import draw_heart  # noqa: E402


def test_fid_of_a_set_with_itself_is_zero(rng):
    x = rng.normal(size=(200, 8))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_diagonal_closed_form(rng):
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2.0, size=5), rng.uniform(0.5, 2.0, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-6)


def test_fid_of_two_gaussian_samples(rng):
    n, d = 20000, 3
    mu2 = np.array([1.0, -0.5, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    a = rng.normal(size=(n, d)) * sd1
    b = mu2 + rng.normal(size=(n, d)) * sd2
    v1, v2 = sd1**2, sd2**2
    expected = np.sum(mu2**2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert fid(a, b) == pytest.approx(expected, abs=0.1)


def test_frechet_distance_singular_and_shape_errors():
    s = np.zeros((3, 3))
    s[0, 0] = 1.0  # rank-deficient covariances
    assert frechet_distance(np.zeros(3), s, np.ones(3), s) == pytest.approx(3.0, abs=1e-3)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        fid(np.zeros((1, 3)), np.zeros((5, 3)))


def test_kid_same_and_shifted(rng):
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    same = kid(a, b, subsets=20, subset_size=100, seed=0)
    shifted = kid(a, b + 0.5, subsets=20, subset_size=100, seed=0)
    assert abs(same["mean"]) < 3 * same["std"] + 0.02
    assert shifted["mean"] > 0.1 and shifted["mean"] > 10 * abs(same["mean"])
    assert same["subset_size"] == 100
    capped = kid(a[:30], b[:50], subsets=3, subset_size=1000)
    assert capped["subset_size"] == 30


def test_kid_matches_direct_formula(rng):
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) + 1

    def k(u, v):
        return (u @ v / 4 + 1) ** 3

    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    # with subset_size == N every subset is a permutation: the same value each time
    assert kid(x, y, subsets=3, subset_size=6)["mean"] == pytest.approx(xx + yy - 2 * xy, rel=1e-9)


def test_segmentation_consistency_perfect_and_wrong(rng):
    masks = np.stack([draw_heart(rng, 32) for _ in range(5)])
    result = segmentation_consistency(masks, masks)
    assert set(result) == {"lv_endo", "lv_epi", "la"}
    for v in result.values():
        assert v == pytest.approx(1.0)
    # predictions of background only score 0
    zero = segmentation_consistency(np.zeros_like(masks), masks)
    assert all(v == 0.0 for v in zero.values())
    # an independent reference for one structure: LV endo Dice by hand on a shifted prediction
    shifted = np.roll(masks, 2, axis=2)
    per = segmentation_consistency(shifted, masks, per_image=True)
    a, b = shifted[0] == 1, masks[0] == 1
    assert per["lv_endo"][0] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert per["la"].shape == (5,)
    with pytest.raises(ValueError, match="masks"):
        segmentation_consistency(masks, masks[:3])


def _tiny_unet():
    return build_unet(UNetConfig(size=32, depth=4, base_filters=4)), "bottleneck"


def test_encoder_features_use_the_bottleneck(rng):
    model, expected = _tiny_unet()
    layer = bottleneck_layer(model)
    assert layer.name == expected
    f = encoder_features(model)
    images = rng.uniform(size=(5, 32, 32, 1)).astype(np.float32)
    feats = f(images)
    channels = layer.output.shape[-1]
    assert feats.shape == (5, channels)
    # independent reference: run the sub-graph and average over space
    ref = keras.Model(model.inputs[0], layer.output)(images, training=False)
    np.testing.assert_allclose(feats, np.asarray(ref).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert "bottleneck" in f.name
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_inception_features_need_a_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        inception_features(tmp_path / "missing.h5")


def test_inception_features_with_a_local_weights_file(tmp_path, rng):
    net = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3))
    path = tmp_path / "inception_notop.weights.h5"
    net.save_weights(path)
    f = inception_features(path)
    feats = f(rng.uniform(size=(2, 64, 64, 1)).astype(np.float32))
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    assert "InceptionV3" in f.name
