"""The built-in echo phantom: plausible labels and geometry, determinism, the HDF5 round trip."""

import numpy as np
import pytest
from scipy import ndimage

from cardigan_tf.data import h5layout, phantom, phantom_anatomy
from cardigan_tf.labels import LA, LV, MYO, PHASES, VIEWS
from cardigan_tf.files import OverwriteError


CROSS = ndimage.generate_binary_structure(2, 1)


def _touch(mask, a, b):
    """True when some pixel of label a has a 4-neighbour of label b."""
    return bool((ndimage.binary_dilation(mask == a, CROSS) & (mask == b)).any())


@pytest.mark.parametrize("size", [64, 128])
def test_each_structure_one_component_and_adjacent(size):
    for index in range(12):
        for s in phantom.make_patient(index, seed=3, size=size):
            m = s.mask
            assert m.dtype == np.uint8 and m.shape == (size, size)
            assert set(np.unique(m)) == {0, LV, MYO, LA}, (index, s.view, s.phase)
            for lab in (LV, MYO, LA):
                _, n = ndimage.label(m == lab, CROSS)
                assert n == 1, (index, s.view, s.phase, lab, n)
            assert _touch(m, LV, MYO) and _touch(m, LV, LA)
            assert s.image.dtype == np.float32 and s.image.shape == (size, size, 1)
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0 and np.isfinite(s.image).all()
            s.validate()


def test_myocardium_surrounds_cavity_except_at_base():
    for index in range(6):
        for s in phantom.make_patient(index, seed=0, size=128):
            m = s.mask
            lv = np.argwhere(m == LV).astype(float)
            axis = np.argwhere(m == LA).mean(0) - lv.mean(0)  # long axis, pointing at the atrium
            axis /= np.linalg.norm(axis)
            proj = (lv - lv.mean(0)) @ axis
            ring = ndimage.binary_dilation(m == LV, CROSS) & ~(m == LV)
            # the cavity meets the background only at its base (the last ~15% towards the LA) ...
            lv_bg = np.argwhere(ndimage.binary_dilation((m == 0) & ring, CROSS) & (m == LV)).astype(float)
            if len(lv_bg):
                assert ((lv_bg - lv.mean(0)) @ axis).min() >= np.quantile(proj, 0.85), (index, s.view, s.phase)
            # ... and most of its border is myocardium
            assert (ring & (m == MYO)).sum() > 0.7 * ring.sum()
            assert (ring & (m == LA)).sum() >= 3


def test_es_cavity_smaller_and_wall_thicker_than_ed():
    for index in range(10):
        samples = {(s.view, s.phase): s.mask for s in phantom.make_patient(index, seed=1, size=128)}
        for view in VIEWS:
            ed, es = samples[(view, "ED")], samples[(view, "ES")]
            assert (es == LV).sum() < (ed == LV).sum()
            # mean wall thickness ~ area / perimeter-ish: compare myo area per cavity boundary length
            def thickness(m):
                edge = (ndimage.binary_dilation(m == LV, CROSS) & (m == MYO)).sum()
                return (m == MYO).sum() / max(edge, 1)
            assert thickness(es) > thickness(ed)


def test_4ch_has_dark_right_heart_labelled_background():
    size = 128
    sector = phantom._grid(size)["sector"]
    for index in range(4):
        p = phantom.draw_patient(np.random.default_rng([0, index]))  # make_patient's parameters
        samples = {(s.view, s.phase): s for s in phantom.make_patient(index, seed=0, size=size)}
        for view in VIEWS:
            for phase in PHASES:
                v = p["views"][view]
                mask, cls = phantom._labels(phantom_anatomy.frame_geometry(p, v, phase), size, view, v)
                s = samples[(view, phase)]
                np.testing.assert_array_equal(mask, s.mask)
                # blood-filled regions (tissue class 4) that carry the background label
                rh = ndimage.binary_erosion((cls == 4) & (mask == 0) & sector, iterations=2)
                if view == "2CH":
                    assert rh.sum() == 0
                    continue
                assert rh.sum() > 100, (index, phase, rh.sum())
                img = s.image[..., 0]
                myo = ndimage.binary_erosion(mask == MYO)
                assert img[rh].mean() < 0.5 * img[myo].mean()


def test_image_contrast_blood_dark_myocardium_bright():
    for s in phantom.make_patient(7, seed=0, size=128):
        img = s.image[..., 0]
        inner_lv = ndimage.binary_erosion(s.mask == LV, iterations=3)
        inner_myo = ndimage.binary_erosion(s.mask == MYO, iterations=1)
        assert img[inner_lv].mean() < 0.5 * img[inner_myo].mean()
        assert (img[~phantom._grid(128)["sector"]] == 0).all()


def test_deterministic_for_seed_and_different_for_other_seed():
    a = phantom.make_patient(2, seed=0, size=64)
    b = phantom.make_patient(2, seed=0, size=64)
    c = phantom.make_patient(2, seed=1, size=64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
    assert not np.array_equal(a[0].mask, c[0].mask)
    im1, m1 = phantom.make_pair(np.random.default_rng(5), "4CH", "ES", size=64)
    im2, m2 = phantom.make_pair(np.random.default_rng(5), "4CH", "ES", size=64)
    im3, _ = phantom.make_pair(np.random.default_rng(6), "4CH", "ES", size=64)
    np.testing.assert_array_equal(im1, im2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(im1, im3)
    assert im1.dtype == np.float32 and m1.dtype == np.uint8 and im1.shape == (64, 64)


def test_patient_record_fields():
    samples = phantom.make_patient(11, seed=0, size=64)
    assert [(s.view, s.phase) for s in samples] == [(v, p) for v in VIEWS for p in PHASES]
    for s in samples:
        assert s.patient == "phantom0011"
        assert s.original_shape == (64, 64)
        assert s.quality in ("Good", "Medium", "Poor")
        # about 15 cm deep
        assert 140 <= s.spacing[0] * 64 <= 160
    cfg = samples[0].meta["cfg"]
    assert cfg["LVedv"] > cfg["LVesv"] > 0 and 0 < cfg["LVef"] < 100


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="view"):
        phantom.make_pair(rng, "3CH", "ED")
    with pytest.raises(ValueError, match="phase"):
        phantom.make_pair(rng, "2CH", "MID")


def test_write_h5_round_trip_preview_and_splits(tmp_path):
    path = phantom.write_h5(tmp_path / "ph.h5", n_patients=10, seed=4, size=64)
    assert path.is_file() and path.with_suffix(".png").is_file()
    attrs = h5layout.read_root_attrs(path)
    assert attrs["source_layout"] == "phantom"
    pats = h5layout.list_patients(path)
    seen = [p for ps in pats.values() for p in ps]
    assert sorted(seen) == [f"phantom{i:04d}" for i in range(10)] and len(seen) == len(set(seen))
    assert all(len(pats[s]) >= 1 for s in ("train", "valid", "test"))
    direct = {(s.patient, s.view, s.phase): s for i in range(10) for s in phantom.make_patient(i, seed=4, size=64)}
    n = 0
    for split, s in h5layout.iter_samples(path):
        ref = direct[(s.patient, s.view, s.phase)]
        np.testing.assert_allclose(s.image, ref.image, atol=1e-6)
        np.testing.assert_array_equal(s.mask, ref.mask)
        assert s.spacing == pytest.approx(ref.spacing) and s.quality == ref.quality
        assert s.patient in pats[split]
        n += 1
    assert n == 40
    with pytest.raises(OverwriteError):
        phantom.write_h5(path, n_patients=2, size=64)
    phantom.write_h5(path, n_patients=2, size=64, overwrite=True, preview=False)
    assert sum(len(v) for v in h5layout.list_patients(path).values()) == 2
