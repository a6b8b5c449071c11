"""The per-image outputs of the serving signatures (``uncertainty``, ``qc_flags``,
``disagreement``) on deliberately bad images, against the NumPy reference, through the ONNX
twin, the backends and predict's CSV (cardigan_tf.serving.signatures, .output_check, .local,
.predict).

The key U-Net (``key_seg_run``, LV endo Dice >= 0.80) reads dark regions as blood pools, as an
echo image shows them. On good phantom images its LV cavity and LA pass every check; at 64 px
its myocardium is not always one piece and often closes into a ring at the base
(``myo_components``, ``myo_holes``, ``epi_holes``). Each bad image raises at least one flag of the cavity
or the atrium, and these for a reason:

- pure noise: no coherent cavity, the labels scatter into pieces: ``lv_components``;
- a flat grey frame: no dark pool, so no cavity and no atrium: ``lv_empty``, ``la_empty``;
- an all-zero frame: one dark pool, read as blood; which structure the U-Net calls it is not
  determinable, so only "some cavity or atrium flag" and an uncertainty above every good
  image's are asserted;
- the heart shifted 40 rows down (the base and the LA leave the frame): the cavity left is the
  apex, about as wide as long: ``long_axis``.
"""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from cardigan_tf import inference
from cardigan_tf.metrics.anatomy import QC_FLAGS, flag_names, qc_flags_batch
from cardigan_tf.models.ensemble import build_ensemble
from cardigan_tf.serving import export as ex
from cardigan_tf.serving import export_check as chk
from cardigan_tf.serving.contract import qc_columns
from cardigan_tf.serving.local import RunBackend, SavedModelBackend
from cardigan_tf.serving.output_check import compare_scores, qc_flags_match, reference_scores
from cardigan_tf.serving.predict import open_backend, predict_files
from cardigan_tf.serving.testing import make_test_export, tiny_test_unet

import harness

#: flags of the myocardium alone; every other flag concerns the LV cavity or the LA
MYO_FLAGS = {"myo_empty", "myo_components", "myo_holes", "epi_holes"}
#: each bad image and the flags it must raise (module docstring)
EXPECTED = {"noise": {"lv_components"}, "flat grey": {"lv_empty", "la_empty"}, "all zero": set(),
            "shifted out": {"long_axis"}}


def _bad_images(good):
    shifted = np.zeros_like(good[0])
    shifted[40:] = good[0, :24]
    return {"noise": np.random.default_rng(0).random((64, 64)).astype(np.float32),
            "flat grey": np.full((64, 64), 0.5, np.float32), "all zero": np.zeros((64, 64), np.float32),
            "shifted out": shifted}


@pytest.fixture(scope="module")
def key_served(key_seg_run):
    """The key U-Net's serving module (the export's graph, not saved), its Keras model and extra."""
    kind, model, _run, _path, extra = ex.load_source(key_seg_run)
    return ex.build_module(kind, model, extra), model, extra


def _serve(module, images):
    return {k: v.numpy() for k, v in module.serving_default(tf.constant(np.stack(images))).items()}


def test_bad_images_raise_their_flags_and_good_ones_only_myocardium_flags(key_served, key_seg_run):
    module, model, extra = key_served
    good = harness.phantom_pairs(8, 64, seed=11)[0][..., 0]
    bad = _bad_images(good)
    out_good, out_bad = _serve(module, list(good)), _serve(module, list(bad.values()))
    good_names = [set(flag_names(f)) for f in out_good["qc_flags"]]
    assert all(names <= MYO_FLAGS for names in good_names), good_names
    for (what, expected), flags, u in zip(EXPECTED.items(), out_bad["qc_flags"], out_bad["uncertainty"]):
        names = set(flag_names(flags))
        assert flags != 0 and names - MYO_FLAGS, (what, names)
        assert expected <= names, (what, names)
    assert out_bad["uncertainty"][2] > out_good["uncertainty"].max()  # the all-zero frame
    assert np.mean([len(n) for n in good_names]) < np.mean([len(flag_names(f)) for f in out_bad["qc_flags"]])
    assert out_bad["uncertainty"].mean() > out_good["uncertainty"].mean()
    # the graph's answers are the NumPy reference's (combine_members; anatomy on the working-size map)
    x = np.stack([*good, *bad.values()])
    ref = chk.reference_outputs("seg", model, extra, {"image": x})
    both = {k: np.concatenate([out_good[k], out_bad[k]]) for k in out_good}
    assert chk.compare_outputs("seg", ref, both, "key") <= 1e-4
    # the NumPy backend of the run answers the same flags
    np.testing.assert_array_equal(RunBackend(key_seg_run).predict({"image": x})["qc_flags"], both["qc_flags"])


def test_qc_flags_match_tries_the_runner_up_at_near_ties_only():
    probs = np.zeros((16, 16, 4), np.float32)
    probs[..., 0] = 1.0
    probs[4:12, 5:11, 0], probs[4:12, 5:11, 1] = 0.0, 1.0  # an LV block: lv flags only from empty myo/la
    flags = int(qc_flags_batch(probs.argmax(-1)[None])[0])
    assert qc_flags_match(flags, probs)
    hole = probs.copy()
    hole[8, 8] = [0.5, 0.5 - 1e-5, 0.0, 0.0]  # a near-tie inside the cavity: background by a hair
    with_hole = int(qc_flags_batch(hole.argmax(-1)[None])[0])
    assert "lv_holes" in flag_names(with_hole) and qc_flags_match(flags, hole) and qc_flags_match(with_hole, hole)
    clear = probs.copy()
    clear[8, 8] = [0.9, 0.1, 0.0, 0.0]  # the same hole, no near-tie: only its own flags
    assert not qc_flags_match(flags, clear)


def test_onnx_and_predict_csv_carry_the_flags(exported, tmp_path):
    """The tiny run's export: ONNX Runtime answers the SavedModel's flags (checked against the
    NumPy checks of the working-size label map); predict's CSV has them per image."""
    folder = exported / "seg" / "1"
    good = harness.phantom_pairs(2, 64, seed=11)[0][..., 0]
    images = [*good, *_bad_images(good).values()]
    saved = SavedModelBackend(folder).predict({"image": np.stack(images)})
    sess = ort.InferenceSession(str(folder / ex.ONNX_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    onnx = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: np.stack(images)})))
    got = {k: onnx[next(n for n in names if k in n)] for k in ("uncertainty", "qc_flags")}
    fixed_input = inference.model_input(images, inference.Preprocessing(64))  # at the chain's first size
    working = SavedModelBackend(folder).predict({"image": fixed_input}, "serving_fixed")
    ref = {"uncertainty": saved["uncertainty"], "qc_flags": saved["qc_flags"],
           "working_probabilities": working["probabilities"]}
    assert compare_scores(ref, got, "onnx") <= 1e-4
    np.testing.assert_array_equal(qc_flags_batch(working["mask"]), working["qc_flags"])
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"im{i}.npy")
        np.save(files[-1], im)
    result = predict_files(open_backend(str(folder)), [str(f) for f in files], tmp_path / "out", progress=False)
    with open(result.out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["qc_flags"]) for r in rows] == saved["qc_flags"].tolist()
    for r, flags in zip(rows, saved["qc_flags"]):
        assert {k: int(r[k]) for k in qc_columns(flags)} == qc_columns(flags)
        assert r["disagreement"] == ""  # one model: no disagreement
    np.testing.assert_allclose([float(r["uncertainty"]) for r in rows], saved["uncertainty"], atol=1e-4)
    assert [f"qc_{n}" for n in QC_FLAGS] == list(rows[0])[-len(QC_FLAGS):]


def test_an_ensemble_export_answers_disagreement(tmp_path):
    """Two tiny U-Nets and a gamma view (M = 4): ``disagreement`` beside ``uncertainty``, both
    equal to combine_members of the Keras ensemble's members."""
    model = build_ensemble([tiny_test_unet(32, 0), tiny_test_unet(32, 1)], ["gamma:0.9"])
    version = make_test_export(tmp_path, "ens", 1, model=model)
    x = np.random.default_rng(4).random((3, 40, 29)).astype(np.float32)
    out = SavedModelBackend(version).predict({"image": x})
    assert out["disagreement"].shape == (3,) and out["disagreement"].dtype == np.float32
    members = inference.member_probabilities(model, inference.model_input(list(x), inference.Preprocessing(32)))
    assert members.shape[0] == 4
    ref = reference_scores(members)
    assert 0.0 < ref["disagreement"].min() and compare_scores(ref, out, "ensemble") <= 1e-4
