"""Units of distances and volumes (issue 19): a set without a pixel spacing (CREATIS' HDF5, a
MetaImage without ElementSpacing) stays "px" through prepare, TFRecord shards, synthetic sets,
evaluation and tuning; a .mhd set keeps its true spacing in mm. Small files in the real formats
(:mod:`camus_fixtures`), the session's tiny U-Net (``seg_run``) and mask-only GAN (``generate_gan``)."""

import csv
import json
import math
import shutil
import warnings

import h5py
import keras_tuner as kt
import numpy as np
import pytest

from cardigan_tf.config import load_config
from cardigan_tf.configs.tune import TuneConfig
from cardigan_tf.data import camus_io
from cardigan_tf.data.camus import read_camus
from cardigan_tf.data.dataset_info import iter_dataset
from cardigan_tf.data.h5layout import FORMAT_VERSION, H5Writer, iter_samples, load_arrays, read_root_attrs
from cardigan_tf.data.prepare import prepare
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.tfrecord import read_index
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.generation import generate_set
from cardigan_tf.jobs.tuning_model import UNetHyperModel
from cardigan_tf.prepare import main as prepare_main
from cardigan_tf.serving.predict_files import collect_inputs, read_input

import camus_fixtures as cf
import harness

SIZE = 64  # the prepared size of the tiny U-Net's data (seg_run)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _units(source):
    return {(tuple(s.spacing), s.meta["spacing_known"]) for _, s in iter_dataset(source)}


@pytest.fixture(scope="module")
def creatis(tmp_path_factory):
    """CREATIS' layout (no spacing anywhere) prepared to an .h5 and to TFRecords, by the CLI."""
    d = tmp_path_factory.mktemp("creatis")
    cf.write_creatis_h5(d / "camus05_256.hdf5", size=32, ref_shape=(40, 30))
    assert prepare_main(["--source", str(d / "camus05_256.hdf5"), "--out", str(d / "prepared.h5"), "--size",
                         str(SIZE), "--tfrecords", str(d / "shards"), "--no-progress"]) == 0
    return d


@pytest.fixture(scope="module")
def mhd(tmp_path_factory):
    """A 2019 MetaImage release (ElementSpacing x 0.308, y 0.154) prepared to an .h5 and TFRecords."""
    d = tmp_path_factory.mktemp("mhd")
    exp = cf.write_2019_tree(d / "CAMUS", n_train=5, n_test=1, sequences=False, lists=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(exp["root"], d / "prepared.h5", size=SIZE, tfrecords=d / "shards", progress=False)
    return d


def test_creatis_prepared_to_h5_and_tfrecords_keeps_the_unknown_spacing(creatis, capsys):
    out = creatis / "prepared.h5"
    attrs = read_root_attrs(out)
    assert attrs["format_version"] == FORMAT_VERSION and not attrs["spacing_known"]
    with h5py.File(out) as f:
        groups = [f[s][p][v] for s in ("train", "valid", "test") for p in f[s] for v in f[s][p]]
        assert groups and all(not g.attrs["spacing_known"] and "spacing" not in g.attrs for g in groups)
    assert _units(out) == {((1.0, 1.0), False)}
    assert not load_arrays(out, "train")["spacing_known"].any()
    index = read_index(creatis / "shards")
    assert index["spacing_known"] is False and {e["spacing_known"] for e in index["splits"].values()} == {False}
    assert _units(creatis / "shards") == {((1.0, 1.0), False)}
    # prepared again from the prepared file: still unknown
    again = prepare(out, creatis / "again.h5", size=32, progress=False)
    assert _units(again) == {((1.0, 1.0), False)}


def test_mhd_set_keeps_its_true_spacing_in_mm(mhd):
    assert read_root_attrs(mhd / "prepared.h5")["spacing_known"]
    assert _units(mhd / "prepared.h5") == {(cf.SPACING_RC, True)}
    assert read_index(mhd / "shards")["spacing_known"] is True
    assert _units(mhd / "shards") == {(cf.SPACING_RC, True)}  # float32 in the shards, read back exactly


def test_files_prepared_without_the_marker_are_read_by_their_source(creatis, mhd, tmp_path):
    """A format_version 1 file holds (1, 1) for CREATIS' unknown spacing and no marker: such a
    group reads as unknown; a version-1 group with a real spacing keeps it."""
    for src, name in ((creatis, "creatis_v1.h5"), (mhd, "mhd_v1.h5")):
        shutil.copy(src / "prepared.h5", tmp_path / name)
        with h5py.File(tmp_path / name, "r+") as f:
            f.attrs["format_version"] = 1
            del f.attrs["spacing_known"]
            for s in f:
                for p in f[s]:
                    for v in f[s][p]:
                        g = f[s][p][v]
                        del g.attrs["spacing_known"]
                        if "spacing" not in g.attrs:
                            g.attrs["spacing"] = np.array([1.0, 1.0])
    assert _units(tmp_path / "creatis_v1.h5") == {((1.0, 1.0), False)}
    assert _units(tmp_path / "mhd_v1.h5") == {(cf.SPACING_RC, True)}


def test_bad_spacing_records_are_refused(tmp_path):
    im = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="patient0001/2CH/spacing: expected two positive mm values"):
        with H5Writer(tmp_path / "bad.h5") as w:
            w.write_view("train", "patient0001", "2CH", im, None, spacing=(0.0, 0.3))
    assert not (tmp_path / "bad.h5").exists()
    with H5Writer(tmp_path / "lying.h5") as w:
        w.write_view("train", "patient0001", "2CH", im, None, spacing=(0.2, 0.3))
    with h5py.File(tmp_path / "lying.h5", "r+") as f:
        del f["train/patient0001/2CH"].attrs["spacing"]
    with pytest.raises(DataError, match=r"lying\.h5:train/patient0001/2CH\.attrs: spacing_known is True but there is "
                                        "no 'spacing' attribute"):
        list(iter_samples(tmp_path / "lying.h5"))


def test_metaimage_without_element_spacing_has_no_spacing(tmp_path):
    """SimpleITK reads a header without ElementSpacing as 1 mm; the readers say "unknown"."""
    exp = cf.write_2019_tree(tmp_path / "CAMUS", n_train=2, n_test=0, sequences=False, lists=False)
    for header in (tmp_path / "CAMUS").rglob("*.mhd"):
        lines = header.read_text().splitlines()
        header.write_text("\n".join(ln for ln in lines if not ln.startswith("ElementSpacing")) + "\n")
    one = next((tmp_path / "CAMUS").rglob("patient0001_2CH_ED.mhd"))
    arr, spacing, _ = camus_io.read_frames(one, single=True)
    assert spacing is None and arr.shape == exp["patients"]["patient0001"]["shape"]
    assert read_input(collect_inputs([one])[0]).spacing is None  # predict: no volumes in ml
    samples = list(read_camus(exp["root"]))
    assert samples and all(s.spacing == (1.0, 1.0) and not s.meta["spacing_known"] for s in samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = prepare(exp["root"], tmp_path / "p.h5", size=16, progress=False)
    assert _units(out) == {((1.0, 1.0), False)}


def _evaluate(run, data, out):
    summary = evaluate_run(run, data=str(data), split="test", out=out)
    return summary, _csv(out / "per_image.csv"), _csv(out / "clinical.csv"), (out / "report.md").read_text()


def test_evaluate_says_px_on_prepared_creatis_files_and_their_shards(seg_run, creatis, tmp_path):
    for name, data in (("h5", creatis / "prepared.h5"), ("shards", creatis / "shards")):
        summary, rows, clinical, report = _evaluate(seg_run, data, tmp_path / name)
        assert summary["spacing_known"] is False and summary["distance_unit"] == "px", name
        assert summary["units"] == {"dice": "fraction", "hd": "px", "mad": "px", "edv": None, "esv": None, "ef": "%"}
        assert rows and {r["distance_unit"] for r in rows} == {"px"}
        assert "HD (px)" in report and "MAD (px)" in report and "HD (mm)" not in report and summary["warnings"]
        assert clinical and all(math.isnan(float(r["edv_pred"])) and r["volume_unit"] == "" for r in clinical)
        hd = [float(r["lv_endo_hd"]) for r in rows if r["lv_endo_hd"] not in ("", "nan")]
        assert all(0 <= h <= math.hypot(40, 30) for h in hd)  # pixels of the 40 x 30 original grid
    assert {r["gt_source"] for r in rows} == {"working"}  # shards hold the working-size frames only


def test_evaluate_says_mm_on_a_prepared_mhd_set_and_its_shards(seg_run, mhd, tmp_path):
    for name, data in (("h5", mhd / "prepared.h5"), ("shards", mhd / "shards")):
        summary, rows, clinical, report = _evaluate(seg_run, data, tmp_path / name)
        assert summary["spacing_known"] is True and summary["distance_unit"] == "mm", name
        assert summary["units"]["edv"] == "ml" and not summary["warnings"]
        assert {r["distance_unit"] for r in rows} == {"mm"} and {r["volume_unit"] for r in clinical} == {"ml"}
        assert "HD (mm)" in report and "(px)" not in report


def _as_px(src, dst):
    """A copy of a prepared file whose view groups record no spacing (as CREATIS' data)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for s in f:
            for p in f[s]:
                for v in f[s][p]:
                    g = f[s][p][v]
                    g.attrs["spacing_known"] = False
                    del g.attrs["spacing"]
    return dst


def test_synthetic_images_inherit_their_masks_spacing_and_status(generate_gan, tmp_path):
    run, data, _ = generate_gan
    mm = generate_set(run, tmp_path / "mm.h5", n=4, preview=False)
    real = {s.patient: s.spacing for _, s in iter_samples(data, ["train"])}
    for _, s in iter_samples(mm):
        assert s.meta["spacing_known"] and s.spacing == pytest.approx(real[s.meta["source_patient"]])
    assert read_root_attrs(mm)["spacing_known"]
    px_run = tmp_path / "gan-px"
    shutil.copytree(run, px_run)
    record = json.loads((px_run / "data.json").read_text())
    record.update(path=str(_as_px(data, tmp_path / "px.h5")), relative=None)
    (px_run / "data.json").write_text(json.dumps(record))
    px = generate_set(px_run, tmp_path / "px_synth.h5", n=4, preview=False)
    assert _units(px) == {((1.0, 1.0), False)} and not read_root_attrs(px)["spacing_known"]


@pytest.mark.parametrize("fmt", ["h5", "shards"])
def test_tuning_metrics_name_the_unit_of_their_data(creatis, mhd, fmt):
    """The tuner's per-structure validation metrics: unit-free keys and the data's unit, for
    prepared files and TFRecord folders alike."""
    cfg = load_config(TuneConfig, None, harness.TUNE_TINY)
    for root, unit in ((creatis, "px"), (mhd, "mm")):
        data = root / ("prepared.h5" if fmt == "h5" else "shards")
        hm = UNetHyperModel(cfg, data, steps=1)
        hp = kt.HyperParameters()
        model = hm.build(hp)
        metrics, got = hm.structure_metrics(model, hm.seg_config(hp))
        assert got == unit
        assert {f"val_{s}_{m}" for s in ("lv_endo", "lv_epi", "la") for m in ("dice", "hd", "mad")} == set(metrics)
        assert not any(k.endswith(("_mm", "_px")) for k in metrics)
