"""``python -m cardigan_tf.train [main|gan|seg|study] ...`` (console script ``cardigan-train``).

- no sub-command, or ``main``: the main job, a complete small study on the built-in phantom (or
  on ``--data``), ending with the path of its report;
- ``gan``: train the SPADE GAN; ``seg``: train the U-Net (``--folds K``: a cross-validation run
  of K U-Nets, :mod:`cardigan_tf.jobs.cv`); ``study``: the synthetic-data study.

Thin: parse, build the config (cardigan_tf.configs), call the job (cardigan_tf.jobs). Every
job takes ``--run-dir DIR`` / ``--resume DIR`` / ``--runs-dir`` and turns its own flags into
config keys the same way (:mod:`cardigan_tf.cli`). The configs and jobs are imported inside
the functions, not at the top: they load TensorFlow, and a multi-worker job must create its
strategy (:func:`prepare_argv`) before TensorFlow runs any op.
"""

from __future__ import annotations

import argparse
import json
import sys

from cardigan_tf import cli, runtime

#: flag -> config key, per job (the flags of :func:`cli.flag_overrides`)
GAN_FLAGS = {"data": "data.data", "epochs": "train.epochs", "steps": "train.steps", "strategy": "train.strategy"}
SEG_FLAGS = {"data": "data.data", "synthetic": "data.synthetic", "synthetic_fraction": "data.synthetic_fraction",
             "epochs": "train.epochs", "strategy": "train.strategy", "name": "name"}
CV_FLAGS = {**SEG_FLAGS, "folds": "folds", "fold_source": "fold_source"}
STUDY_FLAGS = {"data": "data", "name": "name"}


# ----------------------------------------------------------------------------- main job
def _main_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.study import BUDGETS  # lazy: see the module docstring

    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--budget", choices=sorted(BUDGETS),
                   help="how much to train (default: standard, the full small study, duration in the README; smoke: a quick check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. seeds=[0,1]")
    p.add_argument("--name", help="study name")
    cli.add_run_arguments(p, "main job's study")
    _processes_argument(p, "auto")


def _processes_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--processes", default=default, metavar="N|auto",
                   help="local processes sharing the study's GANs and cells, each with cores/N TensorFlow "
                        f"threads (auto: 2 with at least 2 cores, else 1; default {default})")


def _n_processes(value: str) -> int:
    from cardigan_tf.jobs.study_processes import auto_processes  # lazy: see the module docstring

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
    from cardigan_tf.configs.study import main_config  # lazy: see the module docstring
    from cardigan_tf.jobs.study_processes import study_in_processes

    n = _n_processes(args.processes)
    overrides = cli.flag_overrides(args, STUDY_FLAGS)
    if args.resume:
        given = args.budget is not None or overrides
        cfg = main_config(args.budget or "standard", None, overrides) if given else None
        return study_in_processes(cfg, n, resume=args.resume) / "report.md"
    cfg = main_config(args.budget or "standard", None, overrides)
    return study_in_processes(cfg, n, runs_dir=args.runs_dir, study_dir=args.run_dir) / "report.md"


# ----------------------------------------------------------------------------- gan
def _gan_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.gan import PRESET_NAMES as GAN_PRESETS  # lazy: see the module docstring

    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--preset", choices=GAN_PRESETS, help="network/training preset (default: tiny on CPU, cardigan on GPU)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="train for N epochs")
    length.add_argument("--steps", type=int, help="train for N steps (overrides epochs)")
    cli.add_config_arguments(p, "GanConfig (sections model/train/data)")
    p.add_argument("--name", help="run name (default: the preset)")
    p.add_argument("--strategy", choices=runtime.STRATEGIES, help="tf.distribute strategy")
    cli.add_run_arguments(p, "GAN run (multi-worker: the same path on every worker; only the chief writes there)")


def gan_config_from_args(args: argparse.Namespace):
    """preset <- --config <- --set <- flags; with --resume and no --preset, the saved config
    <- --config <- --set <- flags (None when nothing is given)."""
    from cardigan_tf.configs.gan import build_config  # lazy: see the module docstring

    overrides = cli.flag_overrides(args, GAN_FLAGS)
    if args.epochs is not None:
        overrides.append("train.steps=null")
    if args.resume and args.preset is None:
        return cli.resumed_config("gan", args.resume, args.config, overrides)
    gpu = bool(runtime.gpu_devices()) if args.preset is None and args.config is None else False
    return build_config(args.preset, args.config, overrides, gpu=gpu)


def _run_gan(args: argparse.Namespace):
    from cardigan_tf.jobs.gan import train_gan  # lazy: see the module docstring

    return train_gan(gan_config_from_args(args), resume=args.resume, runs_dir=args.runs_dir, name=args.name,
                     run_dir=args.run_dir)


# ----------------------------------------------------------------------------- seg
def _seg_arguments(p: argparse.ArgumentParser) -> None:
    from cardigan_tf.configs.seg import PRESET_NAMES as SEG_PRESETS  # lazy: see the module docstring

    p.add_argument("--data", help="CAMUS folder (any layout) or seed-layout .h5; default: built-in phantom")
    p.add_argument("--synthetic", help="synthetic seed-layout .h5 to mix into training")
    p.add_argument("--synthetic-fraction", type=float, help="fraction of synthetic images per batch")
    p.add_argument("--preset", choices=SEG_PRESETS, help="model/training preset (default: tiny)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides train.epochs)")
    cli.add_config_arguments(p, "SegConfig")
    p.add_argument("--name", help="run name (default: the preset)")
    p.add_argument("--strategy", choices=runtime.STRATEGIES, help="tf.distribute strategy")
    p.add_argument("--folds", type=int, metavar="K",
                   help="cross-validation: K U-Nets on patient-level folds of the non-test patients, one cv run "
                        "(evaluate, predict and export load the fold ensemble)")
    p.add_argument("--fold-source", choices=("auto", "official", "seeded"),
                   help="with --folds: the prepared file's official fold lists, seeded folds, or auto (official "
                        "when they make K folds; default)")
    p.add_argument("--tta", metavar="VIEWS", help="with --folds: the ensemble's test-time views, comma-separated "
                                                  "(hflip, gamma:G, contrast:C; default none)")
    cli.add_run_arguments(p, "U-Net run (multi-worker: the same path on every worker; only the chief writes there)")


def _is_cv(args: argparse.Namespace) -> bool:
    """Whether ``train seg`` trains a cross-validation run: --folds given, or --resume / --run-dir
    naming a cv run."""
    from cardigan_tf.runs import is_run, open_run  # lazy: see the module docstring

    folder = args.resume or args.run_dir
    if args.folds is not None or (folder and is_run(folder) and open_run(folder).kind == "cv"):
        return True
    if args.fold_source or args.tta is not None:
        raise cli.UsageError("--fold-source and --tta are options of a cross-validation run: give --folds K")
    return False


def cv_config_from_args(args: argparse.Namespace):
    """As :func:`seg_config_from_args`, for a cv run (a CvConfig)."""
    from cardigan_tf.configs.cv import build_cv_config  # lazy: see the module docstring

    overrides = cli.flag_overrides(args, CV_FLAGS)
    if args.tta is not None:
        overrides.append("tta=" + json.dumps(cli.tta_views(args.tta)))
    if args.resume and args.preset is None:
        return cli.resumed_config("cv", args.resume, args.config, overrides)
    return build_cv_config(args.preset or "tiny", args.config, overrides)


def seg_config_from_args(args: argparse.Namespace):
    """preset <- --config <- --set <- flags; with --resume and no --preset, the saved config
    <- --config <- --set <- flags (None when nothing is given)."""
    from cardigan_tf.configs.seg import build_seg_config  # lazy: see the module docstring

    overrides = cli.flag_overrides(args, SEG_FLAGS)
    if args.resume and args.preset is None:
        return cli.resumed_config("seg", args.resume, args.config, overrides)
    return build_seg_config(args.preset or "tiny", args.config, overrides)


def _run_seg(args: argparse.Namespace):
    if _is_cv(args):
        from cardigan_tf.jobs.cv import train_cv  # lazy: see the module docstring

        return train_cv(cv_config_from_args(args), resume=args.resume, runs_dir=args.runs_dir, run_dir=args.run_dir)
    from cardigan_tf.jobs.seg import train_seg  # lazy: see the module docstring

    return train_seg(seg_config_from_args(args), resume=args.resume, runs_dir=args.runs_dir, run_dir=args.run_dir)


# ----------------------------------------------------------------------------- study
def _study_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_config_arguments(p, "the study design (see experiments/)")
    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--name", help="study name")
    cli.add_run_arguments(p, "study (finished cells are kept)")
    p.add_argument("--worker", action="store_true",
                   help="with --resume: join a study other processes/machines are running (cells are claimed)")
    p.add_argument("--report-only", action="store_true", help="with --resume: only write the report of the "
                                                                "cells finished so far")
    p.add_argument("--wait", type=float, default=6 * 3600, metavar="SECONDS",
                   help="how long to wait for cells or GANs other processes hold (default 6 h)")
    _processes_argument(p, "1")


def _run_study(args: argparse.Namespace):
    from cardigan_tf.configs.study import build_study_config  # lazy: see the module docstring
    from cardigan_tf.jobs.study import run_study
    from cardigan_tf.jobs.study_processes import study_in_processes

    if (args.worker or args.report_only) and not args.resume:
        raise cli.UsageError("--worker and --report-only need --resume STUDY_DIR")
    n = _n_processes(args.processes)
    if (args.worker or args.report_only) and n != 1:
        raise cli.UsageError("--processes: a --worker or --report-only call is one process")
    overrides = cli.flag_overrides(args, STUDY_FLAGS)
    if args.resume:
        cfg = cli.resumed_config("study", args.resume, args.config, overrides)
        if args.report_only or args.worker:
            return run_study(cfg, resume=args.resume, report_only=args.report_only, wait_s=args.wait)
        return study_in_processes(cfg, n, resume=args.resume, wait_s=args.wait)
    cfg = build_study_config(args.config, overrides)
    return study_in_processes(cfg, n, runs_dir=args.runs_dir, study_dir=args.run_dir, wait_s=args.wait)


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


def prepare_argv(argv: list[str]) -> list[str]:
    """The main job when no job is named; the multi-worker strategy created before anything
    else when a gan/seg job asks for it (TensorFlow refuses to configure collective ops once
    it has run an op)."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["main", *argv]
    if argv[0] in ("gan", "seg"):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--strategy")
        pre.add_argument("--set", dest="overrides", action="append", default=[])
        pre.add_argument("--resume")
        known, _ = pre.parse_known_args(argv[1:])
        if runtime.wants_multiworker(known.strategy, known.overrides, known.resume):
            runtime.multiworker_strategy()
    return argv


main = cli.entry(build_parser, run, prepare=prepare_argv)

if __name__ == "__main__":
    sys.exit(main())
