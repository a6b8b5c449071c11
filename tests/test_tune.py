"""KerasTuner search (cardigan_tf.tune / jobs.tuning / configs.tune / data.synthetic).

One tiny random search (64x64, base 4 filters, 2 trials of 2 epochs x 3 steps) is interrupted in
its second trial, resumed, reported and its best trial retrained; several tests read it. The
distributed test runs experiments/tune_distributed.py (a chief and two workers on 127.0.0.1).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf import runtime
from cardigan_tf.config import ConfigError
from cardigan_tf.configs.seg import preset_config
from cardigan_tf.configs.tune import apply_values, build_tune_config
from cardigan_tf.data.h5layout import H5Writer, list_patients
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.synthetic import check_synthetic_set
from cardigan_tf.jobs.tuning import UNetHyperModel, get_strategy, make_tuner, tune
from cardigan_tf.runs import open_run
from cardigan_tf.tune import main

from harness import TUNE_TINY, assert_config_round_trip, sets


REPO = Path(__file__).resolve().parent.parent


def _synthetic(path, patients, size=64):
    """A synthetic set in the seed layout whose provenance names ``patients`` as its sources."""
    rng = np.random.default_rng(0)
    attrs = {"kind": "synthetic", "source_layout": "synthetic", "size": size,
             "provenance": {"source_patients": list(patients)}}
    with H5Writer(path, attrs=attrs) as w:
        for i, p in enumerate(patients):
            mask = np.zeros((1, size, size), np.uint8)
            mask[0, size // 4: size // 2, size // 4: size // 2] = 1
            w.write_view("train", f"{p}_x{i:04d}_ED", "2CH", rng.random((1, size, size)).astype(np.float32), mask,
                         phases=["ED"], spacing=(0.3, 0.3), original_shape=(size, size))
    return path


def _callbacks():
    class Interrupt(keras.callbacks.Callback):
        starts = [0]  # class state: KerasTuner deep-copies callbacks per trial

        def on_train_begin(self, logs=None):
            type(self).starts[0] += 1
            if type(self).starts[0] == 2:
                raise KeyboardInterrupt("simulated interruption in trial 2")

    class Count(keras.callbacks.Callback):
        starts = [0]

        def on_train_begin(self, logs=None):
            type(self).starts[0] += 1

    return Interrupt, Count


@pytest.fixture(scope="module")
def search(phantom_h5, tmp_path_factory):
    """Interrupted in trial 2, then resumed: (tune_dir, best run, facts before/after resuming)."""
    runtime.enable_determinism(0)
    tune_dir = tmp_path_factory.mktemp("tune") / "search"
    cfg = build_tune_config(None, [*TUNE_TINY, "seg.train.epochs=2"], data=str(phantom_h5), tuner="random", max_trials=2,
                            max_epochs=2)
    interrupt, count = _callbacks()
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, tune_dir, callbacks=[interrupt()])
    record0 = tune_dir / "search" / "trial_0" / "cardigan_trial.json"
    before = {"record0": record0.read_text(), "mtime0": record0.stat().st_mtime_ns,
              "status1": json.loads((tune_dir / "search" / "trial_1" / "trial.json").read_text())["status"],
              "csv": (tune_dir / "trials.csv").exists(), "starts": interrupt.starts[0]}
    best_run = tune(None, resume=tune_dir, callbacks=[count()])
    after = {"starts": count.starts[0], "record0": record0.read_text(), "mtime0": record0.stat().st_mtime_ns}
    return tune_dir, best_run, before, after


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- search, resume, retrain
def test_interrupted_search_resumes_without_repeating_a_finished_trial(search):
    tune_dir, _, before, after = search
    assert before["starts"] == 2 and before["status1"] == "RUNNING" and not before["csv"]
    assert after["starts"] == 1  # only the interrupted trial ran again
    assert after["record0"] == before["record0"] and after["mtime0"] == before["mtime0"]
    oracle = json.loads((tune_dir / "search" / "oracle.json").read_text())
    assert oracle["run_times"] == {"0": 1, "1": 1}
    assert oracle["ongoing_trials"] == {}
    statuses = [json.loads((tune_dir / "search" / f"trial_{i}" / "trial.json").read_text())["status"] for i in (0, 1)]
    assert statuses == ["COMPLETED", "COMPLETED"]


def test_search_writes_its_reports_in_a_tune_run_folder(search):
    tune_dir, _, _, _ = search
    run = open_run(tune_dir)
    assert run.kind == "tune" and run.config.tuner == "random" and (tune_dir / "provenance.json").is_file()
    rows = _rows(tune_dir / "trials.csv")
    assert [r["trial"] for r in rows] == ["0", "1"] and {r["status"] for r in rows} == {"COMPLETED"}
    scores = [float(r["val_dice_mean"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert {r["distance_unit"] for r in rows} == {"mm"}  # the phantom records its spacing
    for s in ("lv_endo", "lv_epi", "la"):  # per-structure metrics, distances in the row's distance_unit
        assert {f"val_{s}_dice", f"val_{s}_hd", f"val_{s}_mad"} <= set(rows[0])
        assert 0.0 <= float(rows[0][f"val_{s}_dice"]) <= 1.0
    best = json.loads((tune_dir / "best_hyperparameters.json").read_text())
    assert best["score"] == pytest.approx(max(scores))
    assert best["trial_id"] == rows[int(np.argmax(scores))]["trial"]
    assert set(best["hyperparameters"]) == set(run.config.space)
    assert best["hyperparameters"]["norm"] in ("batch", "instance")
    md = (tune_dir / "trials.md").read_text().splitlines()
    assert md[0].startswith("| trial | tuner | status | val_dice_mean |") and len(md) == 4
    assert (tune_dir / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for trial in ("0", "1"):
        assert list((tune_dir / "tensorboard" / trial).rglob("events.out.tfevents.*"))


def test_best_trial_retrained_reproduces_its_score(search):
    tune_dir, best_run, _, _ = search
    best = json.loads((tune_dir / "best_hyperparameters.json").read_text())
    run = open_run(best_run)
    assert run.kind == "seg" and best_run == tune_dir / f"best-trial_{best['trial_id']}"
    want = apply_values(open_run(tune_dir).config.seg, best["hyperparameters"])
    assert run.config.model == want.model and run.config.train.lr == want.train.lr
    assert run.config.data.augment == want.data.augment and run.config.train.epochs == 2
    assert run.model_path("best").is_file()
    retrained = run.metrics["best_val_dice_mean"]
    assert retrained == pytest.approx(best["score"], abs=0.01)
    summary = json.loads((tune_dir / "metrics.json").read_text())
    assert summary["best_run"] == str(best_run)


# ----------------------------------------------------------------------------- distributed
def test_distributed_chief_and_two_workers_share_one_oracle(phantom_h5, tmp_path):
    tune_dir = tmp_path / "dist"
    cmd = [sys.executable, str(REPO / "experiments" / "tune_distributed.py"), "--run-dir", str(tune_dir),
           "--workers", "2", "--ip", "127.0.0.1", "--timeout", "240", "--",
           "--data", str(phantom_h5), "--tuner", "random", "--max-trials", "4", "--max-epochs", "1",
           *sets(TUNE_TINY), "--set", "seg.train.steps_per_epoch=2", "--set", "retrain=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    logs = tmp_path / "dist-logs"
    detail = err + "".join(f"\n--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(logs.glob("*.log")))
    assert proc.returncode == 0, detail
    assert json.loads(out.strip().splitlines()[-1])["exit_codes"] == {"chief": 0, "worker0": 0, "worker1": 0}
    with pytest.raises(ProcessLookupError):  # nothing of the launcher's session is left running
        os.killpg(proc.pid, 0)
    rows = _rows(tune_dir / "trials.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"COMPLETED"}
    assert {r["tuner"] for r in rows} == {"worker0", "worker1"}  # both workers' trials in one table
    assert len(list((tune_dir / "search").glob("oracle.json"))) == 1
    assert json.loads((tune_dir / "metrics.json").read_text())["n_completed"] == 4
    assert not (tune_dir / "chief.json").exists()


# ----------------------------------------------------------------------------- bad input
def _cli(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--tuner", "grid"], "tuner: expected one of"),
    (["--set", "objective=val_accuracy"], "objective: 'val_accuracy' is not logged"),
    ([a for n, v in (("lr", 1e-3), ("norm", "batch"), ("dropout", 0.0), ("dice_share", 0.5),
                     ("augment_geometric", 1.0), ("augment_intensity", 1.0))
      for a in ("--set", f"space.{n}={{type: fixed, value: {v}}}")], "every hyperparameter is fixed"),
    (["--set", "space.dropout.max=1.0"], "space.dropout.max: dropout must lie in [0.0, 1.0), got 1.0"),
    (["--synthetic", "/nonexistent/camusx.h5"], "synthetic set does not exist"),
])
def test_bad_input_is_refused_before_anything_is_made(phantom_h5, tmp_path, capsys, extra, expected):
    out = tmp_path / "tune"
    rc, err = _cli(["--data", phantom_h5, "--run-dir", out, "--max-epochs", "1", *sets(TUNE_TINY),
                    *extra], capsys)
    assert rc == 2 and err.startswith("error: ") and expected in err, err
    assert not out.exists()


def test_synthetic_set_of_another_size_or_from_held_out_patients_is_refused(phantom_h5, tmp_path, capsys):
    splits = list_patients(phantom_h5)
    small = _synthetic(tmp_path / "small.h5", splits["train"][:1], size=32)
    leaked = _synthetic(tmp_path / "leaked.h5", [splits["train"][0], splits["valid"][0], splits["test"][0]])
    clean = _synthetic(tmp_path / "clean.h5", splits["train"][:2])

    with pytest.raises(DataError, match=r"small\.h5: synthetic images are 32x32 but the working size is 64x64"):
        check_synthetic_set(small, phantom_h5, size=64)
    with pytest.raises(DataError) as exc:
        check_synthetic_set(leaked, phantom_h5, size=64)
    msg = str(exc.value)
    assert str(leaked) in msg and splits["valid"][0] in msg and splits["test"][0] in msg
    assert splits["train"][0] not in msg.split("):")[-1]
    info = check_synthetic_set(clean, phantom_h5, size=64)
    assert info["patients_checked"] and info["source_patients"] == sorted(splits["train"][:2]) and info["n_images"] == 2

    for bad, expected in ((small, "working size"), (leaked, "held-out patients")):
        out = tmp_path / f"tune-{bad.stem}"
        rc, err = _cli(["--data", phantom_h5, "--synthetic", bad, "--run-dir", out, *sets(TUNE_TINY)],
                       capsys)
        assert rc == 2 and expected in err and not out.exists(), err
    # built-in phantom: its patients are known once it is written; still refused before training,
    # and the new folder is removed again (the same seed, size and count give the fixture's patients)
    out = tmp_path / "tune-phantom"
    rc, err = _cli(["--synthetic", leaked, "--run-dir", out, "--set", "seg.data.n_phantom=10",
                    *sets(TUNE_TINY)], capsys)
    assert rc == 2 and "held-out patients" in err and splits["valid"][0] in err and not out.exists(), err


def test_existing_tuning_folder_needs_overwrite_or_resume(phantom_h5, tmp_path, capsys):
    out = tmp_path / "tune"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, err = _cli(["--data", phantom_h5, "--run-dir", out, *sets(TUNE_TINY)], capsys)
    assert rc == 2 and "already exists" in err and "--resume" in err
    rc, err = _cli(["--data", phantom_h5, "--run-dir", out, "--overwrite", *sets(TUNE_TINY)], capsys)
    assert rc == 2 and "not a tuning folder" in err and (out / "keep.txt").exists()  # never deletes other folders
    rc, err = _cli(["--resume", tmp_path / "missing"], capsys)
    assert rc == 2 and "no such run folder" in err


# ----------------------------------------------------------------------------- config layer
def test_search_space_is_narrowed_from_yaml_and_set(phantom_h5, tmp_path):
    cfg = build_tune_config(str(REPO / "experiments" / "tune_small.yaml"), ["space.lr.max=1e-3"])
    assert cfg.space["lr"].type == "float" and cfg.space["lr"].max == 1e-3 and cfg.space["lr"].log
    assert cfg.space["synthetic_fraction"].type == "fixed" and cfg.space["synthetic_fraction"].value == 0.0
    syn = _synthetic(tmp_path / "syn.h5", ["patient0001"])
    with_syn = build_tune_config(None, synthetic=str(syn))
    assert (with_syn.space["synthetic_fraction"].min, with_syn.space["synthetic_fraction"].max) == (0.0, 0.75)
    narrowed = build_tune_config(None, ["space.norm={type: choice, values: [batch]}", "space.dropout.type=fixed",
                                        "space.dropout.value=0.1"])
    assert "norm" not in narrowed.tunable_names() and narrowed.fixed_values()["dropout"] == 0.1
    for name, tuned in (("small", cfg), ("narrowed", narrowed)):  # YAML and back: the same search
        assert_config_round_trip(tuned, tmp_path, f"{name}.yaml", load=lambda path: build_tune_config(str(path)))
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("space:\n  lr: {type: float, min: 1.0e-2, max: 1.0e-3}\n")
    with pytest.raises(ConfigError, match="space.lr: expected min < max"):
        build_tune_config(str(yaml_file))
    yaml_file.write_text("space:\n  width: {type: int, min: 1, max: 3}\n")
    with pytest.raises(ConfigError, match="width"):
        build_tune_config(str(yaml_file))
    with pytest.raises(ConfigError, match="space.synthetic_fraction: fixed at 0.5 but no synthetic set"):
        build_tune_config(None, ["space.synthetic_fraction={type: fixed, value: 0.5}"])


def test_values_map_onto_a_seg_config():
    base = preset_config("tiny")
    seg = apply_values(base, {"lr": 3e-4, "base_filters": 8, "depth": 5, "norm": "group", "dropout": 0.2,
                              "dice_share": 0.25, "synthetic_fraction": 0.5, "augment_geometric": 0.0,
                              "augment_intensity": 2.0, "tuner/epochs": 3})
    assert (seg.train.lr, seg.model.base_filters, seg.model.depth, seg.model.norm, seg.model.dropout) == \
        (3e-4, 8, 5, "group", 0.2)
    assert (seg.train.dice_weight, seg.train.ce_weight) == (0.5, 1.5) and seg.data.synthetic_fraction == 0.5
    a, b = seg.data.augment, base.data.augment
    assert a.rotation == 0 and a.translation == 0 and a.p_geometric == 0 and a.scale == (1.0, 1.0)
    assert a.brightness == pytest.approx(2 * b.brightness) and a.noise_std == pytest.approx(2 * b.noise_std)
    assert a.p_intensity == b.p_intensity and a.contrast == pytest.approx((0.6, 1.4))
    assert a.gamma == pytest.approx((b.gamma[0] ** 2, b.gamma[1] ** 2))
    same = b.scaled(1.0, 1.0)
    assert same.rotation == b.rotation and same.scale == pytest.approx(b.scale) and same.gamma == pytest.approx(b.gamma)
    assert base.model.base_filters == 16  # the base config is not modified


def test_strategy_passes_through_to_the_tuner(phantom_h5, tmp_path):
    cfg = build_tune_config(None, [*TUNE_TINY, "strategy=mirrored"], data=str(phantom_h5), tuner="hyperband", max_trials=2,
                            max_epochs=2)
    strategy = get_strategy(cfg)
    tuner = make_tuner(cfg, tmp_path, UNetHyperModel(cfg, phantom_h5, steps=1, strategy=strategy), strategy=strategy)
    assert isinstance(tuner.distribution_strategy, tf.distribute.MirroredStrategy)
    assert tuner.oracle.objective.name == "val_dice_mean" and tuner.oracle.objective.direction == "max"
    assert tuner.oracle.max_trials == 2  # Hyperband's schedule capped at --max-trials
    assert get_strategy(build_tune_config(None, TUNE_TINY)) is None


def test_bayesian_tuner_needs_scikit_learn_or_says_so(phantom_h5, tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["--data", phantom_h5, "--run-dir", out, "--tuner", "bayesian", "--max-trials", "1", "--max-epochs", "1",
            *sets(TUNE_TINY), "--set", "retrain=false"]
    if importlib.util.find_spec("sklearn") is None:
        rc, err = _cli(args, capsys)
        assert rc == 2 and "bayesian needs scikit-learn" in err and not out.exists()
    else:  # pragma: no cover  (scikit-learn installed)
        rc, _ = _cli(args, capsys)
        assert rc == 0 and len(_rows(out / "trials.csv")) == 1
