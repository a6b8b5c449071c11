"""Anatomical validity checks: phantom/simple masks pass, broken masks fail with the right rule."""

import numpy as np
import pytest
from scipy import ndimage

from cardigan_tf.data.masks import MaskRules, check_mask, clean_mask, count_rejections, is_valid, rule_of
from cardigan_tf.labels import LA, LV, MYO

from _heart_masks import draw_heart  # noqa: E402
from harness import phantom_masks


def _rules(mask, rules=None):
    return {rule_of(p) for p in check_mask(mask, rules)}


def _phantom_masks(size=64, n=4):
    return list(phantom_masks(4 * n, size, seed=7, pattern="nested"))


@pytest.fixture
def heart(rng):
    return draw_heart(rng, 64)


def test_simple_masks_are_valid(rng):
    for _ in range(20):
        m = draw_heart(rng, 64)
        assert check_mask(m) == [], check_mask(m)
        assert is_valid(m)


@pytest.mark.parametrize("size", [64, 128])
def test_phantom_masks_are_valid(size):
    for m in _phantom_masks(size):
        assert check_mask(m) == []


def test_missing_structure(heart):
    for lab, name in ((LV, "lv_cavity"), (MYO, "myocardium"), (LA, "left_atrium")):
        m = heart.copy()
        m[m == lab] = 0
        problems = check_mask(m)
        assert f"missing: {name}" in problems


def test_hole_in_lv_cavity(heart):
    m = heart.copy()
    rows, cols = np.nonzero(m == LV)
    r, c = int(np.median(rows)), int(np.median(cols))
    m[r - 1 : r + 1, c - 1 : c + 1] = 0
    assert "holes" in _rules(m)
    fixed = clean_mask(m)
    assert is_valid(fixed)


def test_hole_in_myocardium(heart):
    m = heart.copy()
    myo = np.argwhere(m == MYO)
    # a background pixel inside the thick apical wall
    apex_row = myo[:, 0].min()
    col = int(np.median(myo[myo[:, 0] == apex_row + 1, 1]))
    m[apex_row + 1, col] = 0
    assert "holes" in _rules(m)


def test_split_structure(heart):
    m = heart.copy()
    la = np.argwhere(m == LA)
    r, c = int(np.median(la[:, 0])), int(la[:, 1].max())
    m[r - 1 : r + 2, c + 3 : c + 8] = LA  # a separate LA blob
    assert "components" in _rules(m)
    assert is_valid(clean_mask(m))


def test_split_myocardium_by_cut(heart):
    m = heart.copy()
    myo_rows = np.nonzero((m == MYO).any(axis=1))[0]
    # cut the apical cap: erase myocardium in a band of columns at the apex so the U splits
    top = myo_rows.min()
    cols = np.nonzero(m[top] == MYO)[0]
    m[: top + 4, cols.min() - 3 : cols.max() + 4][m[: top + 4, cols.min() - 3 : cols.max() + 4] == MYO] = 0
    found = _rules(m)
    assert "components" in found or "exposed" in found


def test_la_detached(heart):
    m = heart.copy()
    la = m == LA
    m[la] = 0
    m[np.roll(la, 6, axis=0) & (m == 0)] = LA
    assert "la_contact" in _rules(m)


def test_la_on_the_side_is_not_basal(heart):
    m = heart.copy()
    m[m == LA] = 0
    epi_cols = np.nonzero((m > 0).any(axis=0))[0]
    lv_rows = np.nonzero((m == LV).any(axis=1))[0]
    mid = int(lv_rows.mean())
    right = epi_cols.max() + 1
    m[mid - 4 : mid + 4, right : right + 8] = LA
    assert "la_contact" in _rules(m), check_mask(m)


def test_lv_exposed_on_the_side(heart):
    m = heart.copy()
    lv_rows = np.nonzero((m == LV).any(axis=1))[0]
    mid = int(lv_rows.mean())
    row = m[mid - 3 : mid + 3]
    lv_cols = np.nonzero((m == LV).any(axis=0))[0]
    right_wall = row[:, lv_cols.max() + 1 :]
    right_wall[right_wall == MYO] = 0  # open a window in the lateral wall
    problems = check_mask(m)
    assert any(p.startswith("exposed") and "away from the base" in p for p in problems), problems


def test_closed_base_is_rejected(heart):
    m = heart.copy()
    lv = np.argwhere(m == LV)
    base_row = lv[:, 0].max()
    m[base_row][m[base_row] == LV] = MYO
    assert "open_base" in _rules(m)
    assert "open_base" not in _rules(m, MaskRules(require_open_base=False))


def test_area_ranges(heart):
    assert "area" in _rules(heart, MaskRules(lv_area=(0.3, 0.5)))
    assert "area" in _rules(heart, MaskRules(min_lv_pixels=10_000))
    assert "area" not in _rules(heart, MaskRules(skip=("area",), lv_area=(0.3, 0.5)))
    # a wall much thicker than the cavity: shrink the cavity inside the same epicardium
    thick = heart.copy()
    lv = thick == LV
    thick[lv & ~ndimage.binary_erosion(lv, iterations=4)] = MYO
    ratio = (thick == MYO).sum() / (thick == LV).sum()
    assert ratio > 3.0
    assert any("ratio" in p for p in check_mask(thick)), check_mask(thick)


def test_rules_validation_and_bad_input(heart):
    with pytest.raises(ValueError, match="connectivity"):
        MaskRules(connectivity=6)
    with pytest.raises(ValueError, match="lv_area"):
        MaskRules(lv_area=(0.5, 0.1))
    with pytest.raises(ValueError, match="myo_to_lv"):
        MaskRules(myo_to_lv=(-1.0, 2.0))
    with pytest.raises(ValueError, match="skip"):
        MaskRules(skip=("nonsense",))
    with pytest.raises(ValueError, match="shape"):
        check_mask(heart[None])
    with pytest.raises(ValueError, match="0..3"):
        check_mask(heart * 2)


def test_count_rejections(heart):
    broken = heart.copy()
    broken[broken == LA] = 0
    counts = count_rejections([heart, heart, broken])
    assert counts["valid"] == 2
    assert counts["missing"] == 1
