"""Cost of the QC and uncertainty graphs against a U-Net forward pass (ms per call).

    python -m cardigan_tf.bench qc [--preset tiny] [--sizes 64 256] [--batches 1 8] [--steps 5] [--warmup 2]

Each figure is the median wall time of one call of a ``tf.function`` (traced once per input
signature, as in a SavedModel) over ``--steps`` calls after ``--warmup`` untimed ones:

- U-Net: the preset's network, randomly initialised, built at each size (fully convolutional);
- QC, hearts: :func:`cardigan_tf.metrics.anatomy_graph.qc_flags_graph` on phantom label maps,
  what a good prediction looks like (few propagation steps);
- QC, noise: the same on thresholded smoothed noise (40 % background, 20 % per structure in many
  pieces): what a network may predict on a bad image, the expensive case;
- uncertainty: :func:`cardigan_tf.metrics.uncertainty_graph.member_uncertainty_graph` on
  probabilities of M = 1 and M = 5 members.

Prints a markdown table and the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import tensorflow as tf
from scipy import ndimage

from cardigan_tf.bench import median_time
from cardigan_tf.configs.seg import preset_config
from cardigan_tf.data.phantom import make_pair
from cardigan_tf.labels import NUM_CLASSES, PHASES, VIEWS
from cardigan_tf.metrics.anatomy_graph import qc_flags_graph
from cardigan_tf.metrics.uncertainty_graph import member_uncertainty_graph
from cardigan_tf.models.unet import build_unet, inference_model

MEMBERS = (1, 5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="seg preset of the U-Net")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="square input sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--warmup", type=int, default=2)


def heart_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([make_pair(rng, VIEWS[i % 2], PHASES[i // 2 % 2], size)[1] for i in range(n)]).astype(np.int32)


def noise_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2))
    return np.digitize(field, np.quantile(field, [0.4, 0.6, 0.8])).astype(np.int32)


def _ms(fn, x, steps: int, warmup: int) -> float:
    """Median ms of ``fn(x)`` with its outputs fetched."""
    return 1000 * median_time(lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(x)), steps, warmup)


def bench(preset: str, sizes, batches, steps: int, warmup: int) -> list[dict]:
    cfg = preset_config(preset).model
    qc = tf.function(qc_flags_graph, input_signature=[tf.TensorSpec([None, None, None], tf.int32)])
    unc = tf.function(member_uncertainty_graph,
                      input_signature=[tf.TensorSpec([None, None, None, None, NUM_CLASSES], tf.float32)])
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        model = inference_model(build_unet(dataclasses.replace(cfg, size=size)))
        forward = tf.function(lambda x, model=model: model(x, training=False))
        for b in batches:
            x = tf.constant(rng.random((b, size, size, 1), dtype=np.float32))
            hearts, noise = tf.constant(heart_maps(b, size)), tf.constant(noise_maps(b, size))
            row = {"size": size, "batch": b,
                   "unet_ms": _ms(forward, x, steps, warmup),
                   "qc_hearts_ms": _ms(qc, hearts, steps, warmup),
                   "qc_noise_ms": _ms(qc, noise, steps, warmup)}
            for m in MEMBERS:
                p = np.eye(NUM_CLASSES, dtype=np.float32)[noise_maps(m * b, size, seed=m)].reshape(
                    m, b, size, size, NUM_CLASSES) * 0.7 + 0.3 / NUM_CLASSES
                row[f"uncertainty_m{m}_ms"] = _ms(unc, tf.constant(p), steps, warmup)
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| input | batch | U-Net ms | QC ms, hearts | QC ms, noise | "
            + " | ".join(f"uncertainty ms, M={m}" for m in MEMBERS) + " | QC hearts / U-Net |")
    lines = [head, "|" + "---|" * (6 + len(MEMBERS))]
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['batch']} | {r['unet_ms']:.2f} | {r['qc_hearts_ms']:.2f} | "
                     f"{r['qc_noise_ms']:.2f} | "
                     + " | ".join(f"{r[f'uncertainty_m{m}_ms']:.2f}" for m in MEMBERS)
                     + f" | {r['qc_hearts_ms'] / r['unet_ms']:.2f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    rows = bench(args.preset, args.sizes, args.batches, args.steps, args.warmup)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"QC and uncertainty graphs vs the {args.preset} U-Net (tensorflow {tf.__version__} on "
          f"{'GPU ' + gpus[0].name if gpus else 'CPU'}, {os.cpu_count()} CPUs visible; median of "
          f"{args.steps} calls after {args.warmup} warm-up)\n\n{table(rows)}\n")
    return rows
