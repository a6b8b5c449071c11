"""prepare: any CAMUS layout -> seed HDF5 layout (resizing, attributes, splits, atomicity)."""

import hashlib
import json
import shutil
import warnings

import h5py
import numpy as np
import pytest

import camus_fixtures as cf
from cardigan_tf.data.h5layout import list_patients, load_arrays, read_root_attrs
from cardigan_tf.data.prepare import prepare
from cardigan_tf.prepare import main
from cardigan_tf.resize import resize_image_np, resize_mask_np
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.source import resolve_data
from cardigan_tf.runs import OverwriteError


@pytest.fixture(scope="module")
def tree2019(tmp_path_factory):
    return cf.write_2019_tree(tmp_path_factory.mktemp("p19") / "CAMUS", sequences=False)


def _disjoint(lists):
    seen = {}
    for split, pats in lists.items():
        for p in pats:
            assert p not in seen, f"{p} in {seen.get(p)} and {split}"
            seen[p] = split
    return seen


def test_prepare_2019_fold(tree2019, tmp_path):
    out = prepare(tree2019["root"], tmp_path / "c.h5", size=32, fold=2, progress=False)
    lists = list_patients(out)
    fold = tree2019["folds"][2]
    assert {k: lists[k] for k in ("train", "valid", "test")} == fold
    assert lists["unlabelled"] == ["patient0005", "patient0006"]
    _disjoint(lists)
    root = read_root_attrs(out)
    assert root["source_layout"] == "camus2019" and root["size"] == 32 and root["fold"] == 2
    assert root["split_method"] == "official:fold2" and root["n_skipped"] == 0 and root["skipped"] == []
    with h5py.File(out) as f:
        for split, pats in lists.items():
            for p in pats:
                e = tree2019["patients"][p]
                for view in cf.VIEWS:
                    g = f[f"{split}/{p}/{view}"]
                    assert g["im"].shape == (2, 32, 32) and g["im_ref"].shape == (2, *e["shape"])
                    np.testing.assert_allclose(g["im_ref"][1], e["images"][(view, "ES")] / 255.0, atol=1e-6)
                    np.testing.assert_allclose(g["im"][0], resize_image_np(e["images"][(view, "ED")] / 255.0, 32), atol=1e-6)
                    if e["labelled"]:
                        np.testing.assert_array_equal(g["gt_ref"][0], e["masks"][(view, "ED")])
                        np.testing.assert_array_equal(g["gt"][1], resize_mask_np(e["masks"][(view, "ES")], 32))
                    else:
                        assert "gt" not in g and "gt_ref" not in g
                    np.testing.assert_allclose(g.attrs["spacing"], cf.SPACING_RC)
                    assert tuple(g.attrs["original_shape"]) == e["shape"]
                    assert g.attrs["quality"] == e["quality"][view]
                    assert json.loads(g.attrs["cfg"]) == e["cfg"][view]
                    assert g.attrs["source_layout"] == "camus2019"
                    files = json.loads(g.attrs["source_files"])
                    raw = f"{e['group']}/{p}/{p}_{view}_ES.raw"
                    assert files[raw] == hashlib.sha256((tree2019["root"] / raw).read_bytes()).hexdigest()
    arrays = load_arrays(out, "train")
    assert arrays["image"].shape == (4 * len(fold["train"]), 32, 32, 1)
    np.testing.assert_allclose(arrays["spacing"], np.tile(cf.SPACING_RC, (len(arrays["image"]), 1)))


def test_prepare_seeded_split_when_no_fold(tree2019, tmp_path):
    with pytest.warns(UserWarning, match="no --fold"):
        a = prepare(tree2019["root"], tmp_path / "a.h5", size=16, seed=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = prepare(tree2019["root"], tmp_path / "b.h5", size=16, seed=3, progress=False)
    la, lb = list_patients(a), list_patients(b)
    assert la == lb and read_root_attrs(a)["split_method"] == "seeded:3"
    seen = _disjoint(la)
    assert sorted(seen) == sorted(tree2019["patients"])


def test_prepare_2023_official_and_creatis(tmp_path):
    exp = cf.write_2023_tree(tmp_path / "c23", n=4)
    out = prepare(exp["root"], tmp_path / "o23.h5", size=16, progress=False)
    assert list_patients(out) == exp["split"]
    assert read_root_attrs(out)["split_method"] == "official"
    with pytest.raises(DataError, match="only the 2019 release has fold lists"):
        prepare(exp["root"], tmp_path / "f.h5", size=16, fold=1, progress=False)
    cr = cf.write_creatis_h5(tmp_path / "camus05.hdf5")
    out2 = prepare(cr["root"], tmp_path / "ocr.h5", size=16, progress=False)
    assert list_patients(out2) == cr["split"]
    with h5py.File(out2) as f:
        np.testing.assert_array_equal(f["valid/patient0004/2CH/gt_ref"][1], cr["patients"]["patient0004"]["masks"][("2CH", "ES")])


def test_refuses_overwrite_and_atomic_on_error(tree2019, tmp_path, capsys):
    out = tmp_path / "c.h5"
    prepare(tree2019["root"], out, size=16, fold=1, progress=False)
    before = out.read_bytes()
    with pytest.raises(OverwriteError, match="--overwrite"):
        prepare(tree2019["root"], out, size=16, fold=1, progress=False)
    assert main(["--source", str(tree2019["root"]), "--out", str(out), "--size", "16", "--fold", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    bad = tmp_path / "bad"
    shutil.copytree(tree2019["root"], bad)
    (bad / "training/patient0004/patient0004_4CH_ED_gt.raw").unlink()
    with pytest.raises(DataError, match="patient0004_4CH_ED_gt.raw"):
        prepare(bad, tmp_path / "bad.h5", size=16, fold=1, progress=False)
    assert not list(tmp_path.glob("*bad.h5*"))  # nothing written half
    assert main(["--source", str(bad), "--out", str(out), "--size", "16", "--fold", "1", "--overwrite",
                 "--skip-invalid", "--no-progress"]) == 0
    root = read_root_attrs(out)
    assert root["n_skipped"] == 1 and root["skipped"][0]["patient"] == "patient0004"
    assert "patient0004" not in sum(list_patients(out).values(), [])


def test_phantom_cli_and_resolve_data(tree2019, tmp_path):
    out = tmp_path / "ph.h5"
    assert main(["--phantom", "--patients", "3", "--size", "32", "--out", str(out)]) == 0
    assert sorted(sum(list_patients(out).values(), [])) == ["phantom0000", "phantom0001", "phantom0002"]
    work = tmp_path / "work"
    ph = resolve_data(None, work, size=32, n_phantom=3)
    assert ph == work / "phantom.h5" and resolve_data(None, work, size=32, n_phantom=3) == ph
    assert resolve_data(str(out), work) == out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = resolve_data(str(tree2019["root"]), work, size=16)
    assert cam == work / "camus_16.h5" and read_root_attrs(cam)["size"] == 16
    assert resolve_data(str(tree2019["root"]), work, size=16) == cam  # reused, not rewritten
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="x.txt: not an HDF5 file in the seed layout"):
        resolve_data(str(tmp_path / "x.txt"), work)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data(str(work / "missing"), work)
    (work / "empty").mkdir()
    with pytest.raises(DataError, match="empty: expected a CAMUS dataset"):
        resolve_data(str(work / "empty"), work)


def test_cli_subprocess_reports_bad_input(tree2019, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad"
    shutil.copytree(tree2019["root"], bad)
    raw = bad / "testing/patient0005/patient0005_2CH_ED.raw"
    raw.write_bytes(raw.read_bytes()[:-7])
    cmd = [sys.executable, "-m", "cardigan_tf.data.prepare", "--source", str(bad), "--out", str(tmp_path / "o.h5"),
           "--size", "16", "--fold", "1", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "patient0005_2CH_ED.raw: truncated data file" in res.stderr
    assert not (tmp_path / "o.h5").exists()
    res = subprocess.run(cmd + ["--skip-invalid"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "skipping patient patient0005" in res.stderr
    assert read_root_attrs(tmp_path / "o.h5")["n_skipped"] == 1
