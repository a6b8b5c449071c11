"""Train the U-Net segmenter (library; the command is ``python -m cardigan_tf.train seg``).

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

import json
import shutil
import sys
import time
from pathlib import Path

import keras

import cardigan_tf.runtime as runtime
from cardigan_tf.configs.seg import SegConfig
from cardigan_tf.data.pipeline import Selection, Training, count_samples, make_dataset, synthetic_samples
from cardigan_tf.data.source import check_data
from cardigan_tf.data.synthetic import check_synthetic_set
from cardigan_tf.files import atomic_write_text, write_json
from cardigan_tf.jobs.seg_callbacks import BestAndEarlyStop, OverlayLogger
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.losses.segmentation import DiceCELoss
from cardigan_tf.metrics.keras_metrics import structure_dice_metrics
from cardigan_tf.models.unet import build_unet
from cardigan_tf.run_plan import plan_run
from cardigan_tf.run_data import run_dataset


def count_train_frames(data_path, cfg: SegConfig) -> int:
    """Training frames of ``cfg`` in ``data_path`` (.h5 or TFRecord folder)."""
    d = cfg.data
    return count_samples(str(data_path), d.pool, views=d.views, phases=d.phases, patients=d.train_patients)


def resolve_run_data(cfg: SegConfig, run_dir: Path) -> Path:
    """The seed-layout .h5 (or TFRecord folder) of this run: resolved once, recorded with its
    fingerprint in run_dir/data.json, and reused from there."""
    return run_dataset(run_dir, cfg.data.data, cfg.data.size, cfg.data.seed, cfg.data.n_phantom, cfg.data.phantom)


def check_inputs(cfg: SegConfig) -> None:
    """Everything that can be checked before a run folder is created (raises ConfigError /
    DataError): the config, the data and the synthetic set (its size, and, when the data is
    already a prepared file, that it was not made from validation or test patients)."""
    cfg.validate()
    check_data(cfg.data.data, "data.data")
    if cfg.data.synthetic:
        data = cfg.data.data
        prepared = data if data and Path(data).is_file() else None
        check_synthetic_set(cfg.data.synthetic, prepared, size=cfg.data.size)


def _schedule(cfg, total_steps: int):
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=max(1, total_steps), alpha=0.01)
    return cfg.lr


def compile_unet(model, cfg: SegConfig, total_steps: int, jit: bool):
    """Compile a U-Net for ``cfg``: AdamW with its schedule, Dice + CE loss (with deep
    supervision weights), per-structure Dice metrics; build the optimizer."""
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


def train_seg(cfg: SegConfig | None, run_dir: str | Path | None = None, resume: str | Path | None = None,
              runs_dir: str | Path = "runs", callbacks: list | None = None, name: str | None = None) -> Path:
    """Train the U-Net described by ``cfg``; return the run folder.

    ``run_dir``: an explicit folder instead of a new one under ``runs_dir`` (a folder that
    already holds a seg run is resumed, or returned as it is when finished); ``resume``: an
    existing seg run folder to continue exactly (``cfg`` None: the config saved in it; a given
    config must equal the saved one but for ``train.epochs`` and ``train.strategy``);
    ``callbacks``: extra Keras callbacks, run after the built-in ones. Inputs are checked
    before any folder is created.
    """
    plan = plan_run("seg", cfg, resume=resume, run_dir=run_dir)
    if plan.status == "finished":
        return plan.path
    cfg = plan.config
    check_inputs(cfg)
    resuming = plan.status == "resume"
    # Multi-worker: the chief writes the run folder; other workers write a temporary copy.
    folder = runtime.worker_run_dir.for_training(cfg.train.strategy, run_dir, plan.path if resuming else None)
    with folder as (where, _):
        created = not resuming and (where is None or not Path(where).exists())
        path = plan.open(where, runs_dir=runs_dir, name=name or cfg.name)
        if cfg.data.synthetic and not resuming:  # the patient check needs the resolved data (phantom, CAMUS folder)
            try:
                check_synthetic_set(cfg.data.synthetic, resolve_run_data(cfg, path), size=cfg.data.size)
            except Exception:
                if created:
                    shutil.rmtree(path, ignore_errors=True)
                raise
        out = _train(cfg, Path(path), callbacks)
    return folder.result(out)


def _train(cfg: SegConfig, run_dir: Path, callbacks: list | None) -> Path:
    runtime.set_precision(cfg.train.precision)

    keras.utils.set_random_seed(cfg.train.seed)  # the same initial weights for the same seed

    t, d = cfg.train, cfg.data
    data_path = resolve_run_data(cfg, run_dir)
    n_train = count_train_frames(data_path, cfg)
    steps, share = cfg.stream(n_train)
    strategy = runtime.get_strategy(t.strategy)
    jit = runtime.resolve_jit(t.jit)

    backup_dir = run_dir / "checkpoints" / "backup"
    meta_path = backup_dir / "training_metadata.json"
    initial_epoch = json.loads(meta_path.read_text())["epoch"] if meta_path.is_file() else 0

    common = dict(size=d.size, batch_size=t.batch_size, strategy=strategy)
    training = Training(seed=t.seed, augment=d.augment, synthetic=d.synthetic if share else None,
                        synthetic_fraction=share, skip_batches=initial_epoch * steps)
    train_ds = make_dataset(str(data_path), d.pool, training=training,
                            select=Selection(views=d.views, phases=d.phases, patients=d.train_patients), **common)
    val_ds = make_dataset(str(data_path), d.pool if d.valid_patients is not None else "valid",
                          select=Selection(views=d.views, phases=d.phases, patients=d.valid_patients), **common)

    with strategy.scope():
        model = build_unet(cfg.model)
        compile_unet(model, cfg, steps * t.epochs, jit)
    n_out = len(model.outputs)
    if n_out > 1:
        train_ds = train_ds.map(lambda x, y: (x, (y,) * n_out))
        val_ds_fit = val_ds.map(lambda x, y: (x, (y,) * n_out))
    else:
        val_ds_fit = val_ds
    runtime.fix_keras_fit(model, strategy, train_ds.element_spec)  # Keras 3 fit under MWMS

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
    with runtime.lost_worker_errors(runtime.is_multiworker(strategy)):
        history = model.fit(train_ds, validation_data=val_ds_fit, epochs=t.epochs, steps_per_epoch=steps,
                            callbacks=callbacks, shuffle=False, verbose=1 if _interactive() else 2)
    seconds = time.time() - start
    model.save(run_dir / "final.keras")
    return _finish(run_dir, cfg, history.history, monitor, (steps, share), seconds, n_train, data_path, initial_epoch)


def _interactive() -> bool:
    return sys.stdout.isatty()


def samples_seen(epochs: int, steps: int, batch_size: int, share: float) -> dict[str, int]:
    """Real and synthetic samples of ``epochs`` epochs of ``steps`` batches mixed at ``share``."""
    n = int(epochs or 0) * steps * batch_size
    synthetic = synthetic_samples(n, share) if share else 0
    return {"real": n - synthetic, "synthetic": synthetic}


def _finish(run_dir: Path, cfg: SegConfig, hist: dict, monitor: str, stream: tuple[int, float], seconds: float,
            n_train: int, data_path: Path, initial_epoch: int) -> Path:
    steps, share = stream
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    epochs_run = len(next(iter(hist.values()), []))  # epochs run in this session
    full_history = state.get("history") or hist
    images = epochs_run * steps * cfg.train.batch_size
    prefix = monitor[len("val_"):-len("dice_mean")]
    best_idx = state.get("best_logs", {})
    metrics = {
        "best_epoch": state.get("best_epoch"),
        "best_val_dice_mean": state.get("best"),
        "best_val": {k: best_idx.get(f"val_{prefix}dice_{k}") for k in (*STRUCTURES, "mean")},
        "stopped_early": state.get("stopped_early", False),
        "epochs_completed": initial_epoch + epochs_run,
        "steps_per_epoch": steps,
        "exposure": cfg.data.exposure if share else None,
        "synthetic_share": share,
        # exposure of final.keras (every epoch) and of best.keras (up to its epoch)
        "samples_seen": samples_seen(initial_epoch + epochs_run, steps, cfg.train.batch_size, share),
        "samples_seen_best": samples_seen(state.get("best_epoch"), steps, cfg.train.batch_size, share),
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
        + (f", synthetic `{cfg.data.synthetic}` at {cfg.data.synthetic_fraction:.0%} ({cfg.data.exposure}: "
           f"{share:.1%} of the stream)" if share else ""),
        f"- samples seen: {metrics['samples_seen']['real']} real, {metrics['samples_seen']['synthetic']} synthetic "
        f"(best.keras: {metrics['samples_seen_best']['real']} real, {metrics['samples_seen_best']['synthetic']} synthetic)",
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
