"""CAMUS readers: round trips for the three layouts (files written in the real formats) and
a clear DataError for each kind of bad input."""

import hashlib
import shutil
import warnings

import h5py
import numpy as np
import pytest

from cardigan_tf.data.camus import detect_layout, read_camus
from cardigan_tf.data.sample import DataError, EmptyDatasetError

import camus_fixtures as cf


@pytest.fixture(scope="module")
def tree2019(tmp_path_factory):
    root = tmp_path_factory.mktemp("c19") / "CAMUS"
    return cf.write_2019_tree(root)


@pytest.fixture(scope="module")
def tree2023(tmp_path_factory):
    return cf.write_2023_tree(tmp_path_factory.mktemp("c23") / "CAMUS_public")


@pytest.fixture(scope="module")
def creatis(tmp_path_factory):
    return cf.write_creatis_h5(tmp_path_factory.mktemp("cr") / "camus05_32.hdf5")


@pytest.fixture
def copy2019(tree2019, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tree2019["root"], dst)
    return dst


def _check_roundtrip(ds, expected, check_cfg=True):
    seen = {}
    for s in ds:
        seen[(s.patient, s.view, s.phase)] = s
    exp_keys = {(p, v, ph) for p in expected["patients"] for v in cf.VIEWS for ph in cf.PHASES}
    assert set(seen) == exp_keys
    for (p, v, ph), s in seen.items():
        e = expected["patients"][p]
        assert s.image.dtype == np.float32 and s.image.shape == (*e["shape"], 1)
        assert s.original_shape == e["shape"]
        np.testing.assert_allclose(s.image[..., 0], e["images"][(v, ph)] / 255.0, atol=1e-6)
        if e["masks"] is None:
            assert s.mask is None
        else:
            assert s.mask.dtype == np.uint8
            np.testing.assert_array_equal(s.mask, e["masks"][(v, ph)])
            assert set(np.unique(s.mask)) == {0, 1, 2, 3}
        np.testing.assert_allclose(s.spacing, e["spacing"], rtol=1e-6)
        if check_cfg:
            assert s.meta["cfg"] == e["cfg"][v]
            assert s.quality == e["quality"][v]
            assert s.meta["ed_frame"] == e["cfg"][v]["ED"] and s.meta["es_frame"] == e["cfg"][v]["ES"]
            assert s.meta["frame"] == e["cfg"][v][ph]
    return seen


def test_detect_layout(tree2019, tree2023, creatis, tmp_path):
    assert detect_layout(tree2019["root"]) == "camus2019"
    assert detect_layout(tree2019["root"] / "training") == "camus2019"  # folder of patient folders
    assert detect_layout(tree2023["root"]) == "camus2023"
    assert detect_layout(tree2023["root"] / "database_nifti") == "camus2023"
    assert detect_layout(creatis["root"]) == "h5"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="junk.*expected a CAMUS dataset"):
        detect_layout(tmp_path / "junk")
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nothing")
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="x.h5"):
        detect_layout(tmp_path / "x.h5")


def test_2019_roundtrip(tree2019):
    ds = read_camus(tree2019["root"])
    assert ds.layout == "camus2019"
    assert ds.patients == sorted(tree2019["patients"])
    seen = _check_roundtrip(ds, tree2019)
    s = seen[("patient0002", "2CH", "ED")]  # cfg written with lowercase quality
    assert s.quality == "Poor" and s.meta["cfg"]["ImageQuality"] == "poor"
    assert isinstance(s.meta["cfg"]["Age"], int) and isinstance(s.meta["cfg"]["LVef"], float)
    assert s.meta["cfg"]["Sex"] == "M" and s.meta["ef"] == pytest.approx(47.13)
    assert s.meta["group"] == "training" and seen[("patient0005", "4CH", "ES")].meta["group"] == "testing"
    # source files: relative names with their sha256
    files = s.meta["source_files"]
    raw = "training/patient0002/patient0002_2CH_ED.raw"
    assert raw in files and "training/patient0002/Info_2CH.cfg" in files
    assert files[raw] == hashlib.sha256((tree2019["root"] / raw).read_bytes()).hexdigest()
    assert "sequence" not in s.meta
    assert ds.official_split(1) == tree2019["folds"][1] and ds.folds() == [1, 2]


def test_2019_testing_with_ground_truth_is_labelled(tree2019, copy2019):
    """The full release's testing/ has ground truth: those patients are read as labelled."""
    rng = np.random.default_rng(11)
    masks = {}
    for view in cf.VIEWS:
        for phase in cf.PHASES:
            masks[(view, phase)] = cf.make_pair(rng, tree2019["patients"]["patient0005"]["shape"])[1]
            cf.write_image(copy2019 / "testing/patient0005" / f"patient0005_{view}_{phase}_gt.mhd", masks[(view, phase)])
    ds = read_camus(copy2019)
    entries = {e.patient: e for e in ds.entries}
    assert entries["patient0005"].group == "testing" and entries["patient0005"].labelled
    assert entries["patient0006"].group == "testing" and not entries["patient0006"].labelled
    assert entries["patient0001"].group == "training" and entries["patient0001"].labelled
    seen = {(s.patient, s.view, s.phase): s for s in read_camus(copy2019, groups=["testing"])}
    np.testing.assert_array_equal(seen[("patient0005", "2CH", "ES")].mask, masks[("2CH", "ES")])
    assert seen[("patient0006", "2CH", "ES")].mask is None


def test_2019_compressed_and_sequences(tmp_path):
    exp = cf.write_2019_tree(tmp_path / "z", n_train=2, n_test=1, compressed=True, lists=False)
    assert list((tmp_path / "z/training/patient0001").glob("*.zraw"))
    ds = read_camus(tmp_path / "z", with_sequences=True)
    seen = _check_roundtrip(ds, exp)
    seq = seen[("patient0001", "4CH", "ED")].meta["sequence"]
    assert seq is seen[("patient0001", "4CH", "ES")].meta["sequence"]
    assert seq.frames.shape == (3, *exp["patients"]["patient0001"]["shape"], 1) and seq.masks is None
    np.testing.assert_allclose(seq.frames[seq.ed - 1, ..., 0], exp["patients"]["patient0001"]["images"][("4CH", "ED")] / 255.0)
    np.testing.assert_allclose(seq.frames[seq.es - 1, ..., 0], exp["patients"]["patient0001"]["images"][("4CH", "ES")] / 255.0)
    assert seq.spacing == pytest.approx(cf.SPACING_RC)


def test_2023_roundtrip_2d_and_one_slice_nifti(tree2023):
    ds = read_camus(tree2023["root"], with_sequences=True)
    assert ds.layout == "camus2023" and ds.official_split() == tree2023["split"]
    seen = _check_roundtrip(ds, tree2023)
    s = seen[("patient0003", "2CH", "ES")]
    assert s.meta["cfg"]["EF"] == 58 and isinstance(s.meta["cfg"]["EF"], int) and s.meta["frame_rate"] == 50
    seq = s.meta["sequence"]
    assert seq.masks is not None and seq.masks.shape == seq.frames.shape[:3] == (4, 76, 51)
    np.testing.assert_array_equal(seq.masks[-1], tree2023["patients"]["patient0003"]["masks"][("2CH", "ES")])
    # pointing at database_nifti directly works too
    assert read_camus(tree2023["root"] / "database_nifti").patients == ds.patients


def test_creatis_h5_roundtrip(creatis):
    ds = read_camus(creatis["root"])
    assert ds.layout == "h5" and ds.official_split() == creatis["split"]
    seen = _check_roundtrip(ds, creatis, check_cfg=False)
    assert all(s.meta["resolution"] == "original" and not s.meta["spacing_known"] for s in seen.values())


def _first_raw(root, name):
    return next(root.rglob(name))


@pytest.mark.parametrize("case,pattern", [
    ("missing_raw", r"patient0003_2CH_ES\.raw: missing data file"),
    ("truncated_raw", r"patient0003_2CH_ES\.raw: truncated data file: expected \d+ bytes"),
    ("three_slices", r"patient0003_2CH_ES\.mhd: expected a 2-D image or a 3-D one with a single slice"),
    ("bad_label", r"patient0003_4CH_ED_gt\.mhd: ground truth value\(s\) \[7\] outside"),
    ("gt_shape", r"patient0003_4CH_ED_gt\.mhd: ground truth shape \(10, 12\)"),
    ("bad_cfg", r"Info_4CH\.cfg: line 5: expected 'Key: value'"),
    ("missing_phase", r"patient0003_4CH_ES\.mhd: missing: patient patient0003 has no 4CH ES image"),
    ("missing_gt", r"patient0003_2CH_ED_gt\.mhd: missing ground truth"),
    ("missing_cfg", r"Info_2CH\.cfg: missing cfg file"),
    ("oversized_raw", r"patient0003_2CH_ES\.raw: data file size does not match its header: expected 3876 bytes"),
    ("dimsize_edit", r"patient0003_2CH_ED\.mhd: expected a 2-D image or a 3-D one with a single slice, got DimSize 51 x 76 x 2"),
    ("bad_number", r"Info_4CH\.cfg: line 10: LVef: expected a number, got 'forty'"),
    ("bad_frame", r"Info_2CH\.cfg: ES: expected a positive integer frame index"),
])
def test_bad_input_raises_clear_error(copy2019, case, pattern):
    pdir = copy2019 / "training" / "patient0003"
    p = "patient0003"
    if case == "missing_raw":
        (pdir / f"{p}_2CH_ES.raw").unlink()
    elif case == "truncated_raw":
        raw = pdir / f"{p}_2CH_ES.raw"
        raw.write_bytes(raw.read_bytes()[:100])
    elif case == "three_slices":
        cf.write_image(pdir / f"{p}_2CH_ES.mhd", np.zeros((3, 76, 51), np.uint8))
    elif case == "bad_label":
        m = cf.make_pair(np.random.default_rng(0), (76, 51))[1]
        m[0, 0] = 7
        cf.write_image(pdir / f"{p}_4CH_ED_gt.mhd", m)
    elif case == "gt_shape":
        cf.write_image(pdir / f"{p}_4CH_ED_gt.mhd", np.zeros((10, 12), np.uint8))
    elif case == "bad_cfg":
        cfg = pdir / "Info_4CH.cfg"
        lines = cfg.read_text().splitlines()
        lines.insert(4, "this line has no separator")
        cfg.write_text("\n".join(lines))
    elif case == "missing_phase":
        for f in pdir.glob(f"{p}_4CH_ES.*"):
            f.unlink()
    elif case == "missing_gt":
        for f in pdir.glob(f"{p}_2CH_ED_gt.*"):
            f.unlink()
    elif case == "oversized_raw":
        raw = pdir / f"{p}_2CH_ES.raw"
        raw.write_bytes(raw.read_bytes() + b"\0" * 10)
    elif case == "dimsize_edit":
        hdr = pdir / f"{p}_2CH_ED.mhd"
        hdr.write_text(hdr.read_text().replace("DimSize = 51 76 1", "DimSize = 51 76 2"))
    elif case == "bad_number":
        cfg = pdir / "Info_4CH.cfg"
        cfg.write_text(cfg.read_text().replace("LVef: 47.13", "LVef: forty"))
    elif case == "bad_frame":
        cfg = pdir / "Info_2CH.cfg"
        cfg.write_text(cfg.read_text().replace("ES: 3", "ES: 0"))
    elif case == "missing_cfg":
        (pdir / "Info_2CH.cfg").unlink()
    with pytest.raises(DataError, match=pattern) as info:
        list(read_camus(copy2019))
    assert info.value.patient == p


def test_empty_dataset(tmp_path):
    (tmp_path / "training").mkdir()
    with pytest.raises(EmptyDatasetError, match="no patient found"):
        read_camus(tmp_path)


def test_skip_invalid_warns_and_records(copy2019):
    (copy2019 / "training/patient0003/patient0003_2CH_ES.raw").unlink()
    cfg = copy2019 / "testing/patient0006/Info_4CH.cfg"
    cfg.write_text(cfg.read_text() + "garbage\n")
    ds = read_camus(copy2019, skip_invalid=True)
    with pytest.warns(UserWarning, match="skipping patient patient0003"):
        patients = sorted({s.patient for s in ds})
    assert patients == ["patient0001", "patient0002", "patient0004", "patient0005"]
    assert [s["patient"] for s in ds.skipped] == ["patient0003", "patient0006"]
    assert "missing data file" in ds.skipped[0]["reason"] and "line" in ds.skipped[1]["reason"]


def test_skip_invalid_all_bad_is_empty(tmp_path):
    exp = cf.write_2019_tree(tmp_path / "t", n_train=1, n_test=0, sequences=False, lists=False)
    (tmp_path / "t/training/patient0001/patient0001_2CH_ED.raw").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EmptyDatasetError, match="1 skipped"):
            list(read_camus(exp["root"], skip_invalid=True))


def test_h5_skip_invalid(tmp_path):
    exp = cf.write_creatis_h5(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "a") as f:
        gt = f["train/patient0002/4CH/gt_ref"][()]
        gt[0, 0, 0] = 9
        f["train/patient0002/4CH/gt_ref"][...] = gt
    with pytest.raises(DataError, match="patient0002/4CH/gt_ref: ground truth value"):
        list(read_camus(exp["root"]))
    ds = read_camus(exp["root"], skip_invalid=True)
    with pytest.warns(UserWarning, match="patient0002"):
        got = sorted({s.patient for s in ds})
    assert got == sorted(set(exp["patients"]) - {"patient0002"}) and len(ds.skipped) == 1


def test_nifti_not_2d(tree2023, tmp_path):
    dst = tmp_path / "c23"
    shutil.copytree(tree2023["root"], dst)
    cf.write_image(dst / "database_nifti/patient0001/patient0001_2CH_ED.nii.gz", np.zeros((2, 72, 49), np.uint8))
    with pytest.raises(DataError, match=r"patient0001_2CH_ED\.nii\.gz: expected a 2-D image"):
        list(read_camus(dst))


def test_truncated_compressed_and_nifti(tree2023, tmp_path):
    exp = cf.write_2019_tree(tmp_path / "z", n_train=1, n_test=0, compressed=True, sequences=False, lists=False)
    pdir = exp["root"] / "training/patient0001"
    hdr = pdir / "patient0001_4CH_ES_gt.mhd"
    hdr.write_text("".join(ln for ln in hdr.read_text().splitlines(True) if "CompressedDataSize" not in ln))
    z = pdir / "patient0001_4CH_ES_gt.zraw"
    z.write_bytes(z.read_bytes()[:40])
    with pytest.raises(DataError, match=r"patient0001_4CH_ES_gt\.zraw: truncated or corrupt compressed data"):
        list(read_camus(exp["root"]))
    dst = tmp_path / "c23"
    shutil.copytree(tree2023["root"], dst)
    nii = dst / "database_nifti/patient0002/patient0002_4CH_ED_gt.nii.gz"
    nii.write_bytes(nii.read_bytes()[: nii.stat().st_size // 2])
    with pytest.raises(DataError, match=r"patient0002_4CH_ED_gt\.nii\.gz: truncated"):
        list(read_camus(dst))


def _handwritten_mhd(path, arr):
    """A MetaImage header as the CAMUS release ships it (not written by SimpleITK)."""
    h, w = arr.shape
    path.with_suffix(".raw").write_bytes(arr.astype(np.uint8).tobytes())
    path.write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        "CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 0.308 0.154 1.54\n"
        f"DimSize = {w} {h} 1\nElementType = MET_UCHAR\nElementDataFile = {path.with_suffix('.raw').name}\n")


def test_handwritten_headers_numeric_order_and_duplicates(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "flat"
    written = {}
    for pid in ("patient10", "patient9"):
        d = root / pid
        d.mkdir(parents=True)
        for view in cf.VIEWS:
            (d / f"Info_{view}.cfg").write_text("\r\nED: 1\r\nES: 12\r\n\r\nNbFrame: 12\r\nSex: F\r\nAge: 69\r\n"
                                               "ImageQuality: GOOD\r\nLVedv: 100\r\nLVesv: 52.87\r\nLVef: 47.13\r\n")
            for phase in cf.PHASES:
                im, m = cf.make_pair(rng, (31, 22))
                _handwritten_mhd(d / f"{pid}_{view}_{phase}.mhd", im)
                _handwritten_mhd(d / f"{pid}_{view}_{phase}_gt.mhd", m)
                written[(pid, view, phase)] = (im, m)
    ds = read_camus(root)
    assert ds.layout == "camus2019" and ds.patients == ["patient9", "patient10"]
    got = {(s.patient, s.view, s.phase): s for s in ds}
    assert set(got) == set(written)
    for key, (im, m) in written.items():
        s = got[key]
        np.testing.assert_array_equal(np.round(s.image[..., 0] * 255).astype(np.uint8), im)
        np.testing.assert_array_equal(s.mask, m)
        assert s.spacing == pytest.approx((0.154, 0.308)) and s.original_shape == (31, 22)
        assert s.quality == "Good" and s.meta["cfg"]["LVedv"] == 100 and s.meta["cfg"]["Sex"] == "F"
    (tmp_path / "two/training").mkdir(parents=True)
    (tmp_path / "two/testing").mkdir(parents=True)
    shutil.copytree(root / "patient9", tmp_path / "two/training/patient9")
    shutil.copytree(root / "patient9", tmp_path / "two/testing/patient9")
    with pytest.raises(DataError, match="patient9 appears twice"):
        read_camus(tmp_path / "two")


def test_group_and_patient_filters(tree2019, creatis):
    ds = read_camus(tree2019["root"], groups=["testing"])
    assert ds.patients == ["patient0005", "patient0006"] and all(s.mask is None for s in ds)
    ds = read_camus(creatis["root"], patients=["patient0002", "patient0005"])
    assert sorted({(s.meta["group"], s.patient) for s in ds}) == [("test", "patient0005"), ("train", "patient0002")]
    with pytest.raises(EmptyDatasetError, match="matching"):
        read_camus(tree2019["root"], patients=["nobody"])
