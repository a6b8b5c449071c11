"""Tests of cardigan_tf.metrics.segmentation: analytic shapes, medpy as an independent reference."""

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial.distance import cdist

from cardigan_tf.metrics import segmentation as seg


SPACING = (0.5, 0.25)  # (row, col) mm: anisotropic on purpose
RADIUS = 12.0  # mm


def disc(center_mm, radius=RADIUS, shape=(80, 200), spacing=SPACING):
    """Boolean disc in mm (an ellipse in pixels): pixel centres within ``radius`` of the centre."""
    sr, sc = spacing
    y = (np.arange(shape[0]) + 0.5) * sr
    x = (np.arange(shape[1]) + 0.5) * sc
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return (yy - center_mm[0]) ** 2 + (xx - center_mm[1]) ** 2 <= radius ** 2


def lens_dice(d, r=RADIUS):
    """Dice of two discs of radius r whose centres are d apart (continuous geometry)."""
    overlap = 2 * r * r * math.acos(d / (2 * r)) - 0.5 * d * math.sqrt(4 * r * r - d * d)
    return overlap / (math.pi * r * r)


def circle_mad(d, axis, r=RADIUS, spacing=SPACING, n=20000):
    """Mean distance from a circle of radius r (mm) to the same circle shifted by d mm along
    ``axis``, averaged the way a digital contour samples it: an 8-connected contour has
    max(|t_row| / row_spacing, |t_col| / col_spacing) pixels per mm of arc (t = unit tangent).
    """
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    dr, dc = (d, 0.0) if axis == 0 else (0.0, d)
    dist = np.abs(np.hypot(r * np.cos(theta) + dr, r * np.sin(theta) + dc) - r)
    weight = np.maximum(np.abs(np.sin(theta)) / spacing[0], np.abs(np.cos(theta)) / spacing[1])
    return float((dist * weight).sum() / weight.sum())


def brute_force(a, b, spacing):
    """HD and MAD from all pairwise contour point distances (independent of the EDT)."""
    def pts(m):
        c = m ^ ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1))
        return np.argwhere(c) * np.asarray(spacing)
    d = cdist(pts(a), pts(b))
    ab, ba = d.min(axis=1), d.min(axis=0)
    return max(ab.max(), ba.max()), 0.5 * (ab.mean() + ba.mean())


@pytest.mark.parametrize("axis,k", [(0, 4), (0, 9), (1, 4), (1, 15)])
def test_shifted_discs_known_distances(axis, k):
    a = disc((20.0, 25.0))
    b = np.roll(a, k, axis=axis)  # exact translate by k pixels
    shift_mm = k * SPACING[axis]
    # Hausdorff: the extreme contour point moves by exactly k pixels
    assert seg.hausdorff(a, b, SPACING) == pytest.approx(shift_mm, rel=1e-9)
    assert seg.dice(a, b) == pytest.approx(lens_dice(shift_mm), abs=0.01)
    mad = seg.mean_abs_distance(a, b, SPACING)
    assert mad == pytest.approx(brute_force(a, b, SPACING)[1], rel=1e-9)
    # continuous circles sampled like a digital contour (uniform sampling is 10-20% off)
    assert mad == pytest.approx(circle_mad(shift_mm, axis), rel=0.06)
    assert 0 < mad < shift_mm


def test_identical_masks_and_contour():
    a = disc((20.0, 25.0))
    assert seg.dice(a, a) == 1.0
    assert seg.hausdorff(a, a, SPACING) == 0.0
    assert seg.mean_abs_distance(a, a, SPACING) == 0.0
    square = np.zeros((10, 10), bool)
    square[2:7, 3:9] = True
    expected = square.copy()
    expected[3:6, 4:8] = False
    np.testing.assert_array_equal(seg.contour(square), expected)
    # a mask touching the image edge has its edge pixels in the contour
    full = np.ones((4, 5), bool)
    assert seg.contour(full).sum() == 2 * 5 + 2 * 2


def _random_blobs(rng, shape=(60, 90), sigma=4.0, level=0.6):
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return field > level


def test_agrees_with_medpy_on_random_masks(rng):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    checked = 0
    for _ in range(12):
        a = _random_blobs(rng)
        b = _random_blobs(rng) | np.roll(a, 2, axis=0)
        if not a.any() or not b.any():
            continue
        spacing = (float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.1, 0.6)))
        hd, mad = seg.surface_distances(a, b, spacing)
        assert seg.dice(a, b) == pytest.approx(medpy_binary.dc(a, b), rel=1e-9)
        assert hd == pytest.approx(medpy_binary.hd(a, b, voxelspacing=spacing, connectivity=1), rel=1e-6)
        # MAD = mean of the two directed means (medpy 0.5's assd pools the distances instead)
        ref_mad = 0.5 * (medpy_binary.asd(a, b, voxelspacing=spacing, connectivity=1)
                         + medpy_binary.asd(b, a, voxelspacing=spacing, connectivity=1))
        assert mad == pytest.approx(ref_mad, rel=1e-6)
        checked += 1
    assert checked >= 8


def test_evaluate_masks_structures_and_missing():
    gt = np.zeros((40, 50), np.uint8)
    gt[10:30, 10:25] = 2
    gt[14:26, 13:22] = 1
    gt[30:38, 12:24] = 3
    pred = gt.copy()
    pred[pred == 3] = 0  # LA missing in the prediction
    res = seg.evaluate_masks(pred, gt, (0.3, 0.2))
    assert set(res) == {"lv_endo", "lv_epi", "la"}
    assert res["lv_endo"] == {"dice": 1.0, "hd": 0.0, "mad": 0.0, "missing": False}
    assert res["lv_epi"]["dice"] == 1.0 and not res["lv_epi"]["missing"]
    assert res["la"]["missing"] is True
    assert res["la"]["dice"] == 0.0
    assert math.isnan(res["la"]["hd"]) and math.isnan(res["la"]["mad"])
    # both empty: Dice NaN
    empty = np.zeros((40, 50), np.uint8)
    res2 = seg.evaluate_masks(empty, empty, (0.3, 0.2))
    assert math.isnan(res2["lv_endo"]["dice"]) and res2["lv_endo"]["missing"]
    # epicardium = labels 1 + 2: a prediction calling the whole epicardium LV cavity
    pred_epi = np.where(gt == 2, 1, gt).astype(np.uint8)
    assert seg.evaluate_masks(pred_epi, gt, (0.3, 0.2))["lv_epi"]["dice"] == 1.0


def test_bad_inputs_raise():
    a = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        seg.evaluate_masks(a, np.zeros((10, 11), np.uint8), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        seg.evaluate_masks(a, a, (0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        seg.hausdorff(a, a, "x")
    with pytest.raises(ValueError, match="2-D"):
        seg.dice(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


def test_resize_to_original_matches_pil_and_round_trips(rng):
    small = rng.integers(0, 4, size=(16, 12)).astype(np.uint8)
    for shape in [(37, 29), (16, 12), (9, 5), (64, 48)]:
        out = seg.resize_to_original(small, shape)
        assert out.shape == shape and out.dtype == np.uint8
        ref = np.asarray(Image.fromarray(small).resize((shape[1], shape[0]), Image.NEAREST))
        np.testing.assert_array_equal(out, ref)
    # integer upscale then downscale is the identity
    up = seg.resize_to_original(small, (48, 36))
    np.testing.assert_array_equal(seg.resize_to_original(up, small.shape), small)
    assert seg.resize_to_original(small[..., None], (20, 20)).shape == (20, 20)


def test_evaluate_at_original_uses_original_grid():
    gt = np.zeros((120, 90), np.uint8)
    gt[30:90, 30:60] = 1
    small = seg.resize_to_original(gt, (40, 30))  # exact 3x downsample
    res = seg.evaluate_at_original(small, gt, (0.2, 0.4))
    assert res["lv_endo"]["dice"] == pytest.approx(1.0)
    assert res["lv_endo"]["hd"] == pytest.approx(0.0)
    shifted = np.roll(small, 1, axis=0)  # one small pixel = 3 original rows = 0.6 mm
    res = seg.evaluate_at_original(shifted, gt, (0.2, 0.4))
    assert res["lv_endo"]["hd"] == pytest.approx(0.6)


def test_postprocess_removes_island_and_fills_hole():
    m = np.zeros((40, 40), np.uint8)
    m[5:25, 5:25] = 2
    m[9:21, 9:21] = 1
    m[13:16, 13:16] = 0          # hole in the LV cavity
    m[30:33, 30:33] = 1          # stray LV island
    m[32:38, 2:10] = 3
    out = seg.postprocess(m)
    assert out.dtype == m.dtype and out.shape == m.shape
    assert (out[30:33, 30:33] == 0).all()
    assert (out[13:16, 13:16] == 1).all()
    assert (out[5:25, 5:25][m[5:25, 5:25] == 2] == 2).all()   # myocardium untouched
    assert (out == 3).sum() == (m == 3).sum()
    assert ndimage.label(out == 1)[1] == 1
    # filling never overwrites another label: an LA block inside the LV stays LA
    two = np.zeros((20, 20), np.uint8)
    two[2:18, 2:18] = 1
    two[5:8, 5:8] = 3
    two[10:14, 10:14] = 0
    out2 = seg.postprocess(two)
    assert (out2[5:8, 5:8] == 3).all()
    assert (out2[10:14, 10:14] == 1).all()
    np.testing.assert_array_equal(seg.postprocess(m, largest_component=False, fill_holes=False), m)


def test_summarize_mean_sd_and_nan_counts():
    rows = [
        seg.flatten_result({"lv_endo": {"dice": 0.9, "hd": 4.0, "mad": 1.0, "missing": False}},
                           phase="ED", view="2CH"),
        seg.flatten_result({"lv_endo": {"dice": 0.8, "hd": 6.0, "mad": 2.0, "missing": False}},
                           phase="ED", view="4CH"),
        {"phase": "ES", "view": "2CH", "lv_endo": {"dice": 0.0, "hd": float("nan"), "mad": float("nan")}},
    ]
    s = seg.summarize(rows, structures=["lv_endo"])
    assert s["ED"]["lv_endo"]["dice"]["mean"] == pytest.approx(0.85)
    assert s["ED"]["lv_endo"]["hd"]["sd"] == pytest.approx(np.std([4.0, 6.0], ddof=1))
    assert s["all"]["lv_endo"]["hd"]["n"] == 2 and s["all"]["lv_endo"]["hd"]["nan"] == 1
    assert s["ES"]["lv_endo"]["dice"] == {"mean": 0.0, "sd": 0.0, "n": 1, "nan": 0}
    assert math.isnan(s["ES"]["lv_endo"]["mad"]["mean"])
    by_view = seg.summarize(rows, group_by=("view", "phase"), structures=["lv_endo"])
    assert set(by_view) == {"all", "2CH/ED", "4CH/ED", "2CH/ES"}
