"""SPADE GAN train-step throughput, parameter counts and FLOPs per step.

    python -m cardigan_tf.bench gan                                  # tiny and cardigan, CPU
    python -m cardigan_tf.bench gan --presets tiny --steps 20 --jit on --precision mixed_bfloat16

For each preset: builds the GAN exactly as the training job does, runs ``--warmup`` steps
(tracing / XLA compilation) then ``--steps`` timed steps of ``train_function`` on one fixed
batch (no input pipeline cost) and prints images/s. FLOPs: the forward FLOPs of G and D are
counted by ``tf.profiler`` (float_ops of the forward graphs at the preset's batch); a train
step is estimated as 4 G(B) + 12 D(B) forwards (G step: G + D on 2B, backward = 2x forward;
D step: G + D on 2B + D backward). Counts are multiply-adds x 2.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import cardigan_tf.runtime as runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", default="tiny,cardigan", help="comma-separated GAN presets")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--style", default="mask", choices=("mask", "z", "encoder"))
    parser.add_argument("--jit", default="auto", help="XLA: auto (on with a GPU) | on | off")
    parser.add_argument("--precision", default="auto",
                        help="auto | float32 | mixed_bfloat16 | mixed_float16")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra GAN config override (e.g. model.ngf=32)")
    parser.add_argument("--json", help="also write the results to this JSON file")


def count_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def forward_flops(model, input_shapes) -> int:
    """Float ops of one forward pass, from tf.profiler on a traced graph (training=False)."""
    import tensorflow as tf

    specs = [tf.TensorSpec(s, tf.float32) for s in input_shapes]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    graph = fn.get_concrete_function(*specs).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, options=opts)
    return int(info.total_float_ops)


def bench_preset(name: str, args) -> dict:
    import keras
    import tensorflow as tf

    from cardigan_tf.jobs.gan import build_config
    from cardigan_tf.jobs.gan_loop import build_gan

    overrides = [f"model.style={args.style}", f"train.jit={args.jit}",
                 f"train.precision={args.precision}", "train.steps=1000", "train.steps_per_epoch=1000",
                 *args.set]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    cfg = build_config(name, None, overrides)
    precision = runtime.set_precision(cfg.train.precision)
    gan = build_gan(cfg)
    b, s = cfg.train.batch_size, cfg.model.size
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 1, (b, s, s, 1)).astype("float32"))
    mask = tf.constant(rng.integers(0, 4, (b, s, s)).astype("int32"))
    ds = tf.data.Dataset.from_tensors((image, mask)).repeat()
    gan.make_train_function()
    iterator = iter(ds)
    t0 = time.perf_counter()
    for _ in range(max(1, args.warmup)):
        logs = gan.train_function(iterator)
    float(logs["g_total"])
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        logs = gan.train_function(iterator)
    float(logs["g_total"])
    dt = time.perf_counter() - t0
    g_in = [(b, s, s, 4)] + ([(b, cfg.model.z_dim)] if gan.style else [])
    g_flops = forward_flops(gan.generator, g_in)
    d_flops = forward_flops(gan.discriminator, [(b, s, s, 5)])
    out = {
        "preset": name, "size": s, "batch": b, "ngf": cfg.model.ngf, "ndf": cfg.model.ndf,
        "style": cfg.model.style, "precision": precision, "jit": bool(gan.jit_compile),
        "device": "GPU" if runtime.gpu_devices() else "CPU",
        "params_G": count_params(gan.generator), "params_D": count_params(gan.discriminator),
        "params_E": count_params(gan.encoder) if gan.encoder is not None else 0,
        "gflops_G_fwd": g_flops / 1e9, "gflops_D_fwd": d_flops / 1e9,
        "gflops_step_est": (4 * g_flops + 12 * d_flops) / 1e9,
        "warmup_s": warm, "step_s": dt / args.steps, "images_per_s": b * args.steps / dt,
    }
    keras.backend.clear_session()
    return out


def run(args) -> list[dict]:
    results = [bench_preset(p.strip(), args) for p in args.presets.split(",") if p.strip()]
    cols = ("preset", "size", "batch", "precision", "jit", "params_G", "params_D", "params_E",
            "gflops_step_est", "step_s", "images_per_s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.json:
        from cardigan_tf.files import write_json

        write_json(args.json, results)
    return results
