"""Fold ensemble speed: ms/image of one U-Net vs the K-member ensemble model (batch 1 and 8).

    python -m cardigan_tf.bench ensemble [--preset tiny] [--members 5] [--tta ...]
                                         [--batches 1 8] [--steps 10] [--warmup 3] [--markdown FILE]

K U-Nets of the preset (random weights: the cost does not depend on them) wrapped by
:func:`cardigan_tf.models.ensemble.build_ensemble` (one graph, each member called once on the
views of the batch), against one of them alone and against K separate calls. Each figure is the
median over ``--steps`` ``predict_on_batch`` calls after ``--warmup`` untimed ones, the three
calls taken in turn in every step (the model's
own cost, at the working size; the resize chain, shared by construction, is not in it). The
goal: the ensemble costs at most K x single + 20 % (``bound``); with ``--tta`` views the bound is
K x views x single + 20 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from cardigan_tf.config import apply_overrides, from_dict, to_dict
from cardigan_tf.configs.seg import preset_config
from cardigan_tf.files import atomic_write_text
from cardigan_tf.models.ensemble import build_ensemble
from cardigan_tf.models.unet import build_unet

#: the allowed overhead of the ensemble over K single calls
OVERHEAD = 0.20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="U-Net preset of the members (default tiny)")
    parser.add_argument("--members", type=int, default=5, help="ensemble members K (default 5)")
    parser.add_argument("--tta", nargs="*", default=[], help="test-time views besides the identity, e.g. gamma:0.9")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="U-Net config override, e.g. model.base_filters=8 (repeatable)")
    parser.add_argument("--markdown", help="also write the table to this file")


def cpu_model() -> str:
    """The CPU's model name (as lscpu prints it), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved_medians(calls: dict, steps: int, warmup: int) -> dict[str, float]:
    """Median wall seconds of each call, the calls taken in turn within every step (a load that
    drifts during the run weighs on all of them alike)."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(steps):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_ensemble(preset: str = "tiny", members: int = 5, tta=(), batches=(1, 8), steps: int = 10,
                   warmup: int = 3, overrides: list[str] | None = None) -> list[dict]:
    """One row per batch size: single, ensemble and K-separate-calls ms/image, ratio, bound."""
    cfg = preset_config(preset).model
    if overrides:
        cfg = from_dict(type(cfg), apply_overrides(to_dict(cfg), [o.removeprefix("model.") for o in overrides]))
    keras.utils.set_random_seed(0)
    unets = [build_unet(cfg, name=f"unet_{i}") for i in range(members)]
    ensemble = build_ensemble(unets, list(tta))
    views = 1 + len(tta)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = rng.random((b, cfg.size, cfg.size, 1), dtype=np.float32)
        calls = {"single": lambda: unets[0].predict_on_batch(x),
                 "separate": lambda: [u.predict_on_batch(x) for u in unets],
                 "ensemble": lambda: ensemble.predict_on_batch(x)}
        ms = {k: v * 1000.0 / b for k, v in interleaved_medians(calls, steps, warmup).items()}
        single, separate, both = ms["single"], ms["separate"], ms["ensemble"]
        bound = members * views * single * (1.0 + OVERHEAD)
        rows.append({"batch": int(b), "single_ms": single, "separate_ms": separate, "ensemble_ms": both,
                     "ratio": both / single, "bound_ms": bound, "within": both <= bound})
    return rows


def table(rows: list[dict], members: int, views: int) -> str:
    lines = [f"| batch | single ms/img | {members} separate calls ms/img | ensemble ({members} x {views} view(s)) ms/img "
             f"| ensemble / single | bound {members * views} x single + {OVERHEAD:.0%} | within |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['single_ms']:.2f} | {r['separate_ms']:.2f} | {r['ensemble_ms']:.2f} | "
                     f"{r['ratio']:.2f} | {r['bound_ms']:.2f} | {'yes' if r['within'] else 'NO'} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    if args.members < 1:
        raise ValueError(f"--members: expected >= 1, got {args.members}")
    rows = bench_ensemble(args.preset, args.members, args.tta, args.batches, args.steps, args.warmup, args.overrides)
    text = (f"Ensemble benchmark: preset {args.preset}, {args.members} members, views identity"
            f"{''.join(', ' + v for v in args.tta)} (keras {keras.__version__} {keras.backend.backend()}, "
            f"{os.cpu_count()} CPUs visible, {cpu_model()}; median of {args.steps} calls after {args.warmup} "
            "warm-up)\n\n" + table(rows, args.members, 1 + len(args.tta)) + "\n")
    print(text)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text)
    return rows
