"""The built-in echo phantom: plausible labels and geometry, image-quality levels and acquisition
styles, determinism, the HDF5 round trip, its config."""

import numpy as np
import pytest
from scipy import ndimage

from cardigan_tf.config import ConfigError
from cardigan_tf.configs.seg import build_seg_config
from cardigan_tf.configs.study import build_study_config
from cardigan_tf.data import h5layout, phantom, phantom_anatomy, phantom_imaging
from cardigan_tf.data.dataset_info import dataset_info
from cardigan_tf.data.source import resolve_data
from cardigan_tf.labels import LA, LV, MYO, PHASES, QUALITIES, VIEWS
from cardigan_tf.prepare import main as prepare_main
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


GOOD = phantom.PhantomConfig(quality_mix=[1.0, 0.0, 0.0])


def test_4ch_has_dark_right_heart_labelled_background():
    size = 128
    sector = phantom_imaging.grid(size)["sector"]
    for index in range(4):
        p = phantom.draw_patient(np.random.default_rng([0, index]), GOOD.quality_mix)  # make_patient's parameters
        samples = {(s.view, s.phase): s for s in phantom.make_patient(index, seed=0, size=size, phantom=GOOD)}
        for view in VIEWS:
            for phase in PHASES:
                v = p["views"][view]
                mask, cls = phantom._labels(phantom_anatomy.frame_geometry(p, v, phase), size, view, v, "A")
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
    for s in phantom.make_patient(7, seed=0, size=128, phantom=GOOD):
        img = s.image[..., 0]
        inner_lv = ndimage.binary_erosion(s.mask == LV, iterations=3)
        inner_myo = ndimage.binary_erosion(s.mask == MYO, iterations=1)
        assert img[inner_lv].mean() < 0.5 * img[inner_myo].mean()
        assert (img[~phantom_imaging.grid(128)["sector"]] == 0).all()


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


# ----------------------------------------------------------------------------- quality and style
ONLY = {q: phantom.PhantomConfig(quality_mix=[float(q == x) for x in QUALITIES]) for q in QUALITIES}


def _cnr(image, mask):
    """Contrast-to-noise ratio between the myocardium and the LV cavity (eroded, off the borders)."""
    cavity = image[ndimage.binary_erosion(mask == LV, iterations=1)]
    myo = image[ndimage.binary_erosion(mask == MYO)]
    return (myo.mean() - cavity.mean()) / np.sqrt(cavity.var() + myo.var())


@pytest.mark.parametrize("style", ["A", "B"])
def test_quality_levels_lose_contrast_on_the_same_anatomy(style):
    cnr = {}
    for q in QUALITIES:
        cfg = phantom.PhantomConfig(quality_mix=ONLY[q].quality_mix, style=style)
        samples = [s for i in range(4) for s in phantom.make_patient(i, seed=2, size=64, phantom=cfg)]
        assert {s.quality for s in samples} == {q}
        cnr[q] = [_cnr(s.image[..., 0], s.mask) for s in samples]
        masks = [s.mask for s in samples]
        if q != "Good":  # the quality draw does not move the anatomy
            for m, ref in zip(masks, good_masks):
                np.testing.assert_array_equal(m, ref)
        else:
            good_masks = masks
    mean = {q: float(np.mean(v)) for q, v in cnr.items()}
    assert mean["Good"] > 1.4 * mean["Medium"] > 1.4 * 1.2 * mean["Poor"], mean
    assert mean["Poor"] > 0.5, mean  # poor, not blank: the cavity is still darker than the wall
    # paired per image, the poorer rendering of the same frame has the lower contrast almost always
    assert np.mean(np.array(cnr["Good"]) > np.array(cnr["Medium"])) >= 0.9
    assert np.mean(np.array(cnr["Medium"]) > np.array(cnr["Poor"])) >= 0.8


def test_quality_mix_sets_the_frequencies():
    n = 400
    drawn = [phantom.draw_patient(np.random.default_rng([9, i]))["quality"] for i in range(n)]
    for q, f in zip(QUALITIES, phantom_imaging.DEFAULT_QUALITY_MIX):
        sd = np.sqrt(f * (1 - f) / n)
        assert abs(drawn.count(q) / n - f) < 3.5 * sd, (q, drawn.count(q))
    mix = [0.0, 0.3, 0.7]
    drawn = [phantom.draw_patient(np.random.default_rng([9, i]), mix)["quality"] for i in range(n)]
    assert drawn.count("Good") == 0 and abs(drawn.count("Poor") / n - 0.7) < 3.5 * np.sqrt(0.21 / n)


def test_style_changes_depth_and_sector_width():
    size = 128
    cfg = {st: phantom.PhantomConfig(style=st) for st in phantom_imaging.STYLES}
    samples = {st: phantom.make_patient(1, seed=0, size=size, phantom=c) for st, c in cfg.items()}
    for st, acq in phantom_imaging.STYLES.items():
        s = samples[st][0]
        assert s.meta["style"] == st
        assert s.spacing == pytest.approx((acq.depth_mm / size, acq.width_mm / size))
        # the widest angle and the deepest radius of the non-black pixels, from the image alone
        rows, cols = np.nonzero(s.image[..., 0] > 0)
        y, x = (rows + 0.5) * s.spacing[0], (cols + 0.5 - size / 2) * s.spacing[1]
        angle = np.degrees(np.abs(np.arctan2(x, y))).max()
        assert acq.half_angle_deg - 2.0 < angle <= acq.half_angle_deg + 1e-3, (st, angle)
        assert acq.radius_mm - 2 * s.spacing[0] < np.hypot(x, y).max() <= acq.radius_mm + 1e-3
    # the same cavity (within 10 % in mm^2) fills fewer pixels in the deeper style B
    px = {st: (samples[st][0].mask == LV).sum() for st in samples}
    mm2 = {st: px[st] * np.prod(samples[st][0].spacing) for st in samples}
    assert px["B"] < 0.95 * px["A"] and abs(mm2["B"] / mm2["A"] - 1) < 0.1, (px, mm2)
    for s in samples["B"]:  # still one component per structure
        for lab in (LV, MYO, LA):
            assert ndimage.label(s.mask == lab, CROSS)[1] == 1


def test_quality_and_style_round_trip_through_write_and_read(tmp_path):
    cfg = phantom.PhantomConfig(quality_mix=[0.2, 0.3, 0.5], style="A", test_style="B")
    path = phantom.write_h5(tmp_path / "shift.h5", n_patients=8, seed=5, size=64, phantom=cfg, preview=False)
    attrs = h5layout.read_root_attrs(path)
    assert (attrs["quality_mix"], attrs["style"], attrs["test_style"]) == ("0.2,0.3,0.5", "A", "B")
    seen = {}
    for split, s in h5layout.iter_samples(path):
        ref = phantom.make_patient(int(s.patient[-4:]), seed=5, size=64, phantom=cfg, split=split)
        ref = next(r for r in ref if (r.view, r.phase) == (s.view, s.phase))
        assert s.quality == ref.quality and s.meta["style"] == ("B" if split == "test" else "A")
        np.testing.assert_allclose(s.image, ref.image, atol=1e-6)
        assert s.spacing == pytest.approx(phantom_imaging.spacing_for(64, s.meta["style"]))
        seen.setdefault(split, set()).add(s.meta["style"])
    assert seen["test"] == {"B"} and seen["train"] == seen["valid"] == {"A"}
    info = dataset_info(path)
    assert set(info["test"]["styles"]) == {"B"} and set(info["train"]["styles"]) == {"A"}
    assert sum(info["train"]["qualities"].values()) == info["train"]["frames"]


def test_write_h5_fractions_set_the_split_sizes(tmp_path):
    cfg = phantom.PhantomConfig(test_style="B")
    path = phantom.write_h5(tmp_path / "few.h5", n_patients=11, seed=2, size=64, phantom=cfg, preview=False,
                            fractions=(3 / 11, 2 / 11, 6 / 11))
    pats = h5layout.list_patients(path)
    assert {k: len(v) for k, v in pats.items()} == {"train": 3, "valid": 2, "test": 6}
    assert sorted(p for v in pats.values() for p in v) == [f"phantom{i:04d}" for i in range(11)]
    assert "fractions" in h5layout.read_root_attrs(path)["split_method"]
    assert {s.meta["style"] for split, s in h5layout.iter_samples(path, ["test"])} == {"B"}
    with pytest.raises(ValueError, match="sum to 1"):
        phantom.write_h5(tmp_path / "bad.h5", n_patients=4, size=64, preview=False, fractions=(0.5, 0.1, 0.1))

def test_phantom_config_is_deterministic_per_seed(tmp_path):
    cfg = phantom.PhantomConfig(quality_mix=[0.0, 0.5, 0.5], style="B")
    a, b = (phantom.make_patient(3, seed=1, size=64, phantom=cfg) for _ in range(2))
    c = phantom.make_patient(3, seed=2, size=64, phantom=cfg)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
    assert not np.array_equal(a[0].image, c[0].image)
    # resolve_data: a file per config, reused when asked again, another one for other values
    first = resolve_data(None, tmp_path, size=64, seed=1, n_phantom=3, phantom=cfg)
    assert first.name == "phantom_q0-50-50_B.h5"
    assert resolve_data(None, tmp_path, size=64, seed=1, n_phantom=3, phantom=cfg) == first
    other = resolve_data(None, tmp_path, size=64, seed=1, n_phantom=3)
    assert other.name == "phantom.h5" and h5layout.read_root_attrs(other)["style"] == "A"
    same = phantom.PhantomConfig(quality_mix=[0.35, 0.5, 0.15], style="A", test_style="A")  # the default phantom
    assert resolve_data(None, tmp_path, size=64, seed=1, n_phantom=3, phantom=same) == other


@pytest.mark.parametrize("overrides, message", [
    (["data.phantom.quality_mix=[0.5, 0.5]"], r"phantom.quality_mix: expected 3 fractions"),
    (["data.phantom.quality_mix=[0.5, 0.2, 0.2]"], r"summing to 1.*sum 0.9"),
    (["data.phantom.quality_mix=[1.2, -0.2, 0]"], r"fractions >= 0"),
    (["data.phantom.style=C"], r"phantom.style: expected one of \['A', 'B'\], got 'C'"),
    (["data.phantom.test_style=b"], r"phantom.test_style: expected one of"),
    (["data.phantom.gain=2"], r"unknown key 'gain'"),
])
def test_bad_phantom_config_values_raise_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_seg_config("tiny", None, overrides)


def test_bad_phantom_arguments():
    with pytest.raises(ConfigError, match="phantom.style"):
        phantom.make_patient(0, phantom=phantom.PhantomConfig(style="Z"))
    with pytest.raises(ValueError, match="style"):
        phantom.draw_patient(np.random.default_rng(0), style="Z")
    cfg = build_study_config(None, ["phantom.quality_mix=[0, 0, 1]", "phantom.test_style=B"])
    assert cfg.phantom.style_of("test") == "B" and cfg.phantom.style_of("valid") == "A"
    with pytest.raises(ConfigError, match="phantom.quality_mix"):
        build_study_config(None, ["phantom.quality_mix=[0, 0, 2]"])


def test_prepare_writes_a_configured_phantom(tmp_path, capsys):
    out = tmp_path / "p.h5"
    assert prepare_main(["--phantom", "--patients", "10", "--size", "64", "--out", str(out),
                         "--set", "quality_mix=[0, 0, 1]", "--set", "test_style=B"]) == 0
    styles = {split: s.meta["style"] for split, s in h5layout.iter_samples(out)}
    assert styles == {"train": "A", "valid": "A", "test": "B"}
    assert {s.quality for _, s in h5layout.iter_samples(out)} == {"Poor"}
    capsys.readouterr()
    assert prepare_main(["--phantom", "--out", str(tmp_path / "q.h5"), "--set", "style=C"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "phantom.style" in err and "'C'" in err and not (tmp_path / "q.h5").exists()
