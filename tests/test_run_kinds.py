"""The run-kind registry and the one start / resume decision (``runs.KINDS``, ``runs.plan_run``,
``Run.load``), and the CLI's resume convention built on them. No training: run folders are
made with ``create_run`` and the files each kind writes last."""

import shutil

import keras
import numpy as np
import pytest

from cardigan_tf import cli
from cardigan_tf.config import ConfigError
from cardigan_tf.configs.gan import preset_config as gan_preset
from cardigan_tf.configs.seg import preset_config as seg_preset
from cardigan_tf.configs.study import build_study_config
from cardigan_tf.configs.tune import build_tune_config
from cardigan_tf.models.unet import UNetConfig, build_unet
from cardigan_tf.run_plan import config_differences, plan_run
from cardigan_tf.runs import KINDS, RunError, create_run, is_finished, open_run


def _finish(path, kind):
    for name in KINDS[kind].finished:
        (path / name).write_bytes(b"{}")


def test_every_kind_declares_its_config_and_its_finished_files():
    assert set(KINDS) == {"gan", "seg", "cv", "study", "tune"}
    configs = {"gan": "GanConfig", "seg": "SegConfig", "cv": "CvConfig", "study": "StudyConfig", "tune": "TuneConfig"}
    for name, kind in KINDS.items():
        assert kind.config_class().__name__ == configs[name]
        assert kind.finished, name
        if kind.models:
            assert kind.default_model in kind.models


def test_a_seg_run_is_finished_only_with_metrics_and_final_model(tmp_path):
    run = create_run("seg", seg_preset("tiny"), run_dir=tmp_path / "s")
    assert not is_finished(run, "seg") and not open_run(run).finished
    (run / "best.keras").write_bytes(b"x")
    (run / "metrics.json").write_text("{}")
    assert not is_finished(run, "seg")  # best.keras is written during training, final.keras last
    (run / "final.keras").write_bytes(b"x")
    assert is_finished(run, "seg") and open_run(run).finished


def test_plan_new_then_resume_then_finished(tmp_path):
    cfg = seg_preset("tiny")
    plan = plan_run("seg", cfg, run_dir=tmp_path / "s")
    assert plan.status == "new"
    path = plan.open()
    assert path == tmp_path / "s" and open_run(path).config == cfg
    again = plan_run("seg", seg_preset("tiny"), run_dir=path)  # the same values: accepted
    assert again.status == "resume" and again.path == path and not again.changed
    _finish(path, "seg")
    assert plan_run("seg", None, resume=path).status == "finished"
    assert plan_run("seg", seg_preset("tiny"), resume=path).status == "finished"


def test_resume_with_a_changed_value_is_refused_naming_saved_and_given(tmp_path):
    path = plan_run("seg", seg_preset("tiny"), run_dir=tmp_path / "s").open()
    changed = seg_preset("tiny")
    changed.train.lr = 0.5
    changed.model.base_filters = 8
    with pytest.raises(ConfigError) as err:
        plan_run("seg", changed, resume=path)
    text = str(err.value)
    assert f"train.lr: saved {seg_preset('tiny').train.lr!r}, given 0.5" in text
    assert "model.base_filters: saved 16, given 8" in text
    assert "a resume may change only train.epochs, train.strategy" in text


def test_resume_may_change_the_resumable_keys_and_rewrites_the_config(tmp_path):
    path = plan_run("seg", seg_preset("tiny"), run_dir=tmp_path / "s").open()
    _finish(path, "seg")
    longer = seg_preset("tiny")
    longer.train.epochs = 99
    plan = plan_run("seg", longer, resume=path)
    assert plan.status == "resume" and set(plan.changed) == {"train.epochs"}
    plan.open()
    assert open_run(path).config.train.epochs == 99
    assert not is_finished(path, "seg")  # more to do: the job writes metrics.json again at its end
    assert plan_run("seg", longer, resume=path).status == "resume"  # also for a process planning now


def test_a_new_run_refuses_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a seg run folder"):
        plan_run("seg", seg_preset("tiny"), run_dir=tmp_path / "x")
    gan = create_run("gan", gan_preset("tiny"), run_dir=tmp_path / "g")
    with pytest.raises(RunError, match="expected a seg run folder, found a gan run"):
        plan_run("seg", seg_preset("tiny"), run_dir=gan)
    with pytest.raises(ValueError, match="needs a config"):
        plan_run("seg", None, run_dir=tmp_path / "new")


def test_config_differences_lists_leaves():
    a, b = seg_preset("tiny"), seg_preset("tiny")
    b.data.augment.rotation = 33.0
    assert config_differences(a, b) == {"data.augment.rotation": (a.data.augment.rotation, 33.0)}
    assert config_differences(a, a) == {}


def test_run_load_gives_the_model_with_its_resize_chain(tmp_path):
    cfg = seg_preset("tiny")
    cfg.data.n_phantom = 3
    cfg.model = UNetConfig(size=64, depth=4, base_filters=4, deep_supervision=True)
    path = create_run("seg", cfg, run_dir=tmp_path / "s")
    model = build_unet(cfg.model)
    model.save(path / "final.keras")
    run = open_run(path)
    trained = run.load()
    assert trained.path == path / "final.keras"  # no best.keras: best falls back to final
    assert len(trained.model.outputs) == 1  # deep supervision: the main output only
    assert trained.preprocessing.working_size == 64 and trained.preprocessing.prepared_size == 64
    x = np.random.default_rng(0).random((1, 64, 64, 1), np.float32)
    np.testing.assert_allclose(trained.model.predict(x, verbose=0), model.predict(x, verbose=0)[0], atol=1e-6)
    with pytest.raises(RunError, match="no 'ema' model"):
        run.load("ema")


def test_a_damaged_model_file_is_one_error_naming_it(tmp_path, capsys):
    from cardigan_tf.evaluate import main as evaluate

    cfg = seg_preset("tiny")
    path = create_run("seg", cfg, run_dir=tmp_path / "s")
    build_unet(UNetConfig(size=64, depth=4, base_filters=4)).save(path / "best.keras")
    data = (path / "best.keras").read_bytes()
    (path / "best.keras").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RunError, match="best.keras: the model file does not load.*damaged"):
        open_run(path).load(with_preprocessing=False)
    assert evaluate([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "best.keras" in err[-1] and "Traceback" not in "".join(err)


def test_cli_resumed_config_is_the_saved_one_under_the_given_flags(tmp_path):
    cfg = build_tune_config(None, ["tuner=random", "max_trials=3", "seg.data.n_phantom=4"])
    path = create_run("tune", cfg, run_dir=tmp_path / "t")
    assert cli.resumed_config("tune", str(path), None, []) is None
    same = cli.resumed_config("tune", str(path), None, ["tuner=random", "max_trials=3"])
    assert plan_run("tune", same, resume=path).status == "resume"
    more = cli.resumed_config("tune", str(path), None, ["max_trials=5"])
    assert plan_run("tune", more, resume=path).changed == {"max_trials": (3, 5)}
    other = cli.resumed_config("tune", str(path), None, ["tuner=hyperband"])
    with pytest.raises(ConfigError, match="tuner: saved 'random', given 'hyperband'.*only max_trials"):
        plan_run("tune", other, resume=path)
    shutil.rmtree(path)


def test_a_resumed_study_keeps_its_design(tmp_path):
    cfg = build_study_config(None, ["seeds=[0]", "n_phantom=6"])
    path = create_run("study", cfg, run_dir=tmp_path / "st")
    assert plan_run("study", build_study_config(None, ["seeds=[0]", "n_phantom=6"]), resume=path).status == "resume"
    with pytest.raises(ConfigError, match="seeds: saved \\[0\\], given \\[0, 1\\]"):
        plan_run("study", build_study_config(None, ["seeds=[0,1]", "n_phantom=6"]), resume=path)


def test_quiet_output_drops_tensorflow_start_up_lines_only(tmp_path):
    """The filter, on a child process writing to the inherited stderr descriptor."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from cardigan_tf import cli\n"
        "with cli.quiet_output():\n"
        "    sys.stderr.write('WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    sys.stderr.write('I0000 00:00:1796286867.767122    4331 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "    sys.stderr.write('real warning: keep me\\n')\n"
        "    sys.stderr.write('progress 1/2\\r')\n"
        "    sys.stderr.flush()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert b"real warning: keep me\n" in out.stderr and b"progress 1/2\r" in out.stderr
    assert b"absl" not in out.stderr and b"cudart_stub" not in out.stderr


def test_unet_keras_model_round_trip_is_kept_by_load_model_file(tmp_path):
    from cardigan_tf.runs import load_model_file

    model = build_unet(UNetConfig(size=64, depth=4, base_filters=4))
    model.save(tmp_path / "m.keras")
    loaded = load_model_file(tmp_path / "m.keras")
    assert isinstance(loaded, keras.Model) and loaded.count_params() == model.count_params()


def test_a_run_moved_with_its_data_finds_it_and_resumes_with_the_new_path(tmp_path):
    from cardigan_tf.run_data import record_data, recorded_dataset

    old = tmp_path / "study-a"
    (old / "data").mkdir(parents=True)
    (old / "data" / "phantom.h5").write_bytes(b"h5")
    cfg = seg_preset("tiny")
    cfg.data.data = str(old / "data" / "phantom.h5")
    run = plan_run("seg", cfg, run_dir=old / "cells" / "seg-1").open()
    record_data(run, old / "data" / "phantom.h5")
    new = tmp_path / "study-b"
    old.rename(new)
    moved = new / "cells" / "seg-1"
    assert recorded_dataset(moved) == (new / "data" / "phantom.h5").resolve()  # through the relative path
    given = seg_preset("tiny")
    given.data.data = str(new / "data" / "phantom.h5")
    plan = plan_run("seg", given, run_dir=moved)
    assert plan.status == "resume" and set(plan.changed) == {"data.data"}
    elsewhere = seg_preset("tiny")
    (tmp_path / "other.h5").write_bytes(b"h5")
    elsewhere.data.data = str(tmp_path / "other.h5")  # another file: not a move
    with pytest.raises(ConfigError, match="data.data: saved"):
        plan_run("seg", elsewhere, run_dir=moved)
