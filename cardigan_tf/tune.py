"""``python -m cardigan_tf.tune [--data PATH] [--synthetic FILE.h5] [--tuner hyperband|bayesian|random]
[--max-trials N] [--max-epochs E] [--run-dir DIR [--overwrite] | --resume DIR] [--set key=value] [--config FILE.yaml]``

KerasTuner search over U-Net hyperparameters and the training data's make-up (console script
``cardigan-tune``). Prints the path of the best configuration retrained into an ordinary seg run
folder (or of the tuning folder with ``--set retrain=false``). The search space is
:mod:`cardigan_tf.configs.tune` (narrow it with ``--set space.lr.max=1e-3`` or a YAML ``space:``
section); the work is :func:`cardigan_tf.jobs.tuning.tune`. Distributed: set
KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT (see
experiments/tune_distributed.py and docs/tuning.md).

Examples::

    python -m cardigan_tf.tune --tuner random --max-trials 10 --max-epochs 5 --run-dir runs/tune-phantom
    python -m cardigan_tf.tune --tuner random --max-trials 10 --max-epochs 5 --resume runs/tune-phantom  # after an interruption
    python -m cardigan_tf.tune --data data/camus_256.h5 --synthetic camusx.h5 --config experiments/tune_small.yaml
"""

from __future__ import annotations

import argparse
import sys

from cardigan_tf import cli

#: flag -> config key (see :func:`cardigan_tf.cli.flag_overrides`)
FLAGS = {"data": "seg.data.data", "synthetic": "seg.data.synthetic", "tuner": "tuner", "max_trials": "max_trials",
         "max_epochs": "max_epochs"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.tune",
                                description="KerasTuner search over U-Net hyperparameters and augmented datasets.")
    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--synthetic", metavar="FILE.h5",
                   help="synthetic seed-layout set; its share of the training batches is then tuned (0 to 0.75)")
    p.add_argument("--tuner", help="hyperband (default), bayesian or random")
    p.add_argument("--max-trials", type=int, help="number of trials (Hyperband: a cap)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (Hyperband: of the longest trials)")
    cli.add_config_arguments(p, "TuneConfig values (tuner, max_trials, objective, seg.*, space.*)")
    cli.add_run_arguments(p, "search (finished trials are not repeated; only --max-trials may change)")
    p.add_argument("--overwrite", action="store_true", help="replace the tuning folder --run-dir")
    p.add_argument("--worker-wait", type=float, default=600.0, metavar="SECONDS",
                   help="distributed workers: how long to wait for the chief's tuning folder")
    return p


def run(args: argparse.Namespace):
    from cardigan_tf.configs.tune import build_tune_config  # lazy: loads TensorFlow, which --help does not need
    from cardigan_tf.jobs.tuning import distributed_role, tune

    overrides = cli.flag_overrides(args, FLAGS)
    if args.resume and args.overwrite:
        raise cli.UsageError("--resume and --overwrite exclude each other")
    if distributed_role() == "worker":  # the chief's config is used; a worker only needs the shared folder
        folder = args.resume or args.run_dir
        if not folder:
            raise cli.UsageError("a distributed worker needs --resume DIR (the chief's tuning folder)")
        return tune(None, resume=folder, worker_wait_s=args.worker_wait)
    if args.resume:
        cfg = cli.resumed_config("tune", args.resume, args.config, overrides)
        return tune(cfg, resume=args.resume, worker_wait_s=args.worker_wait)
    cfg = build_tune_config(args.config, overrides)
    return tune(cfg, args.run_dir, overwrite=args.overwrite, runs_dir=args.runs_dir, worker_wait_s=args.worker_wait)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
