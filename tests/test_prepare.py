"""prepare: any CAMUS layout -> seed HDF5 layout (resizing, attributes, splits, atomicity)."""

import hashlib
import json
import shutil
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

from cardigan_tf.data.h5layout import list_patients, load_arrays, read_root_attrs
from cardigan_tf.data.prepare import prepare
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.source import resolve_data
from cardigan_tf.prepare import main
from cardigan_tf.resize import resize_image_np, resize_mask_np
from cardigan_tf.files import OverwriteError

import camus_fixtures as cf


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
    assert lists["unlabelled"] == ["patient0005", "patient0006"]  # testing/ without ground truth
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
    bad = tmp_path / "bad"
    shutil.copytree(tree2019["root"], bad)
    raw = bad / "testing/patient0005/patient0005_2CH_ED.raw"
    raw.write_bytes(raw.read_bytes()[:-7])
    def cmd(out, *extra):
        return [sys.executable, "-m", "cardigan_tf.prepare", "--source", str(bad), "--out", str(out),
                "--size", "16", "--fold", "1", "--no-progress", *extra]

    # the two runs side by side (each its own output)
    strict = subprocess.Popen(cmd(tmp_path / "o.h5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    skip = subprocess.Popen(cmd(tmp_path / "skip.h5", "--skip-invalid"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        strict_err, skip_err = strict.communicate(timeout=120)[1], skip.communicate(timeout=120)[1]
    finally:
        for p in (strict, skip):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert strict.returncode == 2 and "patient0005_2CH_ED.raw: truncated data file" in strict_err
    assert not (tmp_path / "o.h5").exists()
    assert skip.returncode == 0, skip_err
    assert "skipping patient patient0005" in skip_err
    assert read_root_attrs(tmp_path / "skip.h5")["n_skipped"] == 1


def _label_testing(exp, only=None, seed=7):
    """Give the 2019 tree's testing/ patients ground truth (as the full CAMUS release has)."""
    rng = np.random.default_rng(seed)
    for pid, e in exp["patients"].items():
        if e["group"] != "testing" or (only is not None and pid not in only):
            continue
        masks = {}
        for view in cf.VIEWS:
            for phase in cf.PHASES:
                masks[(view, phase)] = cf.make_pair(rng, e["shape"])[1]
                cf.write_image(exp["root"] / "testing" / pid / f"{pid}_{view}_{phase}_gt.mhd", masks[(view, phase)])
        e["masks"], e["labelled"] = masks, True
    return exp


@pytest.fixture(scope="module")
def full2019(tmp_path_factory):
    exp = cf.write_2019_tree(tmp_path_factory.mktemp("full19") / "CAMUS", n_train=9, n_test=3, sequences=False)
    return _label_testing(exp)


def test_labelled_testing_is_the_test_split_seeded(full2019, tmp_path, capsys):
    training = sorted(p for p, e in full2019["patients"].items() if e["group"] == "training")
    testing = sorted(p for p, e in full2019["patients"].items() if e["group"] == "testing")
    with pytest.warns(UserWarning, match="no --fold"):
        out = prepare(full2019["root"], tmp_path / "a.h5", size=16, seed=5, progress=False)
    lists = list_patients(out)
    _disjoint(lists)
    assert lists["test"] == testing and "unlabelled" not in lists
    assert sorted(lists["train"] + lists["valid"]) == training
    assert len(lists["valid"]) == 1 and len(lists["train"]) == 8  # 8:1
    assert read_root_attrs(out)["split_method"] == "official_test+seeded:5"
    pid = testing[0]
    with h5py.File(out) as f:  # the test patients keep their ground truth
        np.testing.assert_array_equal(f[f"test/{pid}/4CH/gt_ref"][1], full2019["patients"][pid]["masks"][("4CH", "ES")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = prepare(full2019["root"], tmp_path / "b.h5", size=16, seed=6, progress=False)
        assert main(["--source", str(full2019["root"]), "--out", str(tmp_path / "c.h5"), "--size", "16",
                     "--seed", "5", "--no-progress"]) == 0
    assert list_patients(other)["test"] == testing  # the seed never moves a test patient
    assert list_patients(tmp_path / "c.h5") == lists  # deterministic for a seed
    printed = capsys.readouterr().out
    assert f"test: 3 patients ({' '.join(testing)})" in printed
    assert f"valid: 1 patients ({lists['valid'][0]})" in printed and "train: 8 patients" in printed
    assert "split method: official_test+seeded:5" in printed and "unlabelled" not in printed


def test_labelled_testing_with_fold_lists(full2019, tmp_path):
    fold = full2019["folds"][2]
    testing = sorted(p for p, e in full2019["patients"].items() if e["group"] == "testing")
    out = prepare(full2019["root"], tmp_path / "f.h5", size=16, fold=2, progress=False)
    lists = list_patients(out)
    _disjoint(lists)
    assert lists["test"] == testing
    assert lists["valid"] == fold["valid"]
    assert lists["train"] == sorted(fold["train"] + fold["test"])  # the fold's testing list trains
    root = read_root_attrs(out)
    assert root["split_method"] == "official_test+official:fold2" and root["fold_test_in_train"] == fold["test"]
    assert root["n_patients"] == {"train": 8, "valid": 1, "test": 3}


def test_partly_labelled_testing(tmp_path, capsys):
    exp = cf.write_2019_tree(tmp_path / "mix", n_train=4, n_test=2, sequences=False, lists=False)
    _label_testing(exp, only={"patient0005"})
    assert main(["--source", str(exp["root"]), "--out", str(tmp_path / "m.h5"), "--size", "16", "--no-progress"]) == 0
    lists = list_patients(tmp_path / "m.h5")
    assert lists["test"] == ["patient0005"] and lists["unlabelled"] == ["patient0006"]
    assert sorted(lists["train"] + lists["valid"]) == ["patient0001", "patient0002", "patient0003", "patient0004"]
    out = capsys.readouterr().out
    assert "test: 1 patients (patient0005)" in out and "unlabelled: 1 patients (patient0006)" in out


def test_fold_list_naming_an_official_test_patient_warns(full2019, tmp_path):
    root = tmp_path / "clash"
    shutil.copytree(full2019["root"], root)
    valid = root / "listSubGroups" / "subGroup1_validation.txt"
    valid.write_text(valid.read_text() + "patient0010\n")
    with pytest.warns(UserWarning, match=r"fold 1 lists are official test patients.*patient0010"):
        out = prepare(root, tmp_path / "x.h5", size=16, fold=1, progress=False)
    lists = list_patients(out)
    assert "patient0010" in lists["test"] and "patient0010" not in lists["valid"]
    assert lists["valid"] == full2019["folds"][1]["valid"]
