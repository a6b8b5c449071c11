"""The GAN job's training loop: data, model building, ``fit`` with one callback, outputs.

Multi-worker (``train.strategy=multiworker``, cluster from ``TF_CONFIG``): every worker runs
this same loop on its shard of each global batch; the chief writes into the run folder, the
others into a temporary copy that :func:`cardigan_tf.jobs.gan.train_gan` deletes at the end.

Exact resume: a ``tf.train.Checkpoint`` holds G, D, E, the EMA generator, both optimizers'
states, the step counter and the noise seed state; the training dataset is deterministic for
its seed and a resumed run skips the batches already consumed. The noise of every step is a
function of (seed, step), so a resumed run draws the same noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import cardigan_tf.runtime as runtime
from cardigan_tf.configs.gan import network_configs
from cardigan_tf.data.pipeline import Selection, Training, count_samples, make_dataset
from cardigan_tf.files import atomic_path, atomic_write_text, write_json
from cardigan_tf.jobs.gan_callback import GanCallback
from cardigan_tf.losses.gan import VGGPerceptualLoss
from cardigan_tf.models.discriminator import build_discriminator
from cardigan_tf.models.encoder import build_encoder
from cardigan_tf.models.gan import ConstantThenLinearDecay, SpadeGAN
from cardigan_tf.models.generator import build_generator
from cardigan_tf.run_data import run_dataset


class NonFiniteLossError(RuntimeError):
    """A GAN loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


def total_steps(cfg, steps_per_epoch: int) -> int:
    return int(cfg.train.steps) if cfg.train.steps else int(cfg.train.epochs) * steps_per_epoch


def decay_start(cfg, steps_per_epoch: int) -> int:
    """First step of the linear decay: the last ``decay_epochs`` epochs, or with ``steps``
    the same fraction (decay_epochs / epochs) of the steps."""
    total = total_steps(cfg, steps_per_epoch)
    if cfg.train.steps:
        frac = min(1.0, cfg.train.decay_epochs / max(cfg.train.epochs, 1))
        return int(round(total * (1.0 - frac)))
    return max(0, total - int(math.ceil(cfg.train.decay_epochs * steps_per_epoch)))


def _augment(cfg):
    """The GAN's typed AugmentConfig, or None when it turns nothing on."""
    aug = cfg.data.augment
    aug.validate()
    active = (aug.hflip or aug.rotation > 0 or tuple(aug.scale) != (1.0, 1.0) or aug.translation > 0
              or (aug.p_intensity > 0 and (aug.brightness > 0 or tuple(aug.contrast) != (1.0, 1.0)
                                           or tuple(aug.gamma) != (1.0, 1.0) or aug.noise_std > 0
                                           or aug.blur_prob > 0)))
    return aug if active else None


def _n_train(path: Path, cfg) -> int:
    return max(1, count_samples(str(path), "train", views=cfg.data.views, phases=cfg.data.phases,
                                patients=cfg.data.train_patients))


def build_gan(cfg, strategy=None):
    """SpadeGAN with compiled optimizers for ``cfg`` (call after set_precision)."""
    spe = cfg.train.steps_per_epoch or 1
    total, start = total_steps(cfg, spe), decay_start(cfg, spe)
    g_cfg, d_cfg, e_cfg = network_configs(cfg.model)
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        gen = build_generator(g_cfg)
        disc = build_discriminator(d_cfg)
        enc = build_encoder(e_cfg) if cfg.model.style == "encoder" else None
        gan = SpadeGAN(gen, disc, enc, ema_decay=cfg.train.ema_decay, seed=cfg.train.seed)
        t = cfg.train
        gan.compile(
            g_optimizer=keras.optimizers.Adam(ConstantThenLinearDecay(t.lr_g, total, start),
                                              beta_1=t.beta1, beta_2=t.beta2),
            d_optimizer=keras.optimizers.Adam(ConstantThenLinearDecay(t.lr_d, total, start),
                                              beta_1=t.beta1, beta_2=t.beta2),
            lambda_feat=t.lambda_feat, lambda_vgg=t.lambda_vgg, lambda_kl=t.lambda_kl,
            vgg=VGGPerceptualLoss(t.vgg_weights) if t.vgg_weights else None,
            jit_compile=runtime.resolve_jit(t.jit) and not t.run_eagerly,
            run_eagerly=t.run_eagerly,
        )
    return gan


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fit_gan(cfg, run_dir: Path, resuming: bool = False) -> Path:
    t = cfg.train
    precision = runtime.set_precision(t.precision)
    if t.deterministic:
        runtime.enable_determinism(t.seed)
    else:
        keras.utils.set_random_seed(t.seed)
    strategy = runtime.get_strategy(t.strategy)
    path = _run_data(cfg, run_dir)
    if not t.steps_per_epoch:
        t.steps_per_epoch = max(1, _n_train(path, cfg) // t.batch_size)
    spe = t.steps_per_epoch
    total = total_steps(cfg, spe)
    gan = build_gan(cfg, strategy)
    manager = tf.train.CheckpointManager(gan.checkpoint(), str(run_dir / "checkpoints"),
                                         max_to_keep=t.keep_checkpoints)
    if resuming and manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(gan.step.numpy())
    d = cfg.data
    common = dict(size=cfg.model.size, select=Selection(views=d.views, phases=d.phases))
    train_ds = make_dataset(str(path), "train", size=cfg.model.size, batch_size=t.batch_size,
                            select=Selection(views=d.views, phases=d.phases, patients=d.train_patients),
                            training=Training(seed=t.seed, augment=_augment(cfg), skip_batches=start),
                            strategy=strategy if strategy.num_replicas_in_sync > 1 else None)
    runtime.fix_keras_fit(gan, strategy, train_ds.element_spec)  # Keras 3 fit under MWMS
    samples = _sample_batch(make_dataset, path, common, t.n_samples)
    cb = GanCallback(run_dir, manager, total, samples, t, start)
    if start < total:
        with runtime.lost_worker_errors(runtime.is_multiworker(strategy)):
            gan.fit(train_ds, epochs=math.ceil(total / spe), steps_per_epoch=spe,
                    initial_epoch=start // spe, callbacks=[cb], shuffle=False, verbose=t.verbose)
    metrics = dict(cb.summary(), precision=precision, jit=bool(gan.jit_compile),
                   strategy=t.strategy, replicas=strategy.num_replicas_in_sync,
                   total_steps=total, steps_per_epoch=spe, vgg_on=gan.vgg is not None,
                   data=str(path))
    if cb.failure is not None:
        metrics["failure"] = cb.failure
        write_json(run_dir / "metrics.json", metrics)
        raise NonFiniteLossError(cb.failure["message"])
    step = int(gan.step.numpy())
    if not (manager.latest_checkpoint or "").endswith(f"ckpt-{step}"):
        manager.save(checkpoint_number=step)
    cb.write_samples(gan, final=True)
    for model, fname in ((gan.generator_ema, "generator_ema.keras"), (gan.generator, "generator.keras"),
                         (gan.encoder, "encoder.keras")):
        if model is not None:
            save_model(model, run_dir / fname)
    write_json(run_dir / "metrics.json", metrics)
    _report(run_dir, cfg, metrics)
    return run_dir


def _run_data(cfg, run_dir: Path) -> Path:
    """The run's dataset (split with ``data.seed``, the U-Net's key), resolved once and recorded."""
    return run_dataset(run_dir, cfg.data.data, cfg.model.size, cfg.data.seed, cfg.data.n_phantom, cfg.data.phantom)


def save_model(model, path: Path) -> None:
    """``model`` saved as the ``.keras`` file ``path``, atomically."""
    with atomic_path(path) as tmp:
        keras_path = tmp.with_name(tmp.name + ".keras")  # Keras wants the .keras suffix
        model.save(keras_path)
        keras_path.rename(tmp)


def _sample_batch(make_dataset, path, common, n):
    """Fixed (image [0,1], mask) examples for sample grids: valid split, else train."""
    for split in ("valid", "train"):
        try:
            ds = make_dataset(str(path), split, batch_size=n, **common)
            image, mask = next(iter(ds.take(1)))
            return np.asarray(image), np.asarray(mask)
        except (StopIteration, ValueError, KeyError, LookupError):
            continue
    raise ValueError(f"{path}: no images in the valid or train split for sample grids")


def _report(run_dir: Path, cfg, m: dict) -> None:
    losses = m.get("final", {})
    lines = [
        f"# GAN run {run_dir.name}", "",
        f"- preset `{cfg.preset}`, {cfg.model.size}x{cfg.model.size}, ngf {cfg.model.ngf}, "
        f"ndf {cfg.model.ndf}, style `{cfg.model.style}`",
        f"- data: `{m['data']}`",
        f"- steps {m['steps']} / {m['total_steps']} (batch {cfg.train.batch_size}), "
        f"{m['images_per_s']:.2f} images/s, wall {m['wall_s']:.1f} s",
        f"- precision {m['precision']}, XLA {m['jit']}, strategy {m['strategy']} "
        f"({m['replicas']} replica(s)), VGG loss {'on' if m['vgg_on'] else 'off (no weights file)'}",
        "", "| loss | final |", "|---|---|",
        *[f"| {k} | {v:.4g} |" for k, v in sorted(losses.items())],
        "", "Samples: `samples/` (mask | real | generated | EMA). Generator: `generator_ema.keras`.",
    ]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
