"""`train seg`: the run folder, config handling and exact resume."""

import json

import keras
import numpy as np
import pytest

from cardigan_tf import runtime
from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.configs.seg import PRESET_NAMES, SegConfig, preset_config
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.train import build_parser, main
from cardigan_tf.train import seg_config_from_args as config_from_args

from harness import SEG_TINY, assert_config_round_trip


def test_train_seg_cli_writes_run_folder(seg_run):
    """The session's ``seg_run``: `python -m cardigan_tf.train seg ...` straight through 2 epochs."""
    run = seg_run
    assert run.name.startswith("seg-cli-") and run.is_dir()
    for name in ("config.yaml", "best.keras", "final.keras", "metrics.json", "report.md", "data.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "backup" / "training_metadata.json").is_file()
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["epoch_001.png", "epoch_002.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    assert len(metrics["history"]["val_dice_mean"]) == 2
    assert metrics["best_val_dice_mean"] == pytest.approx(max(metrics["history"]["val_dice_mean"]), abs=1e-4)
    assert "validation Dice" in (run / "report.md").read_text()
    cfg = load_config(SegConfig, run / "config.yaml")
    assert cfg.train.epochs == 2 and cfg.model.base_filters == 4 and cfg.data.data is None


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SegConfig, None, ["train.nope=1"])
    with pytest.raises((ConfigError, ValueError), match="model.size"):
        load_config(SegConfig, None, ["data.size=128"])
    with pytest.raises((ConfigError, ValueError), match="divisible"):
        load_config(SegConfig, None, ["model.size=72", "data.size=72"])
    with pytest.raises(ConfigError, match="schedule"):
        load_config(SegConfig, None, ["train.schedule=step"])
    camus = preset_config("camus")
    assert camus.model.size == camus.data.size == 256
    for name in PRESET_NAMES:  # every preset written as YAML reads back as itself
        assert_config_round_trip(preset_config(name), tmp_path, f"{name}.yaml")


def test_config_layering_preset_file_set_flags(tmp_path):
    yaml_path = tmp_path / "seg.yaml"
    yaml_path.write_text("train:\n  lr: 0.01\n  batch_size: 3\nmodel:\n  norm: group\n")
    args = build_parser().parse_args(["seg", "--preset", "camus", "--config", str(yaml_path), "--set", "train.lr=0.5",
                                      "--epochs", "7", "--data", "x.h5", "--name", "n1"])
    cfg = config_from_args(args)
    assert (cfg.model.size, cfg.model.norm, cfg.train.batch_size) == (256, "group", 3)
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.data, cfg.name) == (0.5, 7, "x.h5", "n1")
    yaml_path.write_text("train:\n  lrate: 0.01\n")
    with pytest.raises(ConfigError, match="lrate"):
        config_from_args(build_parser().parse_args(["seg", "--config", str(yaml_path)]))


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch():
    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise _Interrupt()

    return Stop()


def _weights(path):
    return [np.asarray(w) for w in keras.saving.load_model(path).weights]


def test_exact_resume(seg_run, tmp_path):
    """Interrupt after epoch 1 of 2, resume with `--resume`: same weights and history as straight through."""
    cli_run = seg_run
    resumed = tmp_path / "seg-resumed"
    runtime.enable_determinism(7)
    with pytest.raises(_Interrupt):
        train_seg(load_config(SegConfig, cli_run / "config.yaml"), run_dir=resumed,
                  callbacks=[_stop_after_first_epoch()])
    assert not (resumed / "final.keras").exists()
    assert json.loads((resumed / "checkpoints" / "state.json").read_text())["best_epoch"] == 1
    after_epoch1 = _weights(resumed / "best.keras")
    assert main(["seg", "--resume", str(resumed)]) == 0

    a, b = _weights(cli_run / "final.keras"), _weights(resumed / "final.keras")
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(x, y) for x, y in zip(after_epoch1, b))  # the resumed epoch did train
    ma = json.loads((cli_run / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    assert mb["epochs_completed"] == 2 and len(mb["history"]["loss"]) == 2
    for key in ("loss", "val_loss", "val_dice_mean"):
        np.testing.assert_allclose(mb["history"][key], ma["history"][key], rtol=1e-5)
    assert mb["best_val_dice_mean"] == pytest.approx(ma["best_val_dice_mean"], rel=1e-5)


def test_deep_supervision_plateau_run_and_evaluate(tmp_path):
    cfg = load_config(SegConfig, None, SEG_TINY + ["train.epochs=1", "train.steps_per_epoch=2", "train.schedule=plateau",
                                                   "model.deep_supervision=true", "model.norm=group"])
    run = train_seg(cfg, runs_dir=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val_seg_dice_mean" in metrics["history"] and "aux_1_loss" in metrics["history"]
    assert metrics["best_val_dice_mean"] == pytest.approx(metrics["history"]["val_seg_dice_mean"][0])
    summary = evaluate_run(run, split="valid")  # best.keras reduced to its main output
    assert summary["n_images"] > 0 and (run / "eval-valid" / "per_image.csv").is_file()
