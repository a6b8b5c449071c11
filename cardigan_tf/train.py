"""``python -m cardigan_tf.train [gan|seg|study] ...``

- ``gan``: train the SPADE GAN (cardigan_tf.jobs.gan)
- ``seg``: train the U-Net (cardigan_tf.jobs.seg)
- ``study``: the synthetic-data augmentation study (cardigan_tf.jobs.study)
- no sub-command: the main job, a complete small study on the built-in phantom
  (or on ``--data``), ending with the path of its report.

The CLI is thin: each job module declares ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import cardigan_tf.runtime  # noqa: F401  (sets KERAS_BACKEND before keras is imported)

JOBS = {
    "gan": ("cardigan_tf.jobs.gan", "train the SPADE GAN (mask -> echocardiogram)"),
    "seg": ("cardigan_tf.jobs.seg", "train the U-Net segmenter"),
    "study": ("cardigan_tf.jobs.study", "run the synthetic-data augmentation study"),
    "main": ("cardigan_tf.jobs.main", "the default main job: a complete small study"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cardigan_tf.train",
        description="Train cardigan_tf models. With no sub-command, run the main job "
        "(a complete small study on the built-in phantom).",
        epilog="Options of the main job (--data, --budget, --set, ...): python -m cardigan_tf.train main --help",
    )
    sub = parser.add_subparsers(dest="job", metavar="{gan,seg,study}")
    for name, (module, help_text) in JOBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["main", *argv]
    args = build_parser().parse_args(argv)
    module = importlib.import_module(JOBS[args.job][0])
    result = module.run(args)
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
