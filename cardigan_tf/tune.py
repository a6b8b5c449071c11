"""``python -m cardigan_tf.tune [--data PATH] [--synthetic FILE.h5] [--tuner hyperband|bayesian|random]
[--max-trials N] [--max-epochs E] [--dir DIR] [--overwrite] [--resume] [--set key=value] [--config FILE.yaml]``

KerasTuner search over U-Net hyperparameters and the training data's make-up (console script
``cardigan-tune``). Prints the path of the best configuration retrained into an ordinary seg run
folder (or of the tuning folder with ``--set retrain=false``). The search space is
:mod:`cardigan_tf.configs.tune` (narrow it with ``--set space.lr.max=1e-3`` or a YAML ``space:``
section); the work is :func:`cardigan_tf.jobs.tuning.tune`. Distributed: set
KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT (see
experiments/tune_distributed.py and docs/tuning.md).

Examples::

    python -m cardigan_tf.tune --tuner random --max-trials 10 --max-epochs 5 --dir runs/tune-phantom
    python -m cardigan_tf.tune --dir runs/tune-phantom --resume            # after an interruption
    python -m cardigan_tf.tune --data data/camus_256.h5 --synthetic camusx.h5 --config experiments/tune_small.yaml
"""

from __future__ import annotations

import argparse
import sys

import cardigan_tf.runtime  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from cardigan_tf import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.tune",
                                description="KerasTuner search over U-Net hyperparameters and augmented datasets.")
    p.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    p.add_argument("--synthetic", metavar="FILE.h5",
                   help="synthetic seed-layout set; its share of the training batches is then tuned (0 to 0.75)")
    p.add_argument("--tuner", help="hyperband (default), bayesian or random")
    p.add_argument("--max-trials", type=int, help="number of trials (Hyperband: a cap)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (Hyperband: of the longest trials)")
    p.add_argument("--dir", help="tuning folder (default: runs/tune-<name>-<UTC time>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing tuning folder")
    mode.add_argument("--resume", action="store_true",
                      help="continue the search in --dir (finished trials are not repeated)")
    cli.add_config_arguments(p, "TuneConfig values (tuner, max_trials, objective, seg.*, space.*)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of a new tuning folder without --dir")
    p.add_argument("--worker-wait", type=float, default=600.0, metavar="SECONDS",
                   help="distributed workers: how long to wait for the chief's tuning folder")
    return p


def run(args: argparse.Namespace):
    from cardigan_tf.configs.tune import build_tune_config
    from cardigan_tf.jobs.tuning import distributed_role, tune

    role = distributed_role()
    if args.resume:
        if not args.dir:
            raise cli.UsageError("--resume needs --dir (the tuning folder to continue)")
        changed = [name for name, value in (("--config", args.config), ("--set", args.overrides),
                                            ("--data", args.data), ("--synthetic", args.synthetic),
                                            ("--tuner", args.tuner), ("--max-epochs", args.max_epochs)) if value]
        if changed:
            raise cli.UsageError(f"--resume continues the saved search; {', '.join(changed)} cannot change it "
                                 "(only --max-trials can)")
        cfg = None
        if args.max_trials is not None:
            from cardigan_tf.runs import open_run

            cfg = open_run(args.dir, "tune").config
            cfg.max_trials = args.max_trials
            cfg.validate()
        return tune(cfg, args.dir, resume=True, worker_wait_s=args.worker_wait)
    if role == "worker":  # the chief's config is used; a worker only needs the shared folder
        if not args.dir:
            raise cli.UsageError("a distributed worker needs --dir (the chief's tuning folder)")
        return tune(None, args.dir, worker_wait_s=args.worker_wait)
    cfg = build_tune_config(args.config, args.overrides, data=args.data, synthetic=args.synthetic, tuner=args.tuner,
                            max_trials=args.max_trials, max_epochs=args.max_epochs)
    return tune(cfg, args.dir, overwrite=args.overwrite, runs_dir=args.runs_dir, worker_wait_s=args.worker_wait)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
