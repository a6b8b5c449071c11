"""Exported U-Net speed: SavedModel vs ONNX Runtime (ms/image at batch 1, 8, 32), FLOPs, GFLOP/s.

    python -m cardigan_tf.bench export [--preset camus] [--batches 1 8 32] [--steps 5] [--warmup 2]

A randomly initialised U-Net of the preset (no training) is exported through the same code as
``python -m cardigan_tf.export`` (serving graph, SavedModel, ONNX via tf2onnx) into a temporary
folder; inputs are float images at the working size (the resize chain is then an identity).
FLOPs per image: 2 * kh * kw * c_in * c_out * h_out * w_out summed over the convolution ops of
the traced forward graph (transposed ones counted at their input grid), the U-Net core only. The reference rate is a
float32 4096x4096 matmul measured in the same run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tensorflow as tf

from cardigan_tf.bench import median_time
from cardigan_tf.configs.seg import preset_config
from cardigan_tf.inference import Preprocessing
from cardigan_tf.models.unet import build_unet
from cardigan_tf.serving.export import ONNX_FILE, export_onnx, sample_inputs
from cardigan_tf.serving.signatures import SegServing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="camus", help="seg preset of the U-Net")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--warmup", type=int, default=2)


def conv_flops(model, size: int) -> int:
    """2 x multiply-adds of the convolutions (Conv2D, transposed Conv2D) for one image, read
    from the ops and static shapes of the traced forward graph."""
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, size, size, 1], tf.float32)).graph
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, cout = op.inputs[1].shape.as_list()
            _, h, w, _ = op.outputs[0].shape.as_list()
            total += 2 * kh * kw * cin * cout * h * w
        elif op.type == "Conv2DBackpropInput":  # transposed conv: cost at its input grid
            kh, kw, cout, cin = op.inputs[1].shape.as_list()
            _, h, w, _ = op.inputs[2].shape.as_list()
            total += 2 * kh * kw * cin * cout * h * w
    return int(total)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_gflops(n: int = 4096, steps: int = 5) -> float:
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda: tf.matmul(a, b))
    sec = median_time(lambda: f().numpy(), steps, 2)
    return 2 * n ** 3 / sec / 1e9


def run(args: argparse.Namespace) -> None:
    cfg = preset_config(args.preset).model
    s = int(cfg.size)
    model = build_unet(cfg)
    flops = conv_flops(model, s)
    extra = {"pre": Preprocessing(working_size=s, prepared_size=s)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "seg" / "1"
        folder.parent.mkdir(parents=True)
        module = SegServing.build(model, extra["pre"].sizes)
        tf.saved_model.save(module, str(folder), signatures=module.signatures())
        onnx_info = export_onnx(folder, "seg", model, extra, sample_inputs("seg", s)[:1])
        fn = tf.saved_model.load(str(folder)).signatures["serving_default"]
        sess = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        rng = np.random.default_rng(0)
        rows = []
        for b in args.batches:
            x = rng.random((b, s, s)).astype(np.float32)
            xt = tf.constant(x)
            t_tf = median_time(lambda: fn(image=xt)["probabilities"].numpy(), args.steps, args.warmup) / b
            t_ox = median_time(lambda: sess.run(["probabilities"] if "probabilities" in [o.name for o in sess.get_outputs()]
                                            else None, {in_name: x}), args.steps, args.warmup) / b
            rows.append((b, t_tf * 1e3, t_ox * 1e3, flops / t_tf / 1e9, flops / t_ox / 1e9))
    mm = matmul_gflops()
    print(f"CPU: {cpu_name()}; TensorFlow {tf.__version__}, ONNX Runtime {ort.__version__}; preset {args.preset} "
          f"U-Net {s}x{s}, {flops / 1e9:.2f} GFLOP/image (convolutions); ONNX max |diff| "
          f"{onnx_info['max_abs_diff_vs_tensorflow']:.2g}")
    print(f"float32 4096x4096 matmul: {mm:.1f} GFLOP/s\n")
    print("| batch | SavedModel ms/image | ONNX Runtime ms/image | SavedModel GFLOP/s | ONNX GFLOP/s | ONNX/TF time |")
    print("|---:|---:|---:|---:|---:|---:|")
    for b, a, o, ga, go in rows:
        print(f"| {b} | {a:.1f} | {o:.1f} | {ga:.1f} | {go:.1f} | {o / a:.2f} |")
    b8 = [r for r in rows if r[0] == 8]
    if b8:
        b, a, o, ga, go = b8[0]
        print(f"\ngoal U-Net batch 8 >= half the matmul rate: {'met' if ga >= mm / 2 else 'NOT met'} "
              f"({ga:.1f} vs {mm / 2:.1f} GFLOP/s); ONNX within 1.2x of TF: {'met' if o <= 1.2 * a else 'NOT met'} "
              f"({o / a:.2f}x)")
