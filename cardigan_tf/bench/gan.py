"""SPADE GAN train-step throughput, a per-part time breakdown, parameter counts and FLOPs.

    python -m cardigan_tf.bench gan                                  # tiny and cardigan, CPU
    python -m cardigan_tf.bench gan --presets cardigan --steps 3 --warmup 1 --compare
    python -m cardigan_tf.bench gan --presets tiny --steps 20 --jit on --precision mixed_bfloat16

For each preset: builds the GAN exactly as the training job does, runs ``--warmup`` steps
(tracing / XLA compilation) then ``--steps`` timed steps of ``train_function`` on one fixed
batch (no input pipeline cost) and prints images/s. FLOPs: the forward FLOPs of G and D are
counted by ``tf.profiler`` (float_ops of the forward graphs at the preset's batch); a train
step is estimated as 4 G(B) + 12 D(B) forwards (G step: G + D on 2B, backward = 2x forward;
D step: G + D on 2B + D backward). Counts are multiply-adds x 2.

Breakdown (``--breakdown on``, default): each part of the step timed alone as a
``tf.function`` (forward + backward, median of ``--reps``), see :func:`breakdown`; parts are
measured in isolation, so they do not add up exactly to the step. The number of traces of
the train function is printed too (1 = no retracing).

``--compare`` (cardigan sizes: 256x256, ngf = ndf = 48, batch 4): also times our own compact
PyTorch SPADE (``experiments/peers/torch_spade.py``, needs ``torch``, skipped cleanly without
it; 2 threads) and the keras.io-style GauGAN (``experiments/peers/keras_gaugan.py``), each a
script of the repository run in a subprocess, and prints the ratios. Run it under the CPU lock.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import cardigan_tf.runtime as runtime
from cardigan_tf.configs.gan import build_config
from cardigan_tf.files import write_json
from cardigan_tf.jobs.gan_loop import build_gan
from cardigan_tf.models.spade import SPADE, SPADEResBlock

#: the comparison scripts of ``--compare`` (in the repository, outside the package)
PEERS = Path(__file__).resolve().parents[2] / "experiments" / "peers"


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
    parser.add_argument("--breakdown", default="on", choices=("on", "off"),
                        help="per-part timing of forward + backward (G, D, SPADE parts, EMA)")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions per breakdown part")
    parser.add_argument("--spade-fused", default="config", choices=("config", "on", "off"),
                        help="SPADE gamma/beta as one conv (on) or two (off; the default "
                             "config); same maths")
    parser.add_argument("--compare", action="store_true",
                        help="also time the PyTorch SPADE (needs torch) and the keras.io-style "
                             "GauGAN at the cardigan preset's size (subprocesses)")


def count_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def forward_flops(model, input_shapes) -> int:
    """Float ops of one forward pass, from tf.profiler on a traced graph (training=False)."""
    specs = [tf.TensorSpec(s, tf.float32) for s in input_shapes]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
    graph = fn.get_concrete_function(*specs).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, options=opts)
    return int(info.total_float_ops)


def bench_preset(name: str, args) -> dict:
    overrides = [f"model.style={args.style}", f"train.jit={args.jit}",
                 f"train.precision={args.precision}", "train.steps=1000", "train.steps_per_epoch=1000",
                 *args.set]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    cfg = build_config(name, None, overrides)
    precision = runtime.set_precision(cfg.train.precision)
    gan = build_gan(cfg)

    for layer in _sublayers(gan.generator):
        if isinstance(layer, SPADE) and args.spade_fused != "config":
            layer.fused = args.spade_fused == "on"
    b, s = cfg.train.batch_size, cfg.model.size
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 1, (b, s, s, 1)).astype("float32"))
    mask = tf.constant(rng.integers(0, gan.num_classes, (b, s, s)).astype("int32"))
    ds = tf.data.Dataset.from_tensors((image, mask)).repeat()
    traced = []
    train_step = gan.train_step
    gan.train_step = lambda data: (traced.append(1), train_step(data))[1]  # counts traces
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
    traces = len(traced)
    parts = breakdown(gan, image, mask, args.reps) if args.breakdown == "on" else {}
    g_in = [(b, s, s, gan.num_classes)] + ([(b, cfg.model.z_dim)] if gan.style else [])
    g_flops = forward_flops(gan.generator, g_in)
    d_flops = forward_flops(gan.discriminator, [(b, s, s, gan.num_classes + 1)])
    out = {
        "preset": name, "size": s, "batch": b, "ngf": cfg.model.ngf, "ndf": cfg.model.ndf,
        "style": cfg.model.style, "precision": precision, "jit": bool(gan.jit_compile),
        "device": "GPU" if runtime.gpu_devices() else "CPU",
        "params_G": count_params(gan.generator), "params_D": count_params(gan.discriminator),
        "params_E": count_params(gan.encoder) if gan.encoder is not None else 0,
        "gflops_G_fwd": g_flops / 1e9, "gflops_D_fwd": d_flops / 1e9,
        "gflops_step_est": (4 * g_flops + 12 * d_flops) / 1e9,
        "warmup_s": warm, "step_s": dt / args.steps, "images_per_s": b * args.steps / dt,
        "spade_fused": any(getattr(x, "fused", False) for x in _sublayers(gan.generator)), "train_function_traces": traces,
        "breakdown_s": parts,
    }
    keras.backend.clear_session()
    return out


def _sublayers(model):
    """Every layer under ``model`` (depth first)."""
    out = []

    def walk(layer):
        for sub in getattr(layer, "_layers", []) or []:
            out.append(sub)
            walk(sub)

    walk(model)
    return out


def _time(fn, args, reps):
    """Median wall time of ``fn(*args)`` (a tf.function) after one untimed call."""
    def sync(out):
        for t in tf.nest.flatten(out):
            if t is not None:
                np.asarray(t)

    sync(fn(*args))
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fwd_bwd(f, weights):
    """A tf.function: forward f(*xs) then gradients of sum(f) wrt the float inputs and weights."""
    @tf.function
    def run(*xs):
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            y = f(*xs)
            loss = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tf.nest.flatten(y)])
        return tape.gradient(loss, list(xs) + list(weights))

    return run


def _modulate(normalized, gamma, beta):
    gamma, beta = ops.cast(gamma, normalized.dtype), ops.cast(beta, normalized.dtype)
    return normalized * (1.0 + gamma) + beta


def breakdown(gan, image, mask, reps=2) -> dict:
    """Seconds of the parts of one train step, each timed alone (forward + backward).

    Whole networks: ``G_fwd`` (training forward: also the D step's second G forward),
    ``G_fwd_bwd``, ``D_fwd_bwd_2B`` (D on real+fake), ``EMA_update``. Inside G (summed over
    every SPADE block, forward + backward): ``spade_shared_conv`` (mask resize + 3x3 conv to
    128 + ReLU), ``spade_gamma_beta_conv``, ``spade_norm_modulate`` (parameter-free norm and
    ``x * (1 + gamma) + beta``), ``block_convs`` (conv_0, conv_1, conv_s with spectral norm),
    ``spectral_norm_power_iter`` (the power iteration and kernel update alone).
    """
    real, onehot = gan._inputs((image, mask))
    g, d = gan.generator, gan.discriminator
    out = {}
    out["G_fwd"] = _time(tf.function(lambda m: g(m, training=True)), (onehot,), reps)
    out["G_fwd_bwd"] = _time(_fwd_bwd(lambda m: g(m, training=True), g.trainable_variables),
                             (onehot,), reps)
    fake = g(onehot, training=False)
    d_in = tf.concat([tf.concat([onehot, tf.cast(fake, tf.float32)], -1),
                      tf.concat([onehot, real], -1)], 0)
    out["D_fwd_bwd_2B"] = _time(_fwd_bwd(lambda x: d(x, training=True), d.trainable_variables),
                                (d_in,), reps)
    out["EMA_update"] = _time(tf.function(lambda: (gan._update_ema(), tf.constant(0.0))[1]), (), reps)
    parts = dict.fromkeys(("spade_shared_conv", "spade_gamma_beta_conv", "spade_norm_modulate",
                           "block_convs", "spectral_norm_power_iter"), 0.0)
    blocks = [layer for layer in g.layers if isinstance(layer, SPADEResBlock)]
    # input (x) shape of each block, from the functional graph
    shapes = {}
    for layer in blocks:
        node = layer._inbound_nodes[0]
        shapes[layer.name] = tuple(node.arguments.args[0].shape)
    batch = int(onehot.shape[0])
    rng = np.random.default_rng(0)
    for block in blocks:
        xs = (batch,) + shapes[block.name][1:]
        fin, fmid = xs[-1], min(xs[-1], block.fout)
        spades = [(block.norm_0, fin), (block.norm_1, fmid)]
        convs = [(block.conv_0, fin), (block.conv_1, fmid)]
        if block.learned_shortcut:
            spades.append((block.norm_s, fin))
            convs.append((block.conv_s, fin))
        for sp, ch in spades:
            assert isinstance(sp, SPADE)
            h, w = xs[1], xs[2]
            parts["spade_shared_conv"] += _time(_fwd_bwd(
                lambda m, sp=sp, h=h, w=w: sp.mlp_shared(
                    m if tuple(m.shape[1:3]) == (h, w) else ops.image.resize(m, (h, w), interpolation="nearest")),
                sp.mlp_shared.trainable_variables), (onehot,), reps)
            actv = tf.constant(rng.uniform(0, 1, (batch, h, w, sp.hidden)).astype("float32"))
            parts["spade_gamma_beta_conv"] += _time(_fwd_bwd(
                lambda a, sp=sp: sp.gamma_beta(a),
                sp.mlp_gamma.trainable_variables + sp.mlp_beta.trainable_variables), (actv,), reps)
            xin = tf.constant(rng.normal(size=(batch, h, w, ch)).astype("float32"))
            gb = tf.constant(rng.normal(size=(batch, h, w, ch)).astype("float32"))
            parts["spade_norm_modulate"] += _time(_fwd_bwd(
                lambda t, gm, bt, sp=sp: _modulate(sp.param_free_norm(t, training=True), gm, bt), []),
                (xin, gb, gb), reps)
        for conv, ch in convs:
            xin = tf.constant(rng.normal(size=(batch, xs[1], xs[2], ch)).astype("float32"))
            parts["block_convs"] += _time(_fwd_bwd(lambda t, c=conv: c(t, training=True),
                                                   conv.trainable_variables), (xin,), reps)
            if hasattr(conv, "normalized_weights"):
                def power(c=conv):
                    u, k = c.normalized_weights()
                    c.vector_u.assign(u)
                    c.kernel.assign(k)
                    return tf.constant(0.0)
                parts["spectral_norm_power_iter"] += _time(tf.function(power), (), reps)
    out.update(parts)
    return out


def compare(args) -> list[dict]:
    """Time the PyTorch SPADE and the keras.io-style GauGAN (subprocesses, same size, batch,
    2 threads, warm-up excluded). The PyTorch one is skipped when torch is not installed."""
    common = ["--size", "256", "--ngf", "48", "--ndf", "48", "--batch", str(args.batch or 4),
              "--steps", str(args.steps), "--warmup", str(max(1, args.warmup))]
    results = []
    for name in ("torch_spade", "keras_gaugan"):
        script = PEERS / f"{name}.py"
        if not script.is_file():
            print(f"{name}: skipped ({script} not found: --compare runs from a checkout of the repository)")
            continue
        if name == "torch_spade" and importlib.util.find_spec("torch") is None:
            print(f"{name}: skipped (needs PyTorch: pip install torch; not a project requirement)")
            continue
        extra = ["--threads", "2"] if name == "torch_spade" else []
        proc = subprocess.run([sys.executable, str(script), *common, *extra], capture_output=True,
                              text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"{name}: failed (rc {proc.returncode}): {proc.stderr[-500:]}")
            continue
        results.append(json.loads(lines[-1]))
    return results


def run(args) -> list[dict]:
    results = [bench_preset(p.strip(), args) for p in args.presets.split(",") if p.strip()]
    cols = ("preset", "size", "batch", "precision", "jit", "params_G", "params_D", "params_E",
            "gflops_step_est", "step_s", "images_per_s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    for r in results:
        if r["breakdown_s"]:
            print(f"\nbreakdown, {r['preset']} (each part timed alone, forward + backward; "
                  f"step {r['step_s']:.3g} s, train_function traces: {r['train_function_traces']})")
            print("| part | s | % of step |\n|---|---|---|")
            for k, v in r["breakdown_s"].items():
                print(f"| {k} | {v:.3g} | {100 * v / r['step_s']:.0f} |")
    if getattr(args, "compare", False):
        refs = compare(args)
        ours = [r for r in results if r["preset"] == "cardigan"]
        print("\n| implementation | s/step | ours / it | GFLOP/step (est.) | GFLOP/s |\n|---|---|---|---|---|")

        def flops(r):
            g = r.get("gflops_step_est")
            return (f"{g:.0f}", f"{g / r['step_s']:.0f}") if g else ("-", "-")

        for r in ours:
            print(f"| cardigan_tf (cardigan preset) | {r['step_s']:.3g} | 1 | {' | '.join(flops(r))} |")
        for ref in refs:
            ratio = f"{ours[0]['step_s'] / ref['step_s']:.2f}" if ours else "-"
            print(f"| {ref['impl']} | {ref['step_s']:.3g} | {ratio} | {' | '.join(flops(ref))} |")
        results = results + refs
    if args.json:
        write_json(args.json, results)
    return results
