"""Train the SPADE GAN (library; the command is ``python -m cardigan_tf.train gan``).

Writes ``runs/gan-<name>-<UTC>/`` (config.yaml, provenance.json, data.json, checkpoints/,
tensorboard/, samples/, metrics.json, report.md, generator_ema.keras, generator.keras
[, encoder.keras]). The config is :class:`cardigan_tf.configs.gan.GanConfig`.
"""

from __future__ import annotations

from pathlib import Path

from cardigan_tf.configs.gan import GanConfig, build_config, preset_config  # noqa: F401  (re-exported)
from cardigan_tf.jobs.gan_loop import NonFiniteLossError, decay_start, total_steps  # noqa: F401


def check_inputs(cfg: GanConfig) -> None:
    """Checks made before a run folder is created (ConfigError / DataError)."""
    from cardigan_tf.data.source import check_data

    cfg.validate()
    check_data(cfg.data.data, "data.data")


def train_gan(cfg: GanConfig | None, run_dir: str | Path | None = None,
              resume: str | Path | None = None, runs_dir: str | Path = "runs",
              name: str | None = None) -> Path:
    """Train (or resume) a GAN run and return its folder.

    Args:
        cfg: the config (None when resuming: the run's config.yaml is used).
        run_dir: write into this existing/new folder instead of a fresh ``runs_dir`` one.
        resume: a gan run folder to continue from its latest checkpoint.
    Raises:
        NonFiniteLossError: a loss became NaN/inf (the last good checkpoint is kept).
    """
    from cardigan_tf import runtime
    from cardigan_tf.jobs.gan_loop import fit_gan
    from cardigan_tf.runs import create_run, ensure_run_subdirs, open_run

    if resume is not None:
        run = open_run(resume, kind="gan")
        cfg = run.config
    elif cfg is None:
        raise ValueError("train_gan: give a config or resume=RUN_DIR")
    check_inputs(cfg)
    # Multi-worker: the chief writes the run folder; other workers write a temporary copy.
    folder = runtime.worker_run_dir.for_training(cfg.train.strategy, run_dir, resume)
    with folder as (where, _):
        if resume is not None:
            run_dir = ensure_run_subdirs(where)
        else:
            cfg.train.vgg_on = cfg.train.vgg_weights is not None
            run_dir = create_run("gan", cfg, runs_dir=runs_dir, run_dir=where, name=name or cfg.preset)
        out = fit_gan(cfg, Path(run_dir), resuming=resume is not None)
    return folder.result(out)
