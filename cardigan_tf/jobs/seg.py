"""``python -m cardigan_tf.train seg``: train the U-Net segmenter.

Phantom by default; ``--data`` takes any CAMUS layout or a seed-layout .h5 (resolved by
cardigan_tf.data.source.resolve_data into the run folder). One run folder
``runs/seg-<name>-<UTC>/`` holds: ``config.yaml``, ``data.json`` (the resolved dataset path),
``checkpoints/`` (exact resume: weights + optimizer state + epoch via Keras' BackupAndRestore,
plus ``state.json`` for the best-model / early-stopping counters), ``best.keras`` (best
validation Dice, mean of LV endo, LV epi and LA), ``final.keras``, ``tensorboard/`` (scalars and
validation overlays), ``samples/`` (overlay PNGs per epoch), ``metrics.json`` and ``report.md``.

Resume (``--resume RUN_DIR`` / ``train_seg(cfg, resume=RUN_DIR)``) continues exactly: the
weights, optimizer state (including its iteration count, which drives the cosine schedule),
epoch, best value and patience counter are restored, and the seeded training stream skips the
batches already consumed. The "plateau" schedule's counter is not restored (documented limit).

Examples::

    python -m cardigan_tf.train seg --preset tiny --epochs 5
    python -m cardigan_tf.train seg --data /data/CAMUS --preset camus --set train.lr=3e-4
    python -m cardigan_tf.train seg --resume runs/seg-tiny-20260101T000000Z
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cardigan_tf.runtime as runtime
from cardigan_tf.config import ConfigError, from_dict, load_config, save_config, to_dict
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.models.unet import UNET_PRESETS, UNetConfig
from cardigan_tf.runs import atomic_write_text, new_run_dir, open_run_dir, write_json

SCHEDULES = ("cosine", "constant", "plateau")


@dataclass
class SegTrainConfig:
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    lr: float = 1e-3
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    patience: int = 10  # early stopping on validation Dice; 0 = off
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: list[float] | None = None
    seed: int = 0
    precision: str = "auto"
    jit: Any = "auto"
    strategy: str = "default"
    n_overlays: int = 4
    deep_supervision_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        for key in ("batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: expected >= 1, got {getattr(self, key)}")
        if self.steps_per_epoch < 0 or self.lr <= 0:
            raise ConfigError("train.steps_per_epoch must be >= 0 and train.lr > 0")


@dataclass
class SegDataConfig:
    data: str | None = None
    synthetic: str | None = None
    synthetic_fraction: float = 0.0
    size: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    views: list[str] = field(default_factory=lambda: ["2CH", "4CH"])
    phases: list[str] = field(default_factory=lambda: ["ED", "ES"])
    train_patients: list[str] | None = None
    n_phantom: int = 60
    seed: int = 0  # phantom generation / seeded split of the data

    def validate(self) -> None:
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ConfigError(f"data.synthetic_fraction: expected [0, 1), got {self.synthetic_fraction}")
        if self.synthetic_fraction > 0 and not self.synthetic:
            raise ConfigError("data.synthetic_fraction > 0 needs data.synthetic (a seed-layout .h5)")


@dataclass
class SegConfig:
    name: str = "tiny"
    model: UNetConfig = field(default_factory=lambda: copy.deepcopy(UNET_PRESETS["tiny"]))
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)

    def validate(self) -> None:
        self.model.validate()
        if self.data.size != self.model.size:
            raise ConfigError(f"data.size ({self.data.size}) must equal model.size ({self.model.size})")


def preset_config(preset: str = "tiny") -> SegConfig:
    """Defaults for a preset: "tiny" (64x64, CI / phantom) or "camus" (256x256)."""
    if preset not in UNET_PRESETS:
        raise ConfigError(f"--preset {preset!r}: expected one of {sorted(UNET_PRESETS)}")
    model = copy.deepcopy(UNET_PRESETS[preset])
    cfg = SegConfig(name=preset, model=model, data=SegDataConfig(size=model.size))
    if preset == "camus":
        cfg.train = SegTrainConfig(batch_size=8, epochs=60, lr=1e-3, patience=15)
    return cfg


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="CAMUS folder (any layout) or seed-layout .h5; default: built-in phantom")
    parser.add_argument("--synthetic", help="synthetic seed-layout .h5 to mix into training")
    parser.add_argument("--synthetic-fraction", type=float, help="fraction of synthetic images per batch")
    parser.add_argument("--preset", choices=sorted(UNET_PRESETS), default="tiny", help="model/training preset")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides train.epochs)")
    parser.add_argument("--config", help="YAML file with SegConfig values")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    parser.add_argument("--runs-dir", default="runs", help="where run folders are created")
    parser.add_argument("--name", help="run name (default: the preset)")
    parser.add_argument("--strategy", choices=["default", "mirrored", "multiworker"], help="tf.distribute strategy")


def config_from_args(args: argparse.Namespace) -> SegConfig:
    """defaults(preset) <- --config <- --set <- explicit flags."""
    cfg = load_config(SegConfig, args.config, list(args.overrides or []), base=preset_config(args.preset))
    if args.data is not None:
        cfg.data.data = args.data
    if args.synthetic is not None:
        cfg.data.synthetic = args.synthetic
    if args.synthetic_fraction is not None:
        cfg.data.synthetic_fraction = args.synthetic_fraction
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.name:
        cfg.name = args.name
    if args.strategy:
        cfg.train.strategy = args.strategy
    return from_dict(SegConfig, to_dict(cfg))  # re-validate


def run(args: argparse.Namespace) -> Path:
    if args.resume:
        run_dir = open_run_dir(args.resume, "seg")
        cfg = load_config(SegConfig, run_dir / "config.yaml")
        if args.epochs is not None:
            cfg.train.epochs = args.epochs
        return train_seg(cfg, resume=run_dir)
    return train_seg(config_from_args(args), runs_dir=args.runs_dir)


# ----------------------------------------------------------------------------- training


def _count_frames(path: Path, split: str, views, phases, patients) -> int:
    from cardigan_tf.data.h5layout import iter_samples

    pats = set(patients) if patients else None
    return sum(1 for _, s in iter_samples(path, [split], views, phases) if pats is None or s.patient in pats)


def resolve_run_data(cfg: SegConfig, run_dir: Path) -> Path:
    """The seed-layout .h5 of this run (resolved once, recorded in run_dir/data.json)."""
    record = run_dir / "data.json"
    if record.is_file():
        path = Path(json.loads(record.read_text())["path"])
        if path.is_file():
            return path
    from cardigan_tf.data.source import resolve_data

    path = Path(resolve_data(cfg.data.data, run_dir / "data", size=cfg.data.size, seed=cfg.data.seed,
                             n_phantom=cfg.data.n_phantom))
    write_json(record, {"path": str(path.resolve()), "requested": cfg.data.data})
    return path


def _schedule(cfg: SegTrainConfig, total_steps: int):
    import keras

    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, total_steps), alpha=0.01)
    return cfg.lr


def _compile(model, cfg: SegConfig, total_steps: int, jit: bool):
    import keras

    from cardigan_tf.losses.segmentation import DiceCELoss
    from cardigan_tf.metrics.keras_metrics import structure_dice_metrics

    t = cfg.train
    loss = DiceCELoss(t.dice_weight, t.ce_weight, cfg.model.num_classes, class_weights=t.class_weights)
    opt = keras.optimizers.AdamW(learning_rate=_schedule(t, total_steps), weight_decay=t.weight_decay)
    n_out = len(model.outputs)
    if n_out == 1:
        model.compile(optimizer=opt, loss=loss, metrics=structure_dice_metrics(cfg.model.num_classes), jit_compile=jit)
    else:
        weights = (list(t.deep_supervision_weights) + [0.25] * n_out)[:n_out]
        metrics = {model.output_names[0]: structure_dice_metrics(cfg.model.num_classes)}
        model.compile(optimizer=opt, loss=[loss] * n_out, loss_weights=weights, metrics=metrics, jit_compile=jit)
    opt.build(model.trainable_variables)
    return model


def monitor_key(model) -> str:
    """The log key of the validation mean Dice (prefixed by the output name with deep supervision)."""
    return "val_dice_mean" if len(model.outputs) == 1 else f"val_{model.output_names[0]}_dice_mean"


def train_seg(cfg: SegConfig, run_dir: str | Path | None = None, resume: str | Path | None = None,
              runs_dir: str | Path = "runs", callbacks: list | None = None) -> Path:
    """Train the U-Net described by ``cfg``; return the run folder.

    ``run_dir``: an explicit folder (created if missing) instead of a new one under
    ``runs_dir``; ``resume``: an existing seg run folder to continue exactly (pass the config
    saved in it, e.g. ``load_config(SegConfig, run/"config.yaml")``); ``callbacks``: extra Keras
    callbacks, run after the built-in ones.
    """
    from cardigan_tf.jobs.seg_callbacks import BestAndEarlyStop, OverlayLogger

    if resume is not None:
        run_dir = open_run_dir(resume, "seg")
    elif run_dir is None:
        run_dir = new_run_dir(runs_dir, "seg", cfg.name)
    else:
        run_dir = Path(run_dir)
        for sub in ("checkpoints", "tensorboard", "samples"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
    cfg.validate()
    save_config(cfg, run_dir / "config.yaml")

    runtime.set_precision(cfg.train.precision)
    import keras

    from cardigan_tf.data.pipeline import make_dataset
    from cardigan_tf.models.unet import build_unet

    t, d = cfg.train, cfg.data
    data_path = resolve_run_data(cfg, run_dir)
    n_train = _count_frames(data_path, "train", d.views, d.phases, d.train_patients)
    steps = t.steps_per_epoch or max(1, -(-n_train // t.batch_size))
    strategy = runtime.get_strategy(t.strategy)
    jit = runtime.resolve_jit(t.jit)

    backup_dir = run_dir / "checkpoints" / "backup"
    meta_path = backup_dir / "training_metadata.json"
    initial_epoch = json.loads(meta_path.read_text())["epoch"] if meta_path.is_file() else 0

    common = dict(size=d.size, views=d.views, phases=d.phases, strategy=strategy)
    train_ds = make_dataset(str(data_path), "train", batch_size=t.batch_size, training=True, augment=d.augment,
                            synthetic=d.synthetic, synthetic_fraction=d.synthetic_fraction if d.synthetic else 0.0,
                            seed=t.seed, patients=d.train_patients, skip_batches=initial_epoch * steps, **common)
    val_ds = make_dataset(str(data_path), "valid", batch_size=t.batch_size, training=False, **common)

    with strategy.scope():
        model = build_unet(cfg.model)
        _compile(model, cfg, steps * t.epochs, jit)
    n_out = len(model.outputs)
    if n_out > 1:
        train_ds = train_ds.map(lambda x, y: (x, (y,) * n_out))
        val_ds_fit = val_ds.map(lambda x, y: (x, (y,) * n_out))
    else:
        val_ds_fit = val_ds

    monitor = monitor_key(model)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir), save_freq="epoch", delete_checkpoint=False),
        BestAndEarlyStop(run_dir, monitor, patience=t.patience),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False, update_freq="epoch",
                                    profile_batch=0),
        OverlayLogger(val_ds, run_dir, n=t.n_overlays),
        *(callbacks or []),
    ]
    if t.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                           patience=max(1, t.patience // 3), min_lr=t.lr * 1e-3))
    start = time.time()
    history = model.fit(train_ds, validation_data=val_ds_fit, epochs=t.epochs, steps_per_epoch=steps,
                        callbacks=callbacks, shuffle=False, verbose=1 if _interactive() else 2)
    seconds = time.time() - start
    model.save(run_dir / "final.keras")
    return _finish(run_dir, cfg, history.history, monitor, steps, seconds, n_train, data_path, initial_epoch)


def _interactive() -> bool:
    import sys

    return sys.stdout.isatty()


def _finish(run_dir: Path, cfg: SegConfig, hist: dict, monitor: str, steps: int, seconds: float,
            n_train: int, data_path: Path, initial_epoch: int) -> Path:
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    epochs_run = len(next(iter(hist.values()), []))  # epochs run in this session
    full_history = state.get("history") or hist
    images = epochs_run * steps * cfg.train.batch_size
    prefix = monitor[len("val_"):-len("dice_mean")]
    best_idx = state.get("best_logs", {})
    metrics = {
        "best_epoch": state.get("best_epoch"),
        "best_val_dice_mean": state.get("best"),
        "best_val": {k: best_idx.get(f"val_{prefix}dice_{k}") for k in ("lv_endo", "lv_epi", "la", "mean")},
        "stopped_early": state.get("stopped_early", False),
        "epochs_completed": initial_epoch + epochs_run,
        "steps_per_epoch": steps,
        "train_images": n_train,
        "train_seconds_this_session": round(seconds, 2),
        "train_images_per_second": round(images / seconds, 2) if seconds > 0 else None,
        "history": {k: [float(v) for v in vals] for k, vals in full_history.items()},
        "data": str(data_path),
    }
    write_json(run_dir / "metrics.json", metrics)
    bv = metrics["best_val"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    report = [
        f"# Segmentation run `{run_dir.name}`",
        "",
        f"- data: `{cfg.data.data or 'built-in phantom'}` (resolved: `{data_path}`)"
        + (f", synthetic `{cfg.data.synthetic}` at {cfg.data.synthetic_fraction:.0%}" if cfg.data.synthetic else ""),
        f"- model: U-Net size {cfg.model.size}, depth {cfg.model.depth}, base {cfg.model.base_filters}, "
        f"norm {cfg.model.norm}, upsampling {cfg.model.upsampling}, deep supervision {cfg.model.deep_supervision}",
        f"- training: {metrics['epochs_completed']} epochs x {steps} steps, batch {cfg.train.batch_size}, "
        f"lr {cfg.train.lr} ({cfg.train.schedule}), {metrics['train_images_per_second']} images/s",
        f"- best epoch: {metrics['best_epoch']} (early stop: {metrics['stopped_early']})",
        "",
        "| validation Dice | LV endo | LV epi | LA | mean |",
        "|---|---|---|---|---|",
        f"| best.keras | {fmt(bv['lv_endo'])} | {fmt(bv['lv_epi'])} | {fmt(bv['la'])} | {fmt(bv['mean'])} |",
        "",
        f"Evaluate in mm at the original resolution: `python -m cardigan_tf.evaluate {run_dir}`",
        "",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(report))
    return run_dir
