"""Benchmarks: scripts that print figures (never timed tests).

``python -m cardigan_tf.bench {pipeline,gan,seg,clinical,export,ensemble,qc} [options]``; each sub-module
declares ``add_arguments(parser)`` and ``run(args)``. Record figures in docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import time


def median_time(fn, steps: int, warmup: int) -> float:
    """Median wall seconds of ``fn()`` over ``steps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
