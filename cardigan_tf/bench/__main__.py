"""``python -m cardigan_tf.bench {pipeline,gan,seg,clinical} [options]``"""

from __future__ import annotations

import argparse
import importlib
import sys

import cardigan_tf.runtime  # noqa: F401

BENCHES = {
    "pipeline": "cardigan_tf.bench.pipeline",
    "gan": "cardigan_tf.bench.gan",
    "seg": "cardigan_tf.bench.seg",
    "clinical": "cardigan_tf.bench.clinical",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cardigan_tf.bench")
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.add_arguments(sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0]))
    args = parser.parse_args(argv)
    importlib.import_module(BENCHES[args.bench]).run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
