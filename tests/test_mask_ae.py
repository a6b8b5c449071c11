"""Mask VAE: trains in seconds on 64x64 masks, reconstructs well above chance, samples and
filters new masks with counted rejections, saves and loads."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cardigan_tf.data.masks import check_mask, validity_check  # noqa: E402
from cardigan_tf.models.mask_ae import (  # noqa: E402
    MaskAEConfig,
    build_mask_vae,
    reconstruct_masks,
    sample_masks,
    sample_valid_masks,
    to_onehot,
    train_mask_vae,
)
from _heart_masks import draw_heart  # noqa: E402


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _training_masks(n=96, size=64):
    rng = np.random.default_rng(0)
    try:
        from cardigan_tf.data import phantom
    except ImportError:
        return np.stack([draw_heart(rng, size) for _ in range(n)])
    return np.stack([phantom.make_pair(rng, ("2CH", "4CH")[i % 2], ("ED", "ES")[(i // 2) % 2], size)[1]
                     for i in range(n)])


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
    # the KL term is added as a loss
    assert len(model.losses) == 1 and float(model.losses[0]) >= 0
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
    path = tmp_path / "mask_vae.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = to_onehot(masks[80:84])
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5)
    assert np.array_equal(sample_masks(loaded, 4, seed=1), sample_masks(model, 4, seed=1))
