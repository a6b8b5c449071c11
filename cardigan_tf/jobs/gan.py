"""``python -m cardigan_tf.train gan``: train the SPADE GAN (mask -> echocardiogram).

    python -m cardigan_tf.train gan                         # tiny preset on the built-in phantom
    python -m cardigan_tf.train gan --data CAMUS_DIR --preset cardigan
    python -m cardigan_tf.train gan --steps 200 --set train.lr_d=2e-4 --set model.style=encoder
    python -m cardigan_tf.train gan --resume runs/gan-tiny-20260101T000000Z

The preset defaults to ``tiny`` without a GPU (a CPU demo) and ``cardigan`` with one.
Writes ``runs/gan-<name>-<UTC>/`` (config.yaml, checkpoints/, tensorboard/, samples/,
metrics.json, report.md, generator_ema.keras, generator.keras [, encoder.keras]).
Python API for other jobs: :func:`train_gan`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import cardigan_tf.runtime as runtime
from cardigan_tf.config import ConfigError, from_dict, load_config, load_yaml, save_config, to_dict
from cardigan_tf.jobs.gan_loop import NonFiniteLossError, decay_start, total_steps  # noqa: F401

PRESET_NAMES = ("tiny", "cardigan", "spade")


@dataclasses.dataclass
class GanModelConfig:
    """Network fields (passed to ``cardigan_tf.models.presets.network_configs``)."""

    size: int = 64
    ngf: int = 16
    ndf: int = 16
    nef: int = 16
    num_D: int = 2
    n_layers: int = 4
    norm: str = "batch"
    d_norm: str = "instance"
    style: str = "mask"  # mask | z | encoder
    z_dim: int = 256
    num_upsampling_layers: str = "normal"
    spectral: bool = True
    hidden: int = 128
    num_classes: int = 4

    def validate(self) -> None:
        if self.style not in ("mask", "z", "encoder"):
            raise ConfigError(f"model.style: expected mask, z or encoder, got {self.style!r}")


@dataclasses.dataclass
class GanTrainConfig:
    """Optimisation, loss weights, run-time choices and logging intervals.

    ``epochs`` or ``steps`` (steps wins when set). ``decay_epochs``: the learning rates decay
    linearly to 0 over this many final epochs (cardiGAN: 30 epochs, the last 10 decaying).
    ``vgg_weights``: a local VGG19 (include_top=False) weights file; null = VGG loss off.
    """

    batch_size: int = 8
    epochs: int = 2
    steps: int | None = None
    steps_per_epoch: int | None = None
    decay_epochs: float = 1.0
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kl: float = 0.05
    vgg_weights: str | None = None
    vgg_on: bool = False  # recorded by the job: whether the VGG loss was on
    ema_decay: float = 0.999
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"
    jit: str = "auto"
    run_eagerly: bool = False  # debugging / tiny CPU tests: no tf.function trace
    strategy: str = "default"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    sample_every: int = 100
    log_every: int = 10
    n_samples: int = 6
    verbose: int = 1

    def validate(self) -> None:
        for key in ("batch_size", "epochs", "checkpoint_every", "sample_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: expected >= 1, got {getattr(self, key)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"train.steps: expected >= 1 or null, got {self.steps}")
        if self.strategy not in ("default", "mirrored", "multiworker"):
            raise ConfigError(f"train.strategy: expected default, mirrored or multiworker, got {self.strategy!r}")


@dataclasses.dataclass
class GanDataConfig:
    """Training data: ``data`` = CAMUS folder / seed-layout .h5, or null for the phantom."""

    data: str | None = None
    views: list[str] | None = None
    phases: list[str] | None = None
    train_patients: list[str] | None = None  # restrict training to these patient ids
    hflip: bool = True
    augment: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra AugmentConfig fields
    n_phantom: int = 50


@dataclasses.dataclass
class GanConfig:
    preset: str = "tiny"
    model: GanModelConfig = dataclasses.field(default_factory=GanModelConfig)
    train: GanTrainConfig = dataclasses.field(default_factory=GanTrainConfig)
    data: GanDataConfig = dataclasses.field(default_factory=GanDataConfig)


def preset_config(name: str) -> GanConfig:
    """GanConfig from ``cardigan_tf.models.presets.GAN_PRESETS[name]`` (flat keys sorted into
    model / train / data sections)."""
    from cardigan_tf.models.presets import get_preset

    try:
        flat = get_preset(name)
    except ValueError as exc:
        raise ConfigError(f"--preset: {exc}") from None
    data = to_dict(GanConfig(preset=name))
    for key, value in flat.items():
        for section in ("model", "train", "data"):
            if key in data[section]:
                data[section][key] = value
                break
    return from_dict(GanConfig, data, where=f"preset {name}")


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] | None = None) -> GanConfig:
    """Preset (default: tiny without a GPU, cardigan with one) <- YAML file <- --set."""
    if preset is None and config_file is not None:
        preset = load_yaml(config_file).get("preset")
    if preset is None:
        preset = "cardigan" if runtime.gpu_devices() else "tiny"
    return load_config(GanConfig, config_file, overrides, base=preset_config(preset))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    parser.add_argument("--preset", choices=PRESET_NAMES,
                        help="network/training preset (default: tiny on CPU, cardigan on GPU)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train for N epochs")
    length.add_argument("--steps", type=int, help="train for N steps (overrides epochs)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a gan run folder exactly")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections model/train/data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. train.lr_d=2e-4 (repeatable)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    parser.add_argument("--name", help="run name (default: the preset)")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                        help="tf.distribute strategy")


def run(args: argparse.Namespace) -> Path:
    if args.resume:
        return train_gan(None, resume=args.resume)
    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.data={args.data}")
    if args.epochs is not None:
        overrides += [f"train.epochs={args.epochs}", "train.steps=null"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    cfg = build_config(args.preset, args.config, overrides)
    return train_gan(cfg, runs_dir=args.runs_dir, name=args.name)


def train_gan(cfg: GanConfig | None, run_dir: str | Path | None = None,
              resume: str | Path | None = None, runs_dir: str | Path = "runs",
              name: str | None = None) -> Path:
    """Train (or resume) a GAN run and return its folder.

    Args:
        cfg: the config (ignored when resuming: the run's config.yaml is used).
        run_dir: write into this existing/new folder instead of a fresh ``runs_dir`` one.
        resume: a gan run folder to continue from its latest checkpoint.
    Raises:
        NonFiniteLossError: a loss became NaN/inf (the last good checkpoint is kept).
    """
    from cardigan_tf.jobs.gan_loop import fit_gan
    from cardigan_tf.runs import new_run_dir, open_run_dir

    if resume is not None:
        run_dir = open_run_dir(resume, kind="gan")
        cfg = load_config(GanConfig, run_dir / "config.yaml")
    else:
        if cfg is None:
            raise ValueError("train_gan: give a config or resume=RUN_DIR")
        if run_dir is None:
            run_dir = new_run_dir(runs_dir, "gan", name or cfg.preset)
        else:
            run_dir = Path(run_dir)
            for sub in ("checkpoints", "tensorboard", "samples"):
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
        cfg.train.vgg_on = cfg.train.vgg_weights is not None
        save_config(cfg, run_dir / "config.yaml")
    return fit_gan(cfg, Path(run_dir), resuming=resume is not None)
