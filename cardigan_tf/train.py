"""``python -m cardigan_tf.train [main|gan|seg|study] ...`` (console script ``cardigan-train``).

- no sub-command, or ``main``: the main job, a complete small study on the built-in phantom (or
  on ``--data``), ending with the path of its report;
- ``gan``: train the SPADE GAN; ``seg``: train the U-Net; ``study``: the synthetic-data study.

Thin: parse, build the config (cardigan_tf.configs), call the job (cardigan_tf.jobs).
"""

from __future__ import annotations

import argparse
import sys

import cardigan_tf.runtime as runtime  # sets KERAS_BACKEND before keras is imported
from cardigan_tf import cli


# ----------------------------------------------------------------------------- main job
def _main_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.study import BUDGETS

    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="standard",
                   help="how much to train (default: standard, the full small study, duration in the README; smoke: a quick check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. seeds=[0,1]")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue an interrupted main job")
    p.add_argument("--name", help="study name")
    _processes_argument(p, "auto")


def _processes_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--processes", default=default, metavar="N|auto",
                   help="local processes sharing the study's GANs and cells, each with cores/N TensorFlow "
                        f"threads (auto: 2 with at least 2 cores, else 1; default {default})")


def _n_processes(value: str) -> int:
    from cardigan_tf.jobs.study_processes import auto_processes

    if value == "auto":
        return auto_processes()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise cli.UsageError(f"--processes: expected a positive integer or auto, got {value!r}")
    return n


def _run_main(args: argparse.Namespace):
    from cardigan_tf.configs.study import main_config
    from cardigan_tf.jobs.study_processes import study_in_processes

    n = _n_processes(args.processes)
    if args.resume:
        return study_in_processes(None, n, resume=args.resume) / "report.md"
    cfg = main_config(args.budget, args.data, args.overrides)
    if args.name:
        cfg.name = args.name
    return study_in_processes(cfg, n, runs_dir=args.runs_dir) / "report.md"


def _distribution_arguments(p: argparse.ArgumentParser) -> None:
    """--strategy and --run-dir, shared by the training jobs (gan, seg)."""
    p.add_argument("--strategy", choices=runtime.STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--run-dir", help="write into this run folder (multi-worker: the same path on every "
                                     "worker; only the chief writes there)")


# ----------------------------------------------------------------------------- gan
def _gan_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.gan import PRESET_NAMES

    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--preset", choices=PRESET_NAMES, help="network/training preset (default: tiny on CPU, cardigan on GPU)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train for N epochs")
    length.add_argument("--steps", type=int, help="train for N steps (overrides epochs)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a gan run folder exactly")
    cli.add_config_arguments(p, "GanConfig (sections model/train/data)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    p.add_argument("--name", help="run name (default: the preset)")
    _distribution_arguments(p)


def _run_gan(args: argparse.Namespace):
    from cardigan_tf import runtime
    from cardigan_tf.configs.gan import build_config
    from cardigan_tf.jobs.gan import train_gan

    if args.resume:
        return train_gan(None, resume=args.resume)
    overrides = list(args.overrides or [])
    if args.data:
        overrides.append(f"data.data={args.data}")
    if args.epochs is not None:
        overrides += [f"train.epochs={args.epochs}", "train.steps=null"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    gpu = bool(runtime.gpu_devices()) if args.preset is None else False
    cfg = build_config(args.preset, args.config, overrides, gpu=gpu)
    return train_gan(cfg, runs_dir=args.runs_dir, name=args.name, run_dir=args.run_dir)


# ----------------------------------------------------------------------------- seg
def _seg_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.seg import PRESET_NAMES

    p.add_argument("--data", help="CAMUS folder (any layout) or seed-layout .h5; default: built-in phantom")
    p.add_argument("--synthetic", help="synthetic seed-layout .h5 to mix into training")
    p.add_argument("--synthetic-fraction", type=float, help="fraction of synthetic images per batch")
    p.add_argument("--preset", choices=PRESET_NAMES, default="tiny", help="model/training preset")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides train.epochs)")
    cli.add_config_arguments(p, "SegConfig")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--runs-dir", default="runs", help="where run folders are created")
    p.add_argument("--name", help="run name (default: the preset)")
    _distribution_arguments(p)


def seg_config_from_args(args: argparse.Namespace):
    """defaults(preset) <- --config <- --set <- explicit flags."""
    from cardigan_tf.config import from_dict, load_config, to_dict
    from cardigan_tf.configs.seg import SegConfig, preset_config

    cfg = load_config(SegConfig, args.config, list(args.overrides or []), base=preset_config(args.preset))
    if args.data is not None:
        cfg.data.data = args.data
    if args.synthetic is not None:
        cfg.data.synthetic = args.synthetic
    if args.synthetic_fraction is not None:
        cfg.data.synthetic_fraction = args.synthetic_fraction
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.name:
        cfg.name = args.name
    if args.strategy:
        cfg.train.strategy = args.strategy
    return from_dict(SegConfig, to_dict(cfg))  # re-validate


def _run_seg(args: argparse.Namespace):
    from cardigan_tf.jobs.seg import train_seg
    from cardigan_tf.runs import open_run

    if args.resume:
        cfg = open_run(args.resume, "seg").config
        if args.epochs is not None:
            cfg.train.epochs = args.epochs
        return train_seg(cfg, resume=args.resume)
    return train_seg(seg_config_from_args(args), runs_dir=args.runs_dir, run_dir=args.run_dir)


# ----------------------------------------------------------------------------- study
def _study_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_config_arguments(p, "the study design (see experiments/)")
    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue a study folder (finished cells are kept)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    p.add_argument("--name", help="study name")
    p.add_argument("--study-dir", help="create the study in this folder (instead of a new one under --runs-dir)")
    p.add_argument("--worker", action="store_true",
                   help="with --resume: join a study other processes/machines are running (cells are claimed)")
    p.add_argument("--report-only", action="store_true", help="with --resume: only write the report of the "
                                                                "cells finished so far")
    p.add_argument("--wait", type=float, default=6 * 3600, metavar="SECONDS",
                   help="how long to wait for cells or GANs other processes hold (default 6 h)")
    _processes_argument(p, "1")


def _run_study(args: argparse.Namespace):
    from cardigan_tf.configs.study import build_study_config
    from cardigan_tf.jobs.study import run_study
    from cardigan_tf.jobs.study_processes import study_in_processes

    if (args.worker or args.report_only) and not args.resume:
        raise cli.UsageError("--worker and --report-only need --resume STUDY_DIR")
    n = _n_processes(args.processes)
    if (args.worker or args.report_only) and n != 1:
        raise cli.UsageError("--processes: a --worker or --report-only call is one process")
    if args.report_only or args.worker:
        return run_study(None, resume=args.resume, report_only=args.report_only, wait_s=args.wait)
    if args.resume:
        return study_in_processes(None, n, resume=args.resume, wait_s=args.wait)
    cfg = build_study_config(args.config, args.overrides, data=args.data, name=args.name)
    return study_in_processes(cfg, n, runs_dir=args.runs_dir, study_dir=args.study_dir, wait_s=args.wait)


JOBS = {
    "main": (_main_arguments, _run_main, "the main job (default): a complete small study on the phantom or --data"),
    "gan": (_gan_arguments, _run_gan, "train the SPADE GAN (mask -> echocardiogram)"),
    "seg": (_seg_arguments, _run_seg, "train the U-Net segmenter"),
    "study": (_study_arguments, _run_study, "run the synthetic-data augmentation study"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cardigan_tf.train",
        description="Train cardigan_tf models. With no sub-command, run the main job "
        "(a complete small study on the built-in phantom); its options (--data, --budget, --set, "
        "--resume, ...) may be given without the word 'main'.",
        epilog="python -m cardigan_tf.train JOB --help shows the options of one job.",
    )
    sub = parser.add_subparsers(dest="job", metavar="{main,gan,seg,study}")
    for name, (add_arguments, _, help_text) in JOBS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run(args: argparse.Namespace):
    return JOBS[args.job][1](args)


def _start_multiworker(argv: list[str]) -> None:
    """Create the multi-worker strategy before anything else (importing the configs already runs
    TensorFlow ops, after which TF refuses to configure collective ops)."""
    if not argv or argv[0] not in ("gan", "seg"):
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--strategy")
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv[1:])
    if runtime.wants_multiworker(known.strategy, known.overrides, known.resume):
        runtime.multiworker_strategy()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["main", *argv]
    _start_multiworker(argv)
    return cli.run_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
