"""Train the SPADE GAN (library; the command is ``python -m cardigan_tf.train gan``).

Writes ``runs/gan-<name>-<UTC>/`` (config.yaml, provenance.json, data.json, checkpoints/,
tensorboard/, samples/, metrics.json, report.md, generator_ema.keras, generator.keras
[, encoder.keras]). The config is :class:`cardigan_tf.configs.gan.GanConfig`.
"""

from __future__ import annotations

from pathlib import Path

from cardigan_tf import runtime
from cardigan_tf.configs.gan import GanConfig
from cardigan_tf.data.source import check_data
from cardigan_tf.jobs.gan_loop import fit_gan
from cardigan_tf.run_plan import plan_run


def check_inputs(cfg: GanConfig) -> None:
    """Checks made before a run folder is created (ConfigError / DataError)."""
    cfg.validate()
    check_data(cfg.data.data, "data.data")


def train_gan(cfg: GanConfig | None, run_dir: str | Path | None = None,
              resume: str | Path | None = None, runs_dir: str | Path = "runs",
              name: str | None = None) -> Path:
    """Train (or resume) a GAN run and return its folder.

    Args:
        cfg: the config (None when resuming: the run's config.yaml is used; given, it must
            equal the saved one but for ``train.steps`` / ``train.epochs`` / ``train.strategy``).
        run_dir: write into this folder instead of a fresh ``runs_dir`` one (a folder that
            already holds a GAN run is resumed, or returned as it is when finished).
        resume: a gan run folder to continue from its latest checkpoint.
    Raises:
        NonFiniteLossError: a loss became NaN/inf (the last good checkpoint is kept).
    """
    if cfg is not None:
        cfg.train.vgg_on = cfg.train.vgg_weights is not None
    plan = plan_run("gan", cfg, resume=resume, run_dir=run_dir)
    if plan.status == "finished":
        return plan.path
    check_inputs(plan.config)
    resuming = plan.status == "resume"
    # Multi-worker: the chief writes the run folder; other workers write a temporary copy.
    folder = runtime.worker_run_dir.for_training(plan.config.train.strategy, run_dir, plan.path if resuming else None)
    with folder as (where, _):
        path = plan.open(where, runs_dir=runs_dir, name=name or plan.config.preset)
        out = fit_gan(plan.config, Path(path), resuming=resuming)
    return folder.result(out)
