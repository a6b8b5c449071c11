"""Mask deformation: shapes, labels, real change, identity limit, validity and rejection counting."""

import copy

import numpy as np
import pytest

from cardigan_tf.data.deform import (
    DeformConfig,
    NoValidMaskError,
    base_anchor,
    deform_mask,
    deform_set,
    deform_until_valid,
    scale_structures,
)
from cardigan_tf.data.masks import MaskRules, check_mask
from cardigan_tf.labels import LA, LV, MYO

from harness import phantom_masks


NO_CHANGE = DeformConfig(rotation_deg=0, scale=0, shear=0, translate=0, elastic_sigma=0,
                         epi_scale=0, lv_rel_scale=0, la_scale=0)


def _masks(rng, n=6, size=64):
    return list(phantom_masks(n, size, rng))


def test_zero_deformation_is_identity(rng):
    for m in _masks(rng, 3):
        assert np.array_equal(deform_mask(m, rng, NO_CHANGE), m)


def test_deformed_masks_change_and_keep_labels(rng):
    cfg = DeformConfig()
    for m in _masks(rng, 4):
        d = deform_mask(m, rng, cfg)
        assert d.shape == m.shape and d.dtype == np.uint8
        assert set(np.unique(d)) <= {0, 1, 2, 3}
        changed = np.mean(d != m)
        assert 0.005 < changed < 0.4
        # areas stay in the same ballpark
        for lab in (LV, MYO, LA):
            ratio = (d == lab).sum() / (m == lab).sum()
            assert 0.5 < ratio < 2.0


def test_deformation_is_seeded(rng):
    m = _masks(rng, 1)[0]
    a = deform_mask(m, np.random.default_rng(5), DeformConfig())
    b = deform_mask(m, np.random.default_rng(5), DeformConfig())
    c = deform_mask(m, np.random.default_rng(6), DeformConfig())
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_translation_moves_the_heart(rng):
    m = _masks(rng, 1)[0]
    cfg = DeformConfig(rotation_deg=0, scale=0, shear=0, translate=0.1, elastic_sigma=0,
                       epi_scale=0, lv_rel_scale=0, la_scale=0, clean=False)
    d = deform_mask(m, np.random.default_rng(0), cfg)
    shift = np.argwhere(d == LV).mean(0) - np.argwhere(m == LV).mean(0)
    # three structure scales and rotation, scale, shear are drawn before the translation
    rng0 = np.random.default_rng(0)
    rng0.uniform(size=6)
    expected = rng0.uniform(-0.1, 0.1, size=2) * np.array(m.shape)
    assert np.allclose(shift, expected, atol=1.0)


def test_structure_scaling_about_the_base(rng):
    m = _masks(rng, 1)[0]
    anchor = base_anchor(m)
    lv = np.argwhere(m == LV)
    # the anchor lies on the basal end of the cavity, next to the LA
    assert np.min(np.linalg.norm(np.argwhere(m == LA) - anchor, axis=1)) < 0.2 * np.ptp(lv[:, 0]) + 2
    big = scale_structures(m, 1.1, 1.0, 1.0)
    small = scale_structures(m, 0.9, 1.0, 1.0)
    assert (big == LV).sum() > (m == LV).sum() > (small == LV).sum()
    thick = scale_structures(m, 1.0, 0.85, 1.0)  # cavity shrinks inside the same epicardium
    assert (thick == MYO).sum() > (m == MYO).sum()
    assert np.array_equal(np.isin(thick, (LV, MYO)), np.isin(m, (LV, MYO)))
    bigger_la = scale_structures(m, 1.0, 1.0, 1.2)
    assert (bigger_la == LA).sum() > (m == LA).sum()


def test_deform_until_valid_returns_valid_masks(rng):
    """The first valid draw is returned, and ``n`` is the number of invalid draws before it:
    counted here by replaying the same random stream through ``deform_mask`` and ``check_mask``."""
    cfg = DeformConfig()
    rejected = 0
    for m in _masks(rng, 6):
        replay = copy.deepcopy(rng)
        d, n = deform_until_valid(m, rng, cfg, max_tries=30)
        assert check_mask(d) == []
        invalid = 0
        while check_mask(first := deform_mask(m, replay, cfg)):
            invalid += 1
        assert n == invalid
        np.testing.assert_array_equal(d, first)
        assert replay.bit_generator.state == rng.bit_generator.state  # no draw left uncounted
        rejected += n
    assert rejected < 6 * 30


def test_rejections_are_counted_and_exhaustion_raises(rng):
    m = _masks(rng, 1)[0]
    impossible = MaskRules(lv_area=(0.9, 1.0))
    with pytest.raises(NoValidMaskError) as info:
        deform_until_valid(m, rng, DeformConfig(), max_tries=3, rules=impossible)
    assert info.value.n_rejected == 3
    assert any(p.startswith("area") for p in info.value.last_problems)
    # wild deformations are rejected sometimes: the count must show it
    wild = DeformConfig(elastic_sigma=0.06, elastic_grid=8, lv_rel_scale=0.5, epi_scale=0.3)
    counts = []
    for _ in range(5):
        try:
            counts.append(deform_until_valid(m, rng, wild, max_tries=10)[1])
        except NoValidMaskError as exc:
            counts.append(exc.n_rejected)
    assert sum(counts) > 0


def test_config_validation():
    with pytest.raises(ValueError, match="interpolation"):
        DeformConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="scale"):
        DeformConfig(scale=1.5)
    with pytest.raises(ValueError, match="elastic_grid"):
        DeformConfig(elastic_grid=1)
    with pytest.raises(ValueError, match="shape"):
        deform_mask(np.zeros((2, 8, 8), np.uint8), np.random.default_rng(0))


def test_onehot_interpolation(rng):
    m = _masks(rng, 1)[0]
    d = deform_mask(m, rng, DeformConfig(interpolation="onehot"))
    assert d.shape == m.shape and set(np.unique(d)) <= {0, 1, 2, 3}
    assert 0.005 < np.mean(d != m) < 0.4


def test_deform_set_counts(rng):
    masks = np.stack(_masks(rng, 3))
    out, source, stats = deform_set(masks, 2, rng, DeformConfig(), max_tries=20)
    assert out.shape == (6, *masks.shape[1:]) and out.dtype == np.uint8
    assert list(source) == [0, 0, 1, 1, 2, 2]
    assert stats["accepted"] == 6 and stats["failed"] == 0
    assert stats["drawn"] == stats["accepted"] + stats["rejected"]
    assert all(check_mask(m) == [] for m in out)
    impossible = MaskRules(la_area=(0.9, 1.0))
    out, source, stats = deform_set(masks, 2, rng, DeformConfig(), max_tries=2, rules=impossible)
    assert len(out) == 0 and len(source) == 0
    # every draw fails the impossible area rule (a draw may fail another rule as well)
    assert {k: stats[k] for k in ("drawn", "accepted", "rejected", "failed")} == {
        "drawn": 12, "accepted": 0, "rejected": 12, "failed": 6}
    assert stats["by_rule"]["area"] == 12
