"""Single U-Net vs K-fold ensemble vs ensemble + test-time augmentation: paired per test patient,
with the cost (training time, inference ms/image at batch 1 and 8, exported SavedModel size).

    python -m experiments.ensemble_figures --out runs/ensfig [--quick]
    python -m experiments.ensemble_figures --out runs/ensfig-camus --data /data/CAMUS   # or a prepared .h5

Data. By default the phantom's harder regime: the default quality mix, training and validation
patients in acquisition style A, test patients in style B, few patients outside the test split
(``--pool``, default 10; the single U-Net validates on round(pool / K) of them and trains on the
others, the split sizes of a fold: 8 and 2 with K = 5, 7 and 3 with ``--quick``'s K = 3) and
``--test-patients`` test patients (12; 10 with ``--quick``), 64x64
(:func:`cardigan_tf.data.phantom.write_h5` with those split fractions). ``--data PATH``: a
CAMUS folder (any layout, prepared once at the working size) or a prepared seed-layout .h5; the
single U-Net trains on its ``train`` split and validates on ``valid``, the folds pool the two
(CAMUS 2019's official lists when ``prepare`` recorded them), the test split is the test.

Arms. ``single``: ``train seg`` (:func:`cardigan_tf.jobs.seg.train_seg`) of the preset with
``--epochs`` x ``--steps`` steps of its batch, no early stopping (the best validation epoch is
evaluated); ``ensemble``: ``train seg --folds K`` (:func:`cardigan_tf.jobs.cv.train_cv`, K = 5,
3 with ``--quick``) with the same budget per fold, evaluated as its fold ensemble; ``ensemble_tta``:
the same ensemble with the test-time views ``--tta`` (in the trained augmentation range). Each arm
is evaluated on the test split (:func:`cardigan_tf.jobs.evaluation.evaluate_run`), timed at the
working size (``Run.load`` / ``load_ensemble`` models, ``predict_on_batch`` medians, the calls
taken in turn), and exported with ``python -m cardigan_tf.export``.

Writes ``OUT/figures.md`` (read it first), ``figures.csv``, ``cost.csv``, ``figures.json``,
``figures.png``; ``OUT/runs``, ``OUT/eval/<arm>`` (and ``OUT/eval/members/fold-k``: each fold
alone), ``OUT/export``. Finished runs, evaluations
and exports in OUT are reused (a run with another config is refused); ``--overwrite`` evaluates,
exports and writes the figures again.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cardigan_tf.bench.ensemble import OVERHEAD, cpu_model, interleaved_medians
from cardigan_tf.configs.cv import build_cv_config
from cardigan_tf.configs.seg import build_seg_config
from cardigan_tf.data.h5layout import list_patients
from cardigan_tf.data.phantom import write_h5
from cardigan_tf.data.phantom_imaging import PhantomConfig
from cardigan_tf.data.source import resolve_data
from cardigan_tf.export import main as export_main
from cardigan_tf.files import refuse_overwrite
from cardigan_tf.jobs.cv import train_cv
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.runs import load_ensemble, open_run
from experiments import ensemble_figures_report as report

log = logging.getLogger("ensemble_figures")

#: (full, --quick) defaults
DEFAULTS = {"folds": (5, 3), "epochs": (10, 6), "steps": (20, 20), "test_patients": (12, 10),
            "timing_steps": (20, 10)}
DEFAULT_TTA = "gamma:0.8,gamma:1.25"
#: the phantom's harder regime: default quality mix, train style A, test style B
REGIME = PhantomConfig(style="A", test_style="B")
MB = 1e6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ensemble_figures", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (runs, evaluations, exports, figures)")
    p.add_argument("--quick", action="store_true",
                   help="K = 3, 6 epochs, 10 test patients (4 min measured on 2 shared cores)")
    p.add_argument("--data", help="CAMUS folder or prepared .h5 (default: the phantom's harder regime)")
    p.add_argument("--preset", default="tiny", help="U-Net preset (default tiny: 64x64)")
    p.add_argument("--folds", type=int, help="K (default 5; 3 with --quick)")
    p.add_argument("--epochs", type=int, help="epochs of every U-Net (default 10; 6 with --quick)")
    p.add_argument("--steps", type=int, help="steps per epoch of every U-Net (default 20)")
    p.add_argument("--pool", type=int, default=10, help="phantom patients outside the test split (default 10)")
    p.add_argument("--test-patients", type=int, help="phantom test patients (default 12; 10 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="phantom and split seed (default 0)")
    p.add_argument("--train-seed", type=int, default=0, help="train.seed of every U-Net (default 0)")
    p.add_argument("--tta", default=DEFAULT_TTA, help=f"test-time views besides the identity (default {DEFAULT_TTA})")
    p.add_argument("--timing-steps", type=int, help="timed calls per inference figure (default 20; 10 with --quick)")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples of each comparison")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="U-Net config override for every U-Net, e.g. model.base_filters=8 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="evaluate, export and write the figures again")
    return p


def settings(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the unset values filled from :data:`DEFAULTS` (full or --quick), checked."""
    for key, pair in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, pair[1] if args.quick else pair[0])
    for key in ("folds", "epochs", "steps", "test_patients", "timing_steps"):
        if getattr(args, key) < 1:
            raise SystemExit(f"error: --{key.replace('_', '-')}: expected >= 1, got {getattr(args, key)}")
    if args.folds < 2:
        raise SystemExit(f"error: --folds: expected >= 2, got {args.folds}")
    if args.data is None and (args.pool < args.folds or args.test_patients < 2):
        raise SystemExit(f"error: --pool {args.pool} / --test-patients {args.test_patients}: expected --pool >= "
                         f"--folds ({args.folds}) and at least 2 test patients")
    args.views = [] if args.tta.strip().lower() in ("", "none") else [v.strip() for v in args.tta.split(",")]
    return args


def make_data(args: argparse.Namespace, out: Path, size: int) -> Path:
    """The prepared .h5 every arm reads (module docstring)."""
    if args.data:
        return resolve_data(args.data, out / "data", size=size, seed=args.seed)
    n_valid = max(1, round(args.pool / args.folds))  # the single U-Net's split: the size of a fold's
    n = args.pool + args.test_patients
    path = out / "data" / (f"phantom_{REGIME.tag()}_train{args.pool - n_valid}_valid{n_valid}_test{args.test_patients}"
                           f"_seed{args.seed}.h5")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_h5(path, n_patients=n, seed=args.seed, size=size, phantom=REGIME,
                 fractions=((args.pool - n_valid) / n, n_valid / n, args.test_patients / n))
    return path


def _seconds(run_dir: Path) -> float:
    return float((open_run(run_dir).metrics or {}).get("train_seconds_this_session", float("nan")))


def train(args: argparse.Namespace, out: Path, overrides: list[str]) -> tuple[Path, Path, dict]:
    """The single seg run and the cv run (reused when finished), and the training seconds."""
    seg_cfg = build_seg_config(args.preset, None, overrides)
    cv_cfg = build_cv_config(args.preset, None, [*overrides, f"folds={args.folds}"])
    cv_cfg.tta = list(args.views)
    cv_cfg.validate()
    t = time.perf_counter()
    single = Path(train_seg(seg_cfg, run_dir=out / "runs" / "single"))
    wall_single = time.perf_counter() - t
    t = time.perf_counter()
    cv = Path(train_cv(cv_cfg, run_dir=out / "runs" / f"cv{args.folds}"))
    wall_cv = time.perf_counter() - t
    folds = [Path(p) for p in open_run(cv).member_runs()]
    return single, cv, {"single": _seconds(single), "folds": [_seconds(f) for f in folds],
                        "wall_single": wall_single, "wall_cv": wall_cv}


def evaluate(arms: dict, out: Path, data: Path, overwrite: bool) -> dict[str, Path]:
    """Each arm's (or fold's) evaluation folder on the test split (reused unless ``overwrite``)."""
    dirs = {}
    for arm, (run, tta) in arms.items():
        d = out / "eval" / arm
        if overwrite or not (d / "summary.json").is_file():
            evaluate_run(run, data=data, split="test", out=d, overwrite=True, tta=tta)
        dirs[arm] = d
    return dirs


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def inference_ms(arms: dict, data: Path, steps: int, batches=(1, 8)) -> dict[tuple[str, int], float]:
    """ms/image of each arm's model (working size, the resize chain not included) per batch size."""
    models = {}
    for arm, (run, tta) in arms.items():
        trained = open_run(run).load(data=data) if tta is None else load_ensemble([run], data=data, tta=tta)
        models[arm] = trained.model
    size = int(models["single"].inputs[0].shape[1])
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.random((b, size, size, 1), dtype=np.float32)
        calls = {arm: (lambda m=m, x=x: m.predict_on_batch(x)) for arm, m in models.items()}
        for arm, sec in interleaved_medians(calls, steps, warmup=3).items():
            out[(arm, b)] = sec * 1000.0 / b
    return out


def saved_model_bytes(folder: Path) -> int:
    """Bytes of a SavedModel: saved_model.pb and variables/ (not the warm-up requests or metadata)."""
    files = [folder / "saved_model.pb", *(folder / "variables").rglob("*")]
    return sum(f.stat().st_size for f in files if f.is_file())


def export(arms: dict, out: Path, overwrite: bool) -> dict[str, Path]:
    """``python -m cardigan_tf.export`` of each arm (version 1 of model ``ensfig_<arm>``)."""
    base, dirs = out / "export", {}
    for arm, (run, tta) in arms.items():
        target = base / f"ensfig_{arm}" / "1"
        if overwrite or not (target / "saved_model.pb").is_file():
            argv = [str(run), "--out", str(base), "--name", f"ensfig_{arm}", "--version", "1", "--overwrite"]
            if tta is not None:
                argv += ["--tta", ",".join(tta) or "none"]
            if export_main(argv) != 0:
                raise SystemExit(f"error: python -m cardigan_tf.export {' '.join(argv)} failed")
        dirs[arm] = target
    return dirs


def cpu_line() -> str:
    """The CPU as ``lscpu`` names it, with the CPUs this process may use."""
    name = ""
    if shutil.which("lscpu"):
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
            name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                         if ln.strip().lower().startswith("model name")), "")
        except (OSError, subprocess.SubprocessError):
            name = ""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name or cpu_model()}, {cpus} CPUs usable"


def cost_rows(k: int, views: int, seconds: dict, ms: dict, sizes: dict) -> list[dict]:
    """The cost table: training seconds, ms/image with the K (x views) x single + 20 % bound,
    SavedModel MB with the same bound."""
    rows = [{"item": "training (fit)", "arm": "single", "batch": "", "value": seconds["single"], "unit": "s",
             "bound": float("nan"), "within": "", "note": "train_seconds_this_session of the run"},
            {"item": "training (fit)", "arm": f"{k} folds", "batch": "", "value": sum(seconds["folds"]), "unit": "s",
             "bound": float("nan"), "within": "",
             "note": f"{sum(seconds['folds']) / seconds['single']:.2f} x single; folds "
                     + ", ".join(f"{s:.0f}" for s in seconds["folds"]) + " s"},
            {"item": "training (wall)", "arm": "single", "batch": "", "value": seconds["wall_single"], "unit": "s",
             "bound": float("nan"), "within": "", "note": "this process (a reused run: its loading only)"},
            {"item": "training (wall)", "arm": f"{k} folds", "batch": "", "value": seconds["wall_cv"], "unit": "s",
             "bound": float("nan"), "within": "", "note": "this process, with the folds' validation summary"}]
    members = {"single": 1, "ensemble": k, "ensemble_tta": k * views}
    for (arm, b), v in sorted(ms.items(), key=lambda kv: (kv[0][1], report.ARMS.index(kv[0][0]))):
        bound = members[arm] * ms[("single", b)] * (1 + OVERHEAD) if arm != "single" else float("nan")
        rows.append({"item": "inference", "arm": arm, "batch": b, "value": v, "unit": "ms/image", "bound": bound,
                     "within": "" if arm == "single" else ("yes" if v <= bound else "NO"),
                     "note": f"{v / ms[('single', b)]:.2f} x single" + (
                         f"; bound {members[arm]} x single + {OVERHEAD:.0%}" if arm != "single" else "")})
    for arm, n in sizes.items():
        bound = k * sizes["single"] * (1 + OVERHEAD) if arm != "single" else float("nan")
        rows.append({"item": "SavedModel size", "arm": arm, "batch": "", "value": n / MB, "unit": "MB",
                     "bound": bound / MB, "within": "" if arm == "single" else ("yes" if n <= bound else "NO"),
                     "note": f"{n / sizes['single']:.2f} x single (saved_model.pb + variables)"})
    return rows


def context_lines(args, data: Path, seg_cfg_line: str, cpu: str, single: Path, cv: Path) -> list[str]:
    split = list_patients(data)
    cv_metrics = open_run(cv).metrics or {}
    where = (f"CAMUS-format data `{args.data}` (prepared: `{data}`)" if args.data else
             f"phantom, harder regime: default quality mix, train/valid style A, test style B, seed {args.seed} "
             f"(`{data}`)")
    return [where,
            f"patients: train {len(split.get('train', []))}, valid {len(split.get('valid', []))}, test "
            f"{len(split.get('test', []))} (the single U-Net trains on train and validates on valid; the "
            f"{args.folds} folds pool both, fold source {cv_metrics.get('fold_source', '?')})",
            seg_cfg_line,
            f"test-time views of ensemble + TTA: identity, {', '.join(args.views) or 'none'}",
            f"runs: single `{single}`, cv `{cv}`; machine `{os.uname().nodename}`, {cpu}",
            f"command: `python -m experiments.ensemble_figures {' '.join(sys.argv[1:])}`"]


def main(argv: list[str] | None = None) -> int:
    args = settings(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    refuse_overwrite(out / "figures.md", args.overwrite, "figures")
    size = build_seg_config(args.preset, None, list(args.overrides)).data.size
    data = make_data(args, out, size)
    overrides = [f"data.data={data}", f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
                 "train.patience=0", "train.n_overlays=0", f"train.seed={args.train_seed}", *args.overrides]
    seg_cfg = build_seg_config(args.preset, None, overrides)
    single, cv, seconds = train(args, out, overrides)
    arms = {"single": (single, None), "ensemble": (cv, []), "ensemble_tta": (cv, list(args.views))}
    eval_dirs = evaluate(arms, out, data, args.overwrite)
    summaries = {arm: _summary(d) for arm, d in eval_dirs.items()}
    folds = {f"members/{p.name}": (p, None) for p in map(Path, open_run(cv).member_runs())}
    test_dice = {arm: report.test_dice(s) for arm, s in summaries.items()}
    test_dice.update({k: report.test_dice(_summary(d)) for k, d in evaluate(folds, out, data, args.overwrite).items()})
    log.info("timing inference (%d calls per figure)", args.timing_steps)
    ms = inference_ms(arms, data, args.timing_steps)
    sizes = {arm: saved_model_bytes(d) for arm, d in export(arms, out, args.overwrite).items()}
    unit = summaries["single"].get("distance_unit", "mm")
    rows, diffs = report.compare(eval_dirs, {"hd": unit, "mad": unit, "dice": "fraction"}, n_boot=args.n_boot)
    cpu = cpu_line()
    cfg_line = (f"every U-Net: preset {args.preset} ({seg_cfg.model.size}x{seg_cfg.model.size}, depth "
                f"{seg_cfg.model.depth}, base {seg_cfg.model.base_filters}), {args.epochs} epochs x {args.steps} "
                f"steps of batch {seg_cfg.train.batch_size}, no early stopping, the best validation epoch; train seed "
                f"{args.train_seed}" + (f"; overrides {args.overrides}" if args.overrides else ""))
    views = 1 + len(args.views)
    context = {"folds": args.folds, "quick": bool(args.quick), "data": str(data), "cpu": cpu, "test_dice": test_dice,
               "machine": os.uname().nodename, "lines": context_lines(args, data, cfg_line, cpu, single, cv),
               "cost_lines": [f"CPU: {cpu} (shared with other jobs: times are indicative). Inference: the arm's "
                              f"model at the working size (`predict_on_batch`, median of {args.timing_steps} calls "
                              "after 3 warm-up calls, the arms taken in turn); the resize chain is shared and not "
                              f"timed. Bound: members x single + {OVERHEAD:.0%} (ensemble: K = {args.folds} members; "
                              f"+ TTA: K x {views} views). SavedModel: `python -m cardigan_tf.export` of each arm "
                              "(`export/ensfig_<arm>/1`)."]}
    record = report.write(out, context, rows, diffs, summaries, cost_rows(args.folds, views, seconds, ms, sizes))
    for comp, c in record["checks"].items():
        p = c["primary"] or {}
        print(f"{comp}: LV endo Dice {p.get('estimate', math.nan):+.4f} [{p.get('ci_low', math.nan):+.4f}, "
              f"{p.get('ci_high', math.nan):+.4f}]; not worse on any structure: {c['not_worse']}")
    print(out / "figures.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
