"""Cross-validation runs (jobs/cv), fold ensembles and test-time views (models/ensemble,
runs.load_ensemble) through evaluate, predict and export. One 2-fold tiny CV run on the
session's phantom (``cv_run``, 1 epoch of 2 steps per fold) serves every test that needs one."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest

from cardigan_tf import inference, resize
from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.configs.cv import CvConfig, check_tta
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.data.h5layout import list_patients, read_root_attrs
from cardigan_tf.data.prepare import prepare
from cardigan_tf.data.splits import kfold_split, official_kfolds
from cardigan_tf.evaluate import main as evaluate_main
from cardigan_tf.files import sha256_file
from cardigan_tf.jobs.cv import assign_folds, train_cv
from cardigan_tf.models.ensemble import AugmentedViews, UndoViews, build_ensemble, parse_view
from cardigan_tf.models.unet import UNetConfig, build_unet
from cardigan_tf.run_plan import plan_run
from cardigan_tf.runs import create_run, load_ensemble, open_run
from cardigan_tf.serving.export import export_run, load_source
from cardigan_tf.serving.export_check import compare_with_source
from cardigan_tf.serving.local import RunBackend, SavedModelBackend
from cardigan_tf.train import main as train_main

import camus_fixtures as cf
import harness

#: one epoch of 2 steps per fold
CV_TINY = [*harness.without(harness.SEG_TINY, "train.steps_per_epoch"), "train.steps_per_epoch=2", "train.epochs=1",
           "train.n_overlays=1"]


@pytest.fixture(scope="module")
def cv_run(phantom_h5, tmp_path_factory):
    """``train seg --folds 2`` on the session's phantom (9 patients outside its test split)."""
    cfg = load_config(CvConfig, None, [*CV_TINY, "folds=2", f"data.data={phantom_h5}"])
    return train_cv(cfg, runs_dir=tmp_path_factory.mktemp("cv_runs"))


def _images(n=5, seed=3):
    return harness.phantom_pairs(n, 64, seed)[0]


# ----------------------------------------------------------------------------- folds
def test_kfold_split_is_a_seeded_partition():
    pats = [f"p{i:02d}" for i in range(11)]
    folds = kfold_split(pats, 3, seed=4)
    assert sorted(p for f in folds for p in f) == pats and sorted(map(len, folds)) == [3, 4, 4]
    assert folds == kfold_split(list(reversed(pats)), 3, seed=4) and folds != kfold_split(pats, 3, seed=5)
    with pytest.raises(ValueError, match="at least 3 patients"):
        kfold_split(pats[:2], 3)


def test_folds_are_patient_level_disjoint_and_hold_no_test_patient(phantom_h5):
    lists = list_patients(phantom_h5)
    rec = assign_folds(load_config(CvConfig, None, ["folds=3"]), phantom_h5)
    pool = sorted(lists["train"] + lists["valid"])
    valid = [p for f in rec["folds"] for p in f["valid"]]
    assert sorted(valid) == pool and len(set(valid)) == len(valid)  # a partition of the pool
    assert rec["test"] == lists["test"] and not set(valid) & set(lists["test"])
    for f in rec["folds"]:
        assert sorted(f["train"] + f["valid"]) == pool and not set(f["train"]) & set(f["valid"])
    assert rec["source"] == "seeded" and "no official fold lists" in rec["reason"]
    with pytest.raises(ConfigError, match="records no official fold lists"):
        assign_folds(load_config(CvConfig, None, ["folds=3", "fold_source=official"]), phantom_h5)


def test_official_lists_recorded_by_prepare_make_the_folds(tmp_path):
    tree = cf.write_2019_tree(tmp_path / "CAMUS", n_train=8, n_test=0, sequences=False, lists=False)
    ids = sorted(tree["patients"])
    held_out = {1: ids[0:2], 2: ids[2:4], 3: ids[4:6], 4: ids[6:8]}  # subGroup{k}_testing: a partition
    lists = tmp_path / "CAMUS" / "listSubGroups"
    lists.mkdir()
    for k, pats in held_out.items():
        rest = [p for p in ids if p not in pats]
        for name, part in (("training", rest[1:]), ("validation", rest[:1]), ("testing", pats)):
            (lists / f"subGroup{k}_{name}.txt").write_text("\n".join(part) + "\n")
    with pytest.warns(UserWarning, match="no --fold"):
        h5 = prepare(tree["root"], tmp_path / "c.h5", size=16, progress=False)
    assert read_root_attrs(h5)["official_folds"] == {str(k): v for k, v in held_out.items()}
    split = list_patients(h5)
    pool = set(split["train"]) | set(split["valid"])
    rec = assign_folds(load_config(CvConfig, None, ["folds=4", "fold_source=official"]), h5)
    assert rec["source"] == "official"
    assert [f["valid"] for f in rec["folds"]] == [sorted(set(held_out[k]) & pool) for k in (1, 2, 3, 4)]
    assert not {p for f in rec["folds"] for p in f["valid"]} & set(split["test"])
    grouped = assign_folds(load_config(CvConfig, None, ["folds=2"]), h5)  # auto: lists 1+3 and 2+4
    assert grouped["source"] == "official"
    assert [f["valid"] for f in grouped["folds"]] == [sorted(set(held_out[1] + held_out[3]) & pool),
                                                        sorted(set(held_out[2] + held_out[4]) & pool)]
    with pytest.raises(ConfigError, match="4 official fold lists cannot make 3 folds"):
        assign_folds(load_config(CvConfig, None, ["folds=3", "fold_source=official"]), h5)
    assert assign_folds(load_config(CvConfig, None, ["folds=3"]), h5)["source"] == "seeded"
    with pytest.raises(ValueError, match="in no official fold list"):
        official_kfolds({"1": ids[:2]}, ids[:3], 1)


def test_cv_config_checks():
    with pytest.raises(ConfigError, match="folds: expected at least 2"):
        load_config(CvConfig, None, ["folds=1"]).validate()
    with pytest.raises(ConfigError, match="assigns them per fold"):
        load_config(CvConfig, None, ["data.train_patients=[a]"]).validate()
    with pytest.raises(ConfigError, match="disjoint"):
        load_config(CvConfig, None, []).fold_config(0, ["a", "b"], ["b"], "x.h5").validate()
    with pytest.raises(ConfigError, match="needs models trained with left-right flips"):
        check_tta(["hflip"], [AugmentConfig()])
    assert check_tta(["hflip", "gamma:0.9"], [AugmentConfig(hflip=True)]) == ["hflip", "gamma:0.9"]
    with pytest.raises(ConfigError, match=r"outside the trained augment.gamma range \[0.8, 1.25\]"):
        check_tta(["gamma:0.5"], [AugmentConfig()])
    with pytest.raises(ConfigError, match="expected one of hflip"):
        check_tta(["rotate:5"], [AugmentConfig()])


def test_a_cv_resume_refuses_other_folds_and_accepts_more_epochs(tmp_path):
    cfg = load_config(CvConfig, None, ["folds=3"])
    path = create_run("cv", cfg, run_dir=tmp_path / "cv")
    assert open_run(path).kind == "cv" and not open_run(path).finished
    with pytest.raises(ConfigError, match="folds: saved 3, given 4"):
        plan_run("cv", load_config(CvConfig, None, ["folds=4"]), resume=path)
    plan = plan_run("cv", load_config(CvConfig, None, ["folds=3", "train.epochs=30"]), resume=path)
    assert plan.status == "resume" and "train.epochs" in plan.changed


def test_cli_refuses_views_the_models_were_not_trained_for(tmp_path, capsys):
    argv = ["seg", "--folds", "2", "--tta", "hflip", "--runs-dir", str(tmp_path), *harness.sets(CV_TINY)]
    assert train_main(argv) == 2
    assert "view 'hflip' needs models trained with left-right flips" in capsys.readouterr().err
    assert train_main(["seg", "--tta", "gamma:0.9", "--runs-dir", str(tmp_path)]) == 2
    assert "give --folds K" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# ----------------------------------------------------------------------------- the run
def test_cv_run_folds_summary_and_resume(cv_run, tmp_path):
    run = open_run(cv_run)
    assert run.kind == "cv" and run.finished and [p.name for p in run.member_runs()] == ["fold-0", "fold-1"]
    record = json.loads((cv_run / "folds.json").read_text())
    for k, fold in enumerate(record["folds"]):
        seg = open_run(cv_run / "folds" / f"fold-{k}", "seg")
        assert seg.finished and seg.config.data.valid_patients == fold["valid"]
        assert seg.config.data.train_patients == fold["train"]
    summary = (cv_run / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("fold,structure,n_patients") and len(summary) == 1 + 2 * 3
    assert "| mean of folds | LV endo |" in (cv_run / "summary.md").read_text()
    # resume: only the missing fold is trained
    copy = tmp_path / "cv"
    shutil.copytree(cv_run, copy)
    shutil.rmtree(copy / "folds" / "fold-1")
    (copy / "metrics.json").unlink()
    kept = {f: sha256_file(copy / "folds" / "fold-0" / f) for f in ("best.keras", "final.keras", "metrics.json")}
    assert train_cv(None, resume=copy) == copy
    assert {f: sha256_file(copy / "folds" / "fold-0" / f) for f in kept} == kept
    assert open_run(copy / "folds" / "fold-1", "seg").finished and open_run(copy).finished


# ----------------------------------------------------------------------------- ensembles
def test_ensemble_is_the_mean_of_its_members(cv_run):
    trained = open_run(cv_run).load()
    x = inference.model_input(list(_images()[..., 0]), trained.preprocessing)
    one_by_one = [inference.predict_probabilities(open_run(p, "seg").load().model, x)
                  for p in open_run(cv_run).member_runs()]
    assert np.abs(one_by_one[0] - one_by_one[1]).max() > 1e-3  # two different members
    np.testing.assert_allclose(inference.predict_probabilities(trained.model, x), np.mean(one_by_one, 0), atol=1e-6)
    np.testing.assert_allclose(inference.member_probabilities(trained.model, x), np.stack(one_by_one), atol=1e-6)
    # the same ensemble from the two seg runs, with an intensity view (gamma 0.9 inside the trained range)
    listed = load_ensemble(open_run(cv_run).member_runs(), tta=["gamma:0.9"])
    with np.errstate(divide="ignore"):  # log 0 = -inf: 0 ** 0.9 = 0
        x_gamma = np.exp(np.log(x) * 0.9)
    gamma = [inference.predict_probabilities(open_run(p, "seg").load().model, x_gamma)
             for p in open_run(cv_run).member_runs()]
    want = np.stack([one_by_one[0], gamma[0], one_by_one[1], gamma[1]])  # member-major
    np.testing.assert_allclose(inference.member_probabilities(listed.model, x), want, atol=1e-5)
    assert listed.tta == ["gamma:0.9"] and len(listed.members) == 2


def test_flip_view_is_undone_and_the_ensemble_flip_equivariant():
    keras.utils.set_random_seed(5)
    unet = build_unet(UNetConfig(size=64, base_filters=4, max_filters=16, norm="none"))
    x = _images(3, seed=8)
    flipped = x[:, :, ::-1].copy()
    p, p_flip = np.asarray(unet(x)), np.asarray(unet(flipped))
    assert np.abs(p - p_flip[:, :, ::-1]).max() > 1e-4  # the U-Net alone is not flip-equivariant
    model = build_ensemble([unet], ["hflip"])
    mean, members = (np.asarray(t) for t in model(x, training=False))
    np.testing.assert_allclose(members[:, 1], p_flip[:, :, ::-1], atol=1e-6)  # view predicted, then flipped back
    np.testing.assert_allclose(mean, (p + p_flip[:, :, ::-1]) / 2, atol=1e-6)
    mean_of_flipped = np.asarray(model(flipped, training=False)[0])
    np.testing.assert_allclose(mean_of_flipped, mean[:, :, ::-1], atol=1e-6)  # equivariant


def test_view_layers_round_trip():
    x = _images(2)
    harness.run_layer_test(AugmentedViews, {"views": ["hflip", "gamma:0.8"]}, x, expected_output_shape=(6, 64, 64, 1))
    p = np.random.default_rng(0).random((6, 8, 8, 4)).astype("float32")
    harness.run_layer_test(UndoViews, {"views": ["hflip", "contrast:1.1"]}, p, expected_output_shape=(2, 3, 8, 8, 4))
    assert parse_view("contrast:1.1") == ("contrast", 1.1)
    with pytest.raises(ValueError, match="takes no value"):
        parse_view("hflip:1")


def test_evaluate_and_predict_backend_take_the_ensemble(cv_run, tmp_path, capsys):
    members = [str(p) for p in open_run(cv_run).member_runs()]
    assert evaluate_main(["--run", *members[:1], "--run", members[1]]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "ev"
    assert evaluate_main([str(cv_run), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ensemble"]["members"] == [str(open_run(p, "seg").model_path()) for p in members]
    assert "ensemble of 2 U-Nets" in (out / "report.md").read_text()
    # two members: the per-image disagreement and its failure ranking (cardigan_tf.jobs.evaluation_qc)
    assert summary["uncertainty"]["members"] == 2 and set(summary["failure_ranking"]) == {"uncertainty", "disagreement"}
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(0.0 <= float(r["disagreement"]) <= 1.0 for r in rows)
    backend = RunBackend(cv_run)
    image = _images(1)[..., 0][:, :50]  # another size: the resize chain both ways
    got = backend.predict({"image": image})
    trained = open_run(cv_run).load()
    ref = inference.predict_probabilities(trained.model, inference.model_input(list(image), trained.preprocessing))
    np.testing.assert_allclose(got["probabilities"], resize.resize_probabilities(ref, image.shape[1:3]).numpy(),
                               atol=1e-6)


def test_export_of_the_cv_run_round_trips(cv_run, tmp_path):
    version = export_run(cv_run, tmp_path / "models", onnx=True)
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["kind"] == "seg" and len(meta["ensemble"]["members"]) == 2 and meta["ensemble"]["tta"] == []
    assert meta["onnx"]["max_abs_diff_vs_tensorflow"] <= 1e-4
    _, model, _, _, extra = load_source(cv_run)
    served = SavedModelBackend(version)
    requests, outputs = {}, {}
    for i, image in enumerate((_images(2)[..., 0], _images(1, seed=9)[..., 0][:, 5:60, :47])):
        got = served.predict({"image": image})
        x = inference.model_input(list(image), extra["pre"])
        want = resize.resize_probabilities(inference.predict_probabilities(model, x), image.shape[1:3]).numpy()
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
        requests[f"serving_default@{i}"] = {"image": image}
        outputs.update({f"serving_default@{i}/{k}": v for k, v in got.items()})
    # the check's comparison rebuilds the ensemble from metadata's source.runs / source.tta
    assert meta["source"]["runs"] == [str(cv_run.resolve())] and meta["source"]["tta"] == []
    assert compare_with_source(meta["source"]["runs"], meta, requests, outputs) <= 1e-5
