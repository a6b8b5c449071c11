"""``python -m cardigan_tf.evaluate RUN_DIR [--data PATH] [--split test] [--postprocess] [--spacing ROW,COL]``

CAMUS-style metrics report of a segmentation run in ``RUN_DIR/eval-<split>/`` (console script
``cardigan-evaluate``). RUN_DIR may be a cv run (its fold ensemble); ``--run A --run B --out DIR``
evaluates the ensemble of several runs, ``--tta`` sets its test-time views. The work is :func:`cardigan_tf.jobs.evaluation.evaluate_run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cardigan_tf import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.evaluate",
                                description="CAMUS-style metrics report of a segmentation run.")
    p.add_argument("run_dir", nargs="?", help="a seg run folder (runs/seg-...) or a cv run (its fold ensemble)")
    p.add_argument("--run", dest="runs", action="append", default=[], metavar="RUN_DIR",
                   help="instead of RUN_DIR: one run of an ensemble (repeat: --run A --run B; needs --out)")
    p.add_argument("--tta", metavar="VIEWS", help="test-time views of the model, comma-separated (hflip, gamma:G, "
                                                  "contrast:C; 'none': none; default: a cv run's recorded ones)")
    p.add_argument("--data", help="dataset to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--postprocess", action="store_true", help="largest component per label + hole filling")
    p.add_argument("--spacing", metavar="ROW,COL",
                   help="pixel spacing (mm) of the original images, for data that does not record it")
    p.add_argument("--simpson", choices=("per_phase", "camus"), default="per_phase",
                   help="Simpson convention: per-phase long axis (clinical, default) or one disk height for ED "
                        "and ES (camus: as the vital library)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval-<split>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--batch-size", type=int, default=16)
    return p


def run(args: argparse.Namespace) -> Path:
    from cardigan_tf.jobs.evaluation import evaluate_run  # lazy: loads TensorFlow, which --help does not need

    runs = cli.model_runs(args.run_dir, args.runs)
    evaluate_run(runs if len(runs) > 1 else runs[0], args.data, args.split, args.postprocess, args.out,
                 args.overwrite, args.batch_size, spacing=args.spacing, simpson=args.simpson,
                 tta=cli.tta_views(args.tta))
    out = Path(args.out) if args.out else Path(runs[0]) / f"eval-{args.split}"
    return out / "report.md"


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
