"""U-Net speed: training images/s and inference ms/image (batch 1 and 32), per preset.

    python -m cardigan_tf.bench seg [--presets tiny camus] [--steps 10] [--warmup 3]
                                    [--train-batch 8] [--threads 0] [--markdown FILE]

Random inputs of the preset's size (the model's own cost, without the data pipeline: measure
that with ``bench pipeline``). Each figure is the median over ``--steps`` timed calls after
``--warmup`` untimed ones (graph tracing / compilation). Backend-agnostic (``train_on_batch`` /
``predict_on_batch``): ``KERAS_BACKEND=jax`` runs it through JAX, e.g. on a GPU machine
without TensorFlow. Prints a markdown table; ``--markdown FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import keras
import numpy as np

from cardigan_tf.bench import median_time
from cardigan_tf.configs.seg import preset_config
from cardigan_tf.files import atomic_write_text
from cardigan_tf.losses.segmentation import DiceCELoss
from cardigan_tf.models.unet import build_unet
from cardigan_tf.runtime import resolve_jit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["tiny", "camus"], help="U-Net presets to time")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size")
    parser.add_argument("--infer-batches", type=int, nargs="+", default=[1, 32], help="inference batch sizes")
    parser.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0 = default)")
    parser.add_argument("--markdown", help="also write the table to this file")


def bench_preset(preset: str, steps: int = 10, warmup: int = 3, train_batch: int = 8,
                 infer_batches=(1, 32)) -> dict:
    """Time one preset; return {"preset", "params", "train_img_s", "infer_ms_per_image": {batch: ms}}."""
    cfg = preset_config(preset).model
    rng = np.random.default_rng(0)
    model = build_unet(cfg)
    if keras.backend.backend() == "tensorflow":
        jit = resolve_jit("auto")
    else:
        jit = "auto"
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=DiceCELoss(), jit_compile=jit)
    s = cfg.size
    x = rng.random((train_batch, s, s, 1), dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, size=(train_batch, s, s)).astype(np.int32)
    t_train = median_time(lambda: model.train_on_batch(x, y), steps, warmup)
    out = {"preset": preset, "size": s, "params": int(model.count_params()), "jit": str(jit),
           "train_batch": train_batch, "train_img_s": train_batch / t_train, "infer_ms_per_image": {}}
    for b in infer_batches:
        xb = rng.random((b, s, s, 1), dtype=np.float32)
        t = median_time(lambda: model.predict_on_batch(xb), steps, warmup)
        out["infer_ms_per_image"][int(b)] = 1000.0 * t / b
    return out


def _device() -> str:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax  # lazy: the benchmark runs on either backend, and a machine has one of them

        return f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
    if backend == "tensorflow":
        import tensorflow as tf  # lazy: as jax above

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow {tf.__version__} on {'GPU ' + gpus[0].name if gpus else 'CPU'}"
    return backend


def table(results: list[dict], infer_batches) -> str:
    head = "| preset | input | params | train img/s (batch {b}) | ".format(b=results[0]["train_batch"])
    head += " | ".join(f"infer ms/img (batch {b})" for b in infer_batches) + " |"
    lines = [head, "|" + "---|" * (4 + len(infer_batches))]
    for r in results:
        lines.append(f"| {r['preset']} | {r['size']}x{r['size']} | {r['params'] / 1e6:.2f} M | {r['train_img_s']:.1f} | "
                     + " | ".join(f"{r['infer_ms_per_image'][b]:.2f}" for b in infer_batches) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    if args.threads:
        import tensorflow as tf  # lazy: as jax above

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    results = [bench_preset(p, args.steps, args.warmup, args.train_batch, args.infer_batches) for p in args.presets]
    text = (f"U-Net benchmark ({_device()}, {os.cpu_count()} CPUs visible, {platform.processor() or platform.machine()}; "
            f"median of {args.steps} calls after {args.warmup} warm-up)\n\n" + table(results, args.infer_batches) + "\n")
    print(text)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text)
    return results
