"""Mask VAE: trains in seconds on 64x64 masks, reconstructs well above chance, samples and
filters new masks with counted rejections, saves and loads."""

import numpy as np
import pytest

from cardigan_tf.data.masks import check_mask, validity_check
from cardigan_tf.models.mask_ae import (
    MaskAEConfig,
    build_mask_vae,
    reconstruct_masks,
    sample_masks,
    sample_valid_masks,
    to_onehot,
    train_mask_vae,
)

from harness import phantom_masks, run_model_saving_test


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _training_masks(n=96, size=64):
    return phantom_masks(n, size, seed=0, pattern="cycle")


@pytest.fixture(scope="module")
def trained():
    masks = _training_masks()
    model = train_mask_vae(masks[:80], MaskAEConfig(size=64, latent_dim=32, filters=(16, 32, 64)),
                           epochs=30, seed=0)
    return model, masks


def test_shapes_and_config():
    cfg = MaskAEConfig(size=32, latent_dim=8, filters=(8, 16))
    model = build_mask_vae(cfg)
    x = to_onehot(np.zeros((2, 32, 32), np.uint8))
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, 32, 32, 4)
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    mu, log_var = model.encoder(x)
    assert tuple(mu.shape) == (2, 8) and tuple(log_var.shape) == (2, 8)
    # the KL term is added as a loss: kl_weight x KL(N(mu, exp(log_var)) || N(0, I)) / (H * W), the
    # closed form 0.5 * sum(mu^2 + exp(log_var) - 1 - log_var) averaged over the batch
    assert len(model.losses) == 1
    mu, log_var = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
    kl = np.mean(0.5 * np.sum(mu ** 2 + np.exp(log_var) - 1.0 - log_var, axis=-1))
    assert float(model.losses[0]) == pytest.approx(cfg.kl_weight * kl / (32 * 32), rel=1e-4, abs=1e-9)
    # a known mean and log-variance (an encoder that outputs them) and kl_weight 0.5: the closed-form value
    known_mu = np.array([[1.0, -2.0, 0.0, 0.5, 0.0, 0.0, 0.0, 3.0]] * 2, np.float32)
    known_lv = np.array([[0.0, 0.0, np.log(4.0), 0.0, -1.0, 0.0, 0.0, 0.0]] * 2, np.float32)
    expected = 0.5 * (1.0 + 4.0 + (4.0 - 1.0 - np.log(4.0)) + 0.25 + (np.exp(-1.0) - 1.0 + 1.0) + 9.0)
    weighted = build_mask_vae(MaskAEConfig(size=32, latent_dim=8, filters=(8, 16), kl_weight=0.5))
    weighted.encoder = lambda inputs, training=None: (known_mu, known_lv)  # an encoder of known output
    weighted(x, training=False)
    assert float(weighted.losses[0]) == pytest.approx(0.5 * expected / (32 * 32), rel=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        MaskAEConfig(size=30, filters=(8, 16))
    with pytest.raises(ValueError, match=r"\(N, 32, 32\)"):
        train_mask_vae(np.zeros((4, 64, 64), np.uint8), cfg, epochs=1)


def test_reconstruction_beats_chance(trained):
    model, masks = trained
    held_out = masks[80:]
    rec = reconstruct_masks(model, held_out)
    assert rec.shape == held_out.shape and rec.dtype == np.uint8
    for lab, threshold in ((1, 0.8), (2, 0.5), (3, 0.5)):
        d = np.mean([_dice(r == lab, m == lab) for r, m in zip(rec, held_out)])
        # chance: the mask of another patient, shifted; a constant prediction gives 0
        chance = np.mean([_dice(held_out[(i + 1) % len(held_out)] == lab, m == lab) for i, m in enumerate(held_out)])
        assert d > threshold, (lab, d)
        assert d > chance, (lab, d, chance)


def test_sampling_and_filtering(trained):
    model, _ = trained
    s = sample_masks(model, 8, seed=3)
    assert s.shape == (8, 64, 64) and s.dtype == np.uint8
    assert s.min() >= 0 and s.max() <= 3
    assert np.array_equal(s, sample_masks(model, 8, seed=3))
    assert not np.array_equal(s, sample_masks(model, 8, seed=4))
    valid, stats = sample_valid_masks(model, 4, validity_check(), seed=0, max_draws=200)
    assert stats["drawn"] == stats["accepted"] + stats["rejected"]
    assert stats["accepted"] == len(valid) >= 1
    for m in valid:
        assert check_mask(m) == []
    if stats["rejected"]:
        assert sum(stats["by_rule"].values()) >= stats["rejected"]
    # a budget too small to finish: fewer masks, and every draw is accounted for
    few, stats_few = sample_valid_masks(model, 50, validity_check(), seed=0, max_draws=5)
    assert len(few) <= 5 and stats_few["drawn"] == 5
    assert stats_few["accepted"] + stats_few["rejected"] == 5


def test_save_and_load(trained, tmp_path):
    model, masks = trained
    loaded = run_model_saving_test(model, to_onehot(masks[80:84]), tmp_path, atol=1e-5, name="mask_vae.keras")
    assert np.array_equal(sample_masks(loaded, 4, seed=1), sample_masks(model, 4, seed=1))
