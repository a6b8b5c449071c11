"""Mask-consistent augmentation: alignment, determinism, ranges, defaults."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from cardigan_tf.config import ConfigError
from cardigan_tf.data.augment import (
    AugmentConfig,
    _pillow_warp,
    affine_transforms,
    augment_batch,
    augment_pair,
    batch_noise,
    blur,
    intensity,
    warp,
)

from harness import phantom_pairs


GEOMETRY_ONLY = AugmentConfig(rotation=25, scale=(0.8, 1.2), translation=0.1, p_geometric=1.0, brightness=0.0,
                              contrast=(1.0, 1.0), gamma=(1.0, 1.0), noise_std=0.0, blur_prob=0.0)


def _masks(n=6, size=64):
    return phantom_pairs(n, size, seed=0)


@pytest.mark.parametrize("warp_impl", ["pillow", "tf"])
def test_image_and_mask_stay_aligned(warp_impl):
    _, masks = _masks()
    seed = tf.constant([3, 4])
    for k in (1, 2, 3):
        # the image IS the indicator of label k: a misaligned warp shows up as disagreement
        image = (masks == k).astype(np.float32)[..., None]
        out_i, out_m = augment_batch(tf.constant(image), tf.constant(masks), seed, GEOMETRY_ONLY, warp_impl)
        out_i, out_m = out_i.numpy()[..., 0], out_m.numpy()
        sel = out_m == k
        inner = ~(ndimage.binary_dilation(sel, iterations=2) & ~ndimage.binary_erosion(sel, iterations=2))
        agree = ((out_i > 0.5) == (out_m == k))[inner].mean()
        assert agree >= 0.99, (k, agree)
        assert ((out_i > 0.5) == (out_m == k)).mean() >= 0.97
        # and the transform did move things (so the check is not vacuous)
        assert (out_m != masks).mean() > 0.02


def test_warp_matches_an_independent_reference():
    # forward map out = s R(theta) (in - c) + c + t, checked against scipy on one sample
    _, masks = _masks(n=1)
    cfg = GEOMETRY_ONLY
    seed = tf.constant([9, 1], tf.int64)
    t = affine_transforms(1, 64, 64, seed, cfg).numpy()[0]
    ref = ndimage.affine_transform(masks[0].astype(np.float32), np.array([[t[4], t[3]], [t[1], t[0]]]),
                                   offset=(t[5], t[2]), order=0, mode="constant", cval=0)
    ours = warp(tf.constant(masks[:1, :, :, None].astype(np.float32)), tf.constant(t[None]), "NEAREST").numpy()[0, ..., 0]
    assert (ours == ref).mean() > 0.99


def test_masks_keep_their_label_set_and_dtype():
    images, masks = _masks()
    out_i, out_m = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([1, 2]), AugmentConfig())
    assert out_m.dtype == tf.int32 and out_i.dtype == tf.float32
    assert set(np.unique(out_m.numpy())) <= {0, 1, 2, 3}
    assert 0.0 <= out_i.numpy().min() and out_i.numpy().max() <= 1.0
    onehot = tf.one_hot(masks, 4)
    _, out_oh = augment_batch(tf.constant(images), onehot, tf.constant([1, 2]), AugmentConfig())
    np.testing.assert_allclose(out_oh.numpy().sum(-1), 1.0)
    np.testing.assert_array_equal(np.argmax(out_oh.numpy(), -1), out_m.numpy())


def test_deterministic_for_a_seed():
    images, masks = _masks()
    a = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([5, 6]), AugmentConfig())
    b = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([5, 6]), AugmentConfig())
    c = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([5, 7]), AugmentConfig())
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_pillow_warp_equals_the_tf_op():
    # the default (Pillow) warp against ImageProjectiveTransformV3 on the same transforms:
    # same values to float rounding, same labels except on half-pixel ties
    images, masks = _masks(n=8)
    images = images + np.random.default_rng(3).random(images.shape, dtype=np.float32)  # texture to the edge
    cfg = dataclasses.replace(GEOMETRY_ONLY, hflip=True, p_geometric=0.7)
    t = affine_transforms(8, 64, 64, tf.constant([2, 4], tf.int64), cfg)  # 6 of 8 moved, 4 flipped
    moved = np.abs(t.numpy() - np.array([1, 0, 0, 0, 1, 0, 0, 0])).max(1) > 1e-6
    assert moved.any() and not moved.all()
    got_i, got_m = _pillow_warp(images, masks.astype(np.uint8), t.numpy(), moved)
    want_i = np.where(moved[:, None, None, None], warp(tf.constant(images), t, "BILINEAR").numpy(), images)
    want_m = np.where(moved[:, None, None], warp(tf.constant(masks[..., None].astype(np.uint8)), t,
                                                 "NEAREST").numpy()[..., 0], masks)
    np.testing.assert_allclose(got_i, want_i, atol=1e-4)
    assert (got_m == want_m).mean() > 0.999 and got_m.dtype == np.uint8
    a = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([4, 5]), AugmentConfig(), "pillow")
    b = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([4, 5]), AugmentConfig(), "tf")
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), atol=1e-4)
    assert (a[1].numpy() == b[1].numpy()).mean() > 0.999
    with pytest.raises(ValueError, match="warp_impl"):
        augment_batch(tf.constant(images), tf.constant(masks), tf.constant([4, 5]), AugmentConfig(), "cv2")


def test_parameters_differ_per_sample():
    t = affine_transforms(8, 64, 64, tf.constant([0, 0], tf.int64), GEOMETRY_ONLY).numpy()
    assert len({tuple(np.round(r, 5)) for r in t}) == 8


def test_identity_config_is_identity():
    images, masks = _masks()
    cfg = AugmentConfig(rotation=0, scale=(1.0, 1.0), translation=0, brightness=0, contrast=(1.0, 1.0),
                        gamma=(1.0, 1.0), noise_std=0, blur_prob=0)
    out_i, out_m = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([0, 1]), cfg)
    np.testing.assert_allclose(out_i.numpy(), images, atol=1e-6)
    np.testing.assert_array_equal(out_m.numpy(), masks)


def test_intensity_changes_only_the_image():
    images, masks = _masks()
    cfg = dataclasses.replace(AugmentConfig(), rotation=0, scale=(1.0, 1.0), translation=0, p_intensity=1.0,
                              blur_prob=1.0, noise_std=0.05)
    out_i, out_m = augment_batch(tf.constant(images), tf.constant(masks), tf.constant([0, 1]), cfg)
    np.testing.assert_array_equal(out_m.numpy(), masks)
    assert np.abs(out_i.numpy() - images).mean() > 0.01


def test_hflip_off_by_default_and_flips_when_on():
    assert AugmentConfig().hflip is False
    _, masks = _masks(n=8)
    cfg = AugmentConfig(rotation=0, scale=(1.0, 1.0), translation=0, hflip=True, p_geometric=1.0)
    t = affine_transforms(8, 64, 64, tf.constant([2, 3], tf.int64), cfg)
    out = warp(tf.constant(masks[..., None].astype(np.float32)), t, "NEAREST").numpy()[..., 0]
    flipped = [np.array_equal(o, m[:, ::-1]) for o, m in zip(out, masks)]
    same = [np.array_equal(o, m) for o, m in zip(out, masks)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    t0 = affine_transforms(64, 64, 64, tf.constant([2, 3], tf.int64), GEOMETRY_ONLY).numpy()
    assert (t0[:, 0] > 0).all()  # no mirror component without hflip


def test_batch_noise_is_standard_normal_and_distinct_per_sample():
    n = batch_noise(tf.constant([16, 32, 32, 1]), tf.constant([1, 2], tf.int64)).numpy()
    assert n.shape == (16, 32, 32, 1)
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1.0) < 0.05
    assert len({n[i].tobytes() for i in range(16)}) == 16


def test_augment_pair_and_bad_config():
    images, masks = _masks(n=1)
    im, m = augment_pair(tf.constant(images[0]), tf.constant(masks[0]), tf.constant([0, 1]), AugmentConfig())
    assert im.shape == (64, 64, 1) and m.shape == (64, 64)
    with pytest.raises(ConfigError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8)).validate()
    with pytest.raises(ConfigError, match="blur_prob"):
        AugmentConfig(blur_prob=1.5).validate()


INTENSITY_OFF = dict(rotation=0, scale=(1.0, 1.0), translation=0, brightness=0.0, contrast=(1.0, 1.0),
                     gamma=(1.0, 1.0), noise_std=0.0, blur_prob=0.0, p_intensity=1.0)


def _box3(x):
    """Reference 3x3 box filter over the pixels that exist (numpy, one 2-D image)."""
    h, w = x.shape
    pad, ones = np.pad(x, 1), np.pad(np.ones_like(x), 1)
    tot = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3))
    cnt = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))
    return tot / cnt


def test_blur_matches_two_box_passes():
    x = np.random.default_rng(1).random((5, 20, 24, 1)).astype(np.float32)
    got = blur(tf.constant(x), 1.0).numpy()
    want = np.stack([_box3(_box3(im[..., 0].astype(np.float64))) for im in x])[..., None]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_gamma_is_a_power_per_sample_and_keeps_zero():
    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(1, 32, 32, 1)
    images = np.repeat(ramp, 8, axis=0)
    cfg = AugmentConfig(**{**INTENSITY_OFF, "gamma": (0.8, 1.25)})
    out = intensity(tf.constant(images), tf.constant([4, 2], tf.int64), cfg).numpy()
    x, exps = ramp[0, ..., 0].ravel(), []
    for o in out:
        o = o[..., 0].ravel()
        g = np.log(o[600]) / np.log(x[600])  # exponent seen at one pixel ...
        np.testing.assert_allclose(o, x ** g, atol=2e-5)  # ... holds at every pixel
        assert 0.8 - 1e-4 <= g <= 1.25 + 1e-4 and o[0] == 0.0 and abs(o[-1] - 1.0) < 1e-6
        exps.append(g)
    assert len({round(g, 4) for g in exps}) == 8  # one exponent per sample


def test_brightness_contrast_is_an_affine_map_around_the_mean():
    images = np.random.default_rng(2).uniform(0.3, 0.7, (8, 16, 16, 1)).astype(np.float32)
    cfg = AugmentConfig(**{**INTENSITY_OFF, "brightness": 0.1, "contrast": (0.8, 1.2)})
    out = intensity(tf.constant(images), tf.constant([1, 1], tf.int64), cfg).numpy()
    for x, o in zip(images.reshape(8, -1), out.reshape(8, -1)):
        c, off = np.polyfit(x, o, 1)
        np.testing.assert_allclose(o, c * x + off, atol=1e-5)
        d = off - (1.0 - c) * x.mean()  # off = (1 - c) * mean + d
        assert 0.8 - 1e-4 <= c <= 1.2 + 1e-4 and abs(d) <= 0.1 + 1e-4


def test_batch_noise_takes_a_per_sample_std_and_is_white():
    std = tf.constant([0.5, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    n = batch_noise(tf.constant([8, 64, 64, 1]), tf.constant([7, 8], tf.int64), std).numpy()
    np.testing.assert_allclose(n.std(axis=(1, 2, 3)), std.numpy(), rtol=0.05)
    assert np.all(n[2] == 0.0)
    lag = (n[3, 1:, :, 0] * n[3, :-1, :, 0]).mean()  # neighbouring pixels are uncorrelated
    assert abs(lag) < 0.05
    assert len({n[i].tobytes() for i in (0, 1, 3, 4, 5, 6, 7)}) == 7
    assert batch_noise(tf.constant([0, 8, 8, 1]), tf.constant([1, 2], tf.int64)).shape == (0, 8, 8, 1)
