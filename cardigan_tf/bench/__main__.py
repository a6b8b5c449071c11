"""``python -m cardigan_tf.bench {pipeline,gan,seg,clinical,export,ensemble,qc} [options]``: benchmarks that print figures.

Each benchmark is a sub-command module of this command (``add_arguments(parser)`` and
``run(args)``), imported only when present.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cardigan_tf import cli

BENCHES = {
    "pipeline": "cardigan_tf.bench.pipeline",
    "gan": "cardigan_tf.bench.gan",
    "seg": "cardigan_tf.bench.seg",
    "clinical": "cardigan_tf.bench.clinical",
    "export": "cardigan_tf.bench.export",
    "ensemble": "cardigan_tf.bench.ensemble",
    "qc": "cardigan_tf.bench.qc",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cardigan_tf.bench", description="Benchmarks (figures on stdout).")
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_arguments(sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0]))
    return parser


def run(args: argparse.Namespace):
    importlib.import_module(BENCHES[args.bench]).run(args)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
