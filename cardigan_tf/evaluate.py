"""``python -m cardigan_tf.evaluate RUN_DIR [--data PATH] [--split test] [--postprocess] [--spacing ROW,COL]``

CAMUS-style metrics report of a segmentation run in ``RUN_DIR/eval-<split>/`` (console script
``cardigan-evaluate``). The work is :func:`cardigan_tf.jobs.evaluation.evaluate_run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cardigan_tf import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.evaluate",
                                description="CAMUS-style metrics report of a segmentation run.")
    p.add_argument("run_dir", help="a seg run folder (runs/seg-...)")
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

    evaluate_run(args.run_dir, args.data, args.split, args.postprocess, args.out, args.overwrite, args.batch_size,
                 spacing=args.spacing, simpson=args.simpson)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"eval-{args.split}"
    return out / "report.md"


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
