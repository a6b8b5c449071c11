"""The default main job: ``python -m cardigan_tf.train`` with no sub-command.

A complete small study on the built-in phantom (or on ``--data``): the GAN is trained on a
subset of the training patients, a synthetic set is generated from their masks, the U-Net is
trained with and without synthetic images, everything is evaluated on the test patients, and
``report.md`` gathers the table, the plot and a sample grid. The command prints the report's
path.

Budgets (``--budget``):

- ``standard`` (default): 2 training fractions (25 %, 100 %) x synthetic fractions (0, 0.5) x
  1 seed on 64x64 images of 60 phantom patients (48 train / 6 valid / 6 test); 2 GANs of 600
  steps, 4 U-Nets of 250 steps; about 17 CPU-minutes, i.e. 10-15 minutes on 2 free cores;
- ``smoke``: the same pipeline with a handful of steps, for tests and a first look (~2 min).

Any study key can still be changed with ``--set`` (e.g. ``--set seeds=[0,1,2]``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cardigan_tf.jobs.study import StudyConfig, config_from_args, run_study

#: dotted overrides applied on top of the StudyConfig defaults, per budget.
BUDGETS: dict[str, list[str]] = {
    "standard": [
        "name=main",
        "n_phantom=60",
        "train_fractions=[0.25, 1.0]",
        "synthetic_fractions=[0.0, 0.5]",
        "seeds=[0]",
        "gan.train.steps=600",
        "gan.train.batch_size=8",
        "gan.train.checkpoint_every=200",
        "gan.train.sample_every=200",
        "seg.train.epochs=10",
        "seg.train.steps_per_epoch=25",
        "seg.train.patience=0",
    ],
    "smoke": [
        "name=main-smoke",
        "n_phantom=10",
        "train_fractions=[1.0]",
        "synthetic_fractions=[0.0, 0.5]",
        "seeds=[0]",
        "gan.train.steps=3",
        "gan.train.batch_size=2",
        "gan.train.checkpoint_every=3",
        "gan.train.sample_every=3",
        "seg.train.epochs=1",
        "seg.train.steps_per_epoch=3",
        "seg.train.batch_size=4",
        "seg.train.patience=0",
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="standard",
                        help="how much to train (default: standard, ~15 min on 2 CPU cores)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key, e.g. seeds=[0,1]")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    parser.add_argument("--resume", metavar="STUDY_DIR", help="continue an interrupted main job")
    parser.add_argument("--name", help="study name")
    parser.set_defaults(config=None)


def main_config(budget: str = "standard", data: str | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """The main job's StudyConfig for a budget (plus ``--data`` and ``--set`` overrides)."""
    args = argparse.Namespace(config=None, data=data, name=None, set=[*BUDGETS[budget], *(overrides or [])])
    return config_from_args(args)


def run(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.resume:
        study = run_study(None, resume=args.resume)
    else:
        cfg = main_config(args.budget, args.data, args.set)
        if args.name:
            cfg.name = args.name
        study = run_study(cfg, runs_dir=args.runs_dir)
    return study / "report.md"  # printed by cardigan_tf.train
