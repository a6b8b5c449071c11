"""Data pipeline throughput: phantom generation and decoded (augmented) pairs per second.

``python -m cardigan_tf.bench pipeline [--size 256] [--batch-size 64] [--batches 40] [--warp-impl pillow|tf]``
``python -m cardigan_tf.bench pipeline --per-op``: each augmentation op alone, one thread.

Builds a phantom seed-layout .h5 in a temporary folder (or uses ``--data``), then times
``make_dataset`` batches (after a warm-up) with and without augmentation, and the phantom
generator on one core. Prints one line per figure and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from cardigan_tf.data import augment as A
from cardigan_tf.data import phantom
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.data.pipeline import Training, make_dataset
from cardigan_tf.runtime import available_cores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="seed-layout .h5 to read (default: a fresh phantom)")
    parser.add_argument("--patients", type=int, default=50, help="phantom patients (default 50 = 200 frames)")
    parser.add_argument("--size", type=int, default=256, help="working size (default 256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--phantom-pairs", type=int, default=200, help="pairs for the generator timing")
    parser.add_argument("--one-hot", action="store_true", help="time one-hot masks instead of labels")
    parser.add_argument("--p-geometric", type=float, default=None,
                        help="AugmentConfig.p_geometric (share of samples warped; default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-op", action="store_true",
                        help="only time each augmentation op alone on one batch (one thread, CPU ms per batch)")
    parser.add_argument("--warp-impl", default="pillow", choices=("pillow", "tf"), help="augment_batch warp_impl")


def time_ops(size: int, batch: int, reps: int = 10, seed: int = 0) -> dict[str, float]:
    """CPU ms per batch of ``batch`` phantom pairs for each augmentation op alone, one TF thread."""
    try:  # one thread: per-op CPU time without thread-pool overheads
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised (another bench module made a tensor on import)
        print("note: TensorFlow already initialised, thread pools not limited to one thread")
    rng = np.random.default_rng(seed)
    pairs = [phantom.make_pair(rng, ("2CH", "4CH")[i % 2], ("ED", "ES")[(i // 2) % 2], size) for i in range(batch)]
    im = tf.constant(np.stack([p[0] for p in pairs])[..., None])
    m = tf.constant(np.stack([p[1] for p in pairs]).astype(np.int32))
    cfg = A.AugmentConfig()
    off = dict(rotation=0, scale=(1.0, 1.0), translation=0, brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0),
               noise_std=0.0, blur_prob=0.0)
    geo = A.AugmentConfig(**off, p_geometric=cfg.p_geometric)
    geo = dataclasses.replace(geo, rotation=cfg.rotation, scale=cfg.scale, translation=cfg.translation)
    t_all = A.affine_transforms(batch, size, size, tf.constant([1, 2], tf.int64), dataclasses.replace(cfg, p_geometric=1.0))
    only = lambda **kw: A.AugmentConfig(**{**off, "p_intensity": cfg.p_intensity, **kw})  # noqa: E731
    ops = {
        "augment_batch, default (pillow warp)": lambda s: A.augment_batch(im, m, s, cfg, "pillow"),
        "augment_batch, default (tf warp)": lambda s: A.augment_batch(im, m, s, cfg, "tf"),
        "geometry only, p 0.5 (pillow warp)": lambda s: A.augment_batch(im, m, s, geo, "pillow"),
        "geometry only, p 0.5 (tf warp)": lambda s: A.augment_batch(im, m, s, geo, "tf"),
        "tf op: bilinear warp, every sample": lambda s: A.warp(im, t_all, "BILINEAR"),
        "tf op: nearest uint8 warp, every sample": lambda s: A.warp(tf.cast(m[..., None], tf.uint8), t_all, "NEAREST"),
        "intensity, default": lambda s: A.intensity(im, s, cfg),
        "blur only (p 0.2)": lambda s: A.intensity(im, s, only(blur_prob=cfg.blur_prob, blur_sigma=cfg.blur_sigma)),
        "blur, every sample": lambda s: A.blur(im, cfg.blur_sigma),
        "brightness + contrast only": lambda s: A.intensity(im, s, only(brightness=cfg.brightness, contrast=cfg.contrast)),
        "gamma only": lambda s: A.intensity(im, s, only(gamma=cfg.gamma)),
        "noise only": lambda s: A.intensity(im, s, only(noise_std=cfg.noise_std)),
    }
    out = {}
    for name, fn in ops.items():
        f = tf.function(fn)
        f(tf.constant([0, 0], tf.int64))
        start = time.process_time()
        for i in range(reps):
            f(tf.constant([i + 1, 1], tf.int64))
        out[name] = 1e3 * (time.process_time() - start) / reps
        print(f"{name}: {out[name]:.1f} ms CPU per batch of {batch} ({out[name] / batch:.3f} ms per pair)", flush=True)
    return out


def time_dataset(ds, batches: int, warmup: int) -> tuple[float, float, int]:
    """(pairs per second of wall time, CPU seconds per pair summed over all threads, pairs)
    over ``batches`` batches after ``warmup`` batches."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    n = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        x, _ = next(it)
        n += int(x.shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return n / wall, cpu / max(n, 1), n


def time_phantom(pairs: int, size: int, seed: int = 0) -> float:
    """Phantom pairs per second in this (single) Python thread, CPU time."""
    rng = np.random.default_rng(seed)
    phantom.make_pair(rng, "4CH", "ED", size)
    start = time.process_time()
    for i in range(pairs):
        phantom.make_pair(rng, ("2CH", "4CH")[i % 2], ("ED", "ES")[(i // 2) % 2], size)
    return pairs / max(time.process_time() - start, 1e-9)


def time_phantom_patients(pairs: int, size: int, seed: int = 0) -> float:
    """Phantom pairs per second as datasets are written (``make_patient``: one patient drawn
    for its four frames), in this Python thread, CPU time."""
    phantom.make_patient(0, seed, size)
    n = max(1, pairs // 4)
    start = time.process_time()
    for i in range(1, n + 1):
        phantom.make_patient(i, seed, size)
    return 4 * n / max(time.process_time() - start, 1e-9)


def run(args: argparse.Namespace) -> dict:
    if args.per_op:
        print(f"per-op timing, {args.size}x{args.size}, batch {args.batch_size}, one TF thread; "
              f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}, "
              f"NPY_DISABLE_CPU_FEATURES={os.environ.get('NPY_DISABLE_CPU_FEATURES', '(unset)')}")
        return time_ops(args.size, args.batch_size, seed=args.seed)

    ncpu = available_cores()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"machine: {ncpu} CPUs (nproc), load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = {}
    results["phantom_pairs_per_s_one_core"] = time_phantom(args.phantom_pairs, args.size, args.seed)
    print(f"phantom generation {args.size}x{args.size}: {results['phantom_pairs_per_s_one_core']:.0f} pairs/s (one core, CPU time)")
    results["phantom_pairs_per_s_one_core_by_patient"] = time_phantom_patients(args.phantom_pairs, args.size, args.seed)
    print(f"phantom generation by patient (4 frames per drawn patient, as prepare writes them): "
          f"{results['phantom_pairs_per_s_one_core_by_patient']:.0f} pairs/s (one core, CPU time)")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "phantom.h5"
            t0 = time.perf_counter()
            phantom.write_h5(data, n_patients=args.patients, seed=args.seed, size=args.size, preview=False)
            print(f"phantom .h5 ({args.patients} patients) written in {time.perf_counter() - t0:.1f} s")
        cfg = AugmentConfig() if args.p_geometric is None else AugmentConfig(p_geometric=args.p_geometric)
        for label, aug in (("no augmentation", None), (f"augmentation (p_geometric {cfg.p_geometric})", cfg)):
            training = Training(seed=args.seed, augment=aug, warp_impl=args.warp_impl)
            ds = make_dataset(str(data), "train", size=args.size, batch_size=args.batch_size, training=training,
                              one_hot=args.one_hot)
            rate, cpu, n = time_dataset(ds, args.batches, args.warmup)
            key = "plain" if aug is None else "augmented"
            results[f"pairs_per_s_{key}"] = rate
            results[f"cpu_ms_per_pair_{key}"] = 1e3 * cpu
            print(f"pipeline {args.size}x{args.size}, batch {args.batch_size}, {label}: {rate:.0f} pairs/s wall "
                  f"({n} pairs); {1e3 * cpu:.2f} ms CPU per pair -> {ncpu / max(cpu, 1e-9):.0f} pairs/s on "
                  f"{ncpu} idle cores")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print(f"| measure ({args.size}x{args.size}, batch {args.batch_size}) | pairs/s (wall) | ms CPU per pair | "
          f"pairs/s on {ncpu} idle cores (CPU-time bound) |")
    print("|---|---|---|---|")
    print(f"| phantom generation, one core | {results['phantom_pairs_per_s_one_core']:.0f} | "
          f"{1e3 / results['phantom_pairs_per_s_one_core']:.2f} | {ncpu * results['phantom_pairs_per_s_one_core']:.0f} |")
    by_patient = results["phantom_pairs_per_s_one_core_by_patient"]
    print(f"| phantom generation by patient (as datasets are written), one core | {by_patient:.0f} | "
          f"{1e3 / by_patient:.2f} | {ncpu * by_patient:.0f} |")
    for key, label in (("plain", "pipeline, no augmentation"), ("augmented", "pipeline, augmentation")):
        cpu = results[f"cpu_ms_per_pair_{key}"]
        print(f"| {label} | {results[f'pairs_per_s_{key}']:.0f} | {cpu:.2f} | {1e3 * ncpu / max(cpu, 1e-9):.0f} |")
    return results
