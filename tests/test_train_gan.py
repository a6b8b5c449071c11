"""``python -m cardigan_tf.train gan``: run folder, exact resume and the NaN guard (32x32)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from cardigan_tf.config import ConfigError, to_dict
from cardigan_tf.configs.gan import PRESET_NAMES, build_config
from cardigan_tf.jobs import gan_callback
from cardigan_tf.jobs.gan import train_gan
from cardigan_tf.jobs.gan_loop import NonFiniteLossError, decay_start, total_steps

from harness import GAN_EAGER_6, GAN_TINY, assert_config_round_trip


def _ckpt_weights(run_dir):
    """Generator weights stored in the latest checkpoint of a run (numpy arrays by key)."""
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    keys = sorted(k for k in reader.get_variable_to_shape_map()
                  if k.startswith("generator/") and "OPTIMIZER_SLOT" not in k)
    return {k: reader.get_tensor(k) for k in keys}



def test_cli_writes_a_complete_run_folder(gan_run):
    """The session's ``gan_run``: the CLI straight through 6 (eager) steps."""
    run = gan_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["size"] == 32 and cfg["train"]["steps"] == 6
    assert cfg["train"]["vgg_on"] is False and cfg["train"]["vgg_weights"] is None
    assert (run / "checkpoints" / "checkpoint").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "final.png", "step0000003.png", "step0000006.png"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "GAN run" in (run / "report.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["vgg_on"] is False
    assert all(np.isfinite(v) for v in metrics["final"].values())
    gen = keras.models.load_model(run / "generator_ema.keras")
    out = np.asarray(gen(np.eye(4, dtype="float32")[np.zeros((1, 32, 32), int)]))
    assert out.shape == (1, 32, 32, 1) and np.abs(out).max() <= 1.0
    assert (run / "generator.keras").is_file() and not (run / "encoder.keras").exists()


class _Interrupt(Exception):
    pass


def test_interrupted_and_resumed_run_matches_straight_run(gan_run, tmp_path, monkeypatch):
    """The same config as the CLI's straight run (``gan_run``), interrupted after step 3 and
    resumed. Eager steps keep this test fast; the resume logic is the same as in graph mode."""
    straight_run = gan_run
    straight = yaml.safe_load((straight_run / "config.yaml").read_text())
    original = gan_callback.GanCallback.on_train_batch_end

    def interrupt_at_3(self, batch, logs=None):
        original(self, batch, logs)
        if self.step == 3:
            raise _Interrupt("simulated crash after step 3")

    cfg = build_config("tiny", None, [*GAN_TINY, *GAN_EAGER_6])
    assert {k: v for k, v in to_dict(cfg).items() if k != "name"} == \
        {k: v for k, v in straight.items() if k not in ("name", "kind")}  # the straight run's config
    run_dir = tmp_path / "gan-resumed"
    monkeypatch.setattr(gan_callback.GanCallback, "on_train_batch_end", interrupt_at_3)
    with pytest.raises(_Interrupt):
        train_gan(cfg, run_dir=run_dir)
    monkeypatch.setattr(gan_callback.GanCallback, "on_train_batch_end", original)
    assert not (run_dir / "metrics.json").exists()
    train_gan(None, resume=run_dir)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["start_step"] == 3 and metrics["steps"] == 6
    want, got = _ckpt_weights(straight_run), _ckpt_weights(run_dir)
    assert want.keys() == got.keys() and len(want) > 10
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    ema_a = keras.models.load_model(straight_run / "generator_ema.keras").get_weights()
    ema_b = keras.models.load_model(run_dir / "generator_ema.keras").get_weights()
    for a, b in zip(ema_a, ema_b):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = build_config("tiny", None, [*GAN_TINY, "train.steps=5", "train.lr_d=1e30", "train.run_eagerly=true",
                                          "train.checkpoint_every=1", "train.sample_every=100"])
    run_dir = tmp_path / "gan-nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: .*d_") as info:
        train_gan(cfg, run_dir=run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    failure = metrics["failure"]
    assert failure["step"] >= 2 and failure["losses"]
    assert str(failure["step"]) in str(info.value)
    last = failure["last_good_checkpoint"]
    assert last and last.endswith(f"ckpt-{failure['step'] - 1}")
    assert (run_dir / "checkpoints" / f"ckpt-{failure['step'] - 1}.index").is_file()
    assert not (run_dir / "checkpoints" / f"ckpt-{failure['step']}.index").exists()
    assert not (run_dir / "generator_ema.keras").exists()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.style"):
        build_config("tiny", None, ["model.style=banana"])
    with pytest.raises(ConfigError, match="nope"):
        build_config("tiny", None, ["train.nope=1"])
    cfg = build_config("cardigan", None, [])
    assert (cfg.model.size, cfg.model.ngf, cfg.train.batch_size, cfg.train.epochs) == (256, 48, 4, 30)
    assert decay_start(cfg, 400) == 20 * 400 and total_steps(cfg, 400) == 30 * 400
    for name in PRESET_NAMES:  # every preset, and one with overrides, written as YAML reads back as itself
        assert_config_round_trip(build_config(name, None, []), tmp_path, f"{name}.yaml")
    assert_config_round_trip(build_config("tiny", None, GAN_TINY), tmp_path, "small.yaml")
