"""Clinical indices speed: seconds per patient (4 LV masks) for clean, ragged and noisy masks.

    python -m cardigan_tf.bench clinical [--repeats 3] [--reference OLD_CLINICAL_PY]
                                         [--timeout 120] [--markdown FILE]

Synthetic patients at CAMUS's native size (669 x 750 pixels, 0.154 x 0.308 mm): truncated
ellipsoids (ED and ES, 2CH and 4CH) whose outline is either clean, or fringed by ``lobes``
radial fingers ``depth`` mm deep (a ragged predicted LV: one piece, no holes, a long
contour), or uniform label noise (no sensible LV: NaN with a reason). Each figure is the
median over ``--repeats`` calls of ``patient_indices``. ``--reference FILE`` also times
another implementation of ``cardigan_tf.metrics.clinical`` (e.g. the old one, saved with
``git show <commit>:cardigan_tf/metrics/clinical.py > old.py``), each patient capped at
``--timeout`` seconds, and prints the largest relative difference of its EDV/ESV.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cardigan_tf.files import atomic_write_text
from cardigan_tf.metrics import clinical, long_axis

SHAPE = (669, 750)
SPACING = (0.154, 0.308)
#: (name, fringe depth mm, lobes); depth 0 = clean outline; None = uniform label noise.
CASES = (("clean", 0.0, 0), ("ragged 5 mm x 200", 5.0, 200), ("ragged 10 mm x 200", 10.0, 200),
         ("ragged 20 mm x 150", 20.0, 150), ("label noise", None, 0))
#: (a, b, c) semi-axes (mm) at ED and ES: the LV shortens in systole.
AXES = {"ED": (40.0, 20.0, 24.0), "ES": (34.0, 15.0, 18.0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--reference", help="another clinical.py to time and compare (e.g. the old one)")
    parser.add_argument("--timeout", type=float, default=120.0, help="cap (s) per reference patient")
    parser.add_argument("--markdown", help="also write the table to this file")


def lv_mask(a: float, b: float, depth_mm: float = 0.0, lobes: int = 0, seed: int = 0,
            shape=SHAPE, spacing=SPACING, cut: float = 6.0) -> np.ndarray:
    """uint8 mask, LV = 1: an ellipse (semi-axes a vertical, b horizontal, mm, apex 8 mm below
    the top, plus ``depth_mm``) cut flat ``cut`` mm above its lower pole, its outline pushed in and out by up to
    ``depth_mm`` along ``lobes`` random harmonics of the polar angle (fingers)."""
    h, w = shape
    y = (np.arange(h) + 0.5) * spacing[0] - (6.0 + depth_mm + a)
    x = (np.arange(w) + 0.5) * spacing[1] - w * spacing[1] / 2
    yy, xx = np.meshgrid(y, x, indexing="ij")
    rho = np.hypot(yy / a, xx / b)
    if depth_mm > 0 and lobes > 0:
        rng = np.random.default_rng(seed)
        grid = np.linspace(-np.pi, np.pi, 64 * lobes + 1)
        ks = np.arange(lobes // 2, lobes + 1)
        wave = np.sin(ks[:, None] * grid[None, :] + rng.uniform(0, 2 * np.pi, ks.size)[:, None]).sum(0)
        s = np.interp(np.arctan2(yy / a, xx / b), grid, wave * (depth_mm / np.abs(wave).max()))
        inside = np.hypot(yy, xx) * (1.0 - 1.0 / np.maximum(rho, 1e-9)) <= s
    else:
        inside = rho <= 1.0
    inside &= yy <= a - cut
    return inside.astype(np.uint8)


def make_patient(depth_mm, lobes: int, seed: int = 0):
    """(masks, spacings) of one synthetic patient (see the module docstring)."""
    rng = np.random.default_rng(seed)
    masks, spacings = {}, {}
    for phase, (a, b, c) in AXES.items():
        for view, semi in (("2CH", b), ("4CH", c)):
            if depth_mm is None:
                masks[(view, phase)] = rng.integers(0, 4, SHAPE).astype(np.uint8)
            else:
                masks[(view, phase)] = lv_mask(a, semi, depth_mm, lobes, seed=int(rng.integers(1 << 30)))
            spacings[(view, phase)] = SPACING
    return masks, spacings


def contour_points(module, mask) -> int:
    """Points of the resampled contour that the base search sees (0 if no sensible LV)."""
    if module.lv_mask_problem(mask):
        return 0
    iso, eff = module._isotropic(mask == 1, SPACING, None)
    tol = max(module.DEFAULT_BASE_TOL_MM, 1.5 * float(eff.max()))
    raw = module._outer_contour(iso) * eff
    return len(module._resample_closed(raw, ds=max(float(eff.max()), tol / 2.0)))


def _load(path: str):
    spec = importlib.util.spec_from_file_location("clinical_reference", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference: cannot import {path!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["clinical_reference"] = mod
    spec.loader.exec_module(mod)
    return mod


class _Timeout(Exception):
    pass


def _timed(fn, timeout: float | None = None):
    """(seconds, result) of fn(); (inf, None) past ``timeout`` seconds (SIGALRM, main thread)."""
    if timeout:
        def _raise(*_):
            raise _Timeout
        previous = signal.signal(signal.SIGALRM, _raise)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    t = time.perf_counter()
    try:
        res = fn()
    except _Timeout:
        return math.inf, None
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - t, res


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> list[dict]:
    ref = _load(args.reference) if args.reference else None
    rows = []
    for name, depth, lobes in CASES:
        masks, spacings = make_patient(depth, lobes)
        points = max(contour_points(long_axis, m) for m in masks.values())
        times = []
        for _ in range(max(1, args.repeats)):
            dt, res = _timed(lambda: clinical.patient_indices(masks, spacings))
            times.append(dt)
        row = {"case": name, "points": points, "s": statistics.median(times), "ef": res["ef"],
               "reason": res["reason"]}
        if ref is not None:
            dt, old = _timed(lambda: ref.patient_indices(masks, spacings), args.timeout)
            row["ref_s"] = dt
            if old is not None:  # compare volumes under the reference's own (camus) convention
                now = clinical.patient_indices(masks, spacings, simpson="camus")
                diffs = [abs(now[k] / old[k] - 1) for k in ("edv", "esv")
                         if math.isfinite(now[k]) and math.isfinite(old[k])]
                row["ref_rel_diff"] = max(diffs) if diffs else math.nan
        rows.append(row)
        print(f"  {name}: {row['s']:.3f} s" + (f", reference {row['ref_s']:.1f} s" if ref else ""),
              file=sys.stderr, flush=True)
    head = "| case (669x750 px, 4 masks) | contour points (max) | s / patient | EF % | reason |"
    sep = "|---|---|---|---|---|"
    if ref is not None:
        head += f" reference s / patient (cap {args.timeout:g} s) | max rel. diff EDV/ESV |"
        sep += "---|---|"
    lines = [f"Clinical indices benchmark ({_cpu()}, {__import__('os').cpu_count()} CPUs visible, "
             f"numpy {np.__version__})", "", head, sep]
    for r in rows:
        reason = (r["reason"][:60] + "...") if len(r["reason"]) > 60 else r["reason"]
        line = f"| {r['case']} | {r['points']} | {r['s']:.3f} | {r['ef']:.1f} | {reason} |"
        if ref is not None:
            ref_s = f"> {args.timeout:g} (timed out)" if math.isinf(r["ref_s"]) else f"{r['ref_s']:.2f}"
            rel = r.get("ref_rel_diff", math.nan)
            line += f" {ref_s} | {'n/a' if not math.isfinite(rel) else f'{100 * rel:.3f} %'} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        atomic_write_text(Path(args.markdown), text)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.bench.clinical")
    add_arguments(p)
    run(p.parse_args())
