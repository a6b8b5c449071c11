"""``python -m cardigan_tf.export``: export a seg or GAN run for TensorFlow Serving (and ONNX).

    python -m cardigan_tf.export RUN_DIR [--out export/models] [--name NAME] [--version N]
                                 [--onnx] [--overwrite] [--absolute-paths] [--tta VIEWS]
    python -m cardigan_tf.export --run A --run B ...   # one ensemble of seg / cv runs
    python -m cardigan_tf.export --check DIR      # DIR = BASE, BASE/NAME or BASE/NAME/VERSION

Writes ``BASE/NAME/VERSION/`` (SavedModel, ``metadata.json``, warm-up requests, optional
``model.onnx``) and rewrites ``BASE/models.config``; see :mod:`cardigan_tf.serving.export`.
``--check`` prints one ``ok ...`` line per verified item, or ``error: ...`` (exit 2).
"""

from __future__ import annotations

import argparse
import sys

from cardigan_tf import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.export",
                                description="Export a seg/GAN run as TF-Serving SavedModel (+ ONNX), or check an export.")
    p.add_argument("run_dir", nargs="?", help="a seg, cv (its fold ensemble) or gan run folder")
    p.add_argument("--run", dest="runs", action="append", default=[], metavar="RUN_DIR",
                   help="instead of RUN_DIR: one seg/cv run of an ensemble exported as one model (repeat)")
    p.add_argument("--tta", metavar="VIEWS", help="the ensemble's test-time views, comma-separated (hflip, gamma:G, "
                                                  "contrast:C; 'none': none; default: a cv run's recorded ones)")
    p.add_argument("--out", default="export/models", help="model base folder (default: export/models)")
    p.add_argument("--name", help="model name (default: seg or gan)")
    p.add_argument("--version", type=int, help="version number (default: the next free one, from 1)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx and check it against TensorFlow")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--absolute-paths", action="store_true",
                   help="models.config with absolute local base paths (default: /models/NAME, as in the container)")
    p.add_argument("--check", metavar="DIR", help="verify an export (BASE, BASE/NAME or a version folder)")
    p.add_argument("--no-source", action="store_true", help="--check: skip the comparison with the source run")
    return p


def run(args: argparse.Namespace):
    from cardigan_tf.serving.export import export_run  # lazy: loads TensorFlow, which --help does not need
    from cardigan_tf.serving.export_check import check_export

    if args.check:
        if args.run_dir or args.runs:
            raise cli.UsageError("give either RUN_DIR (export) or --check DIR, not both")
        return "\n".join(check_export(args.check, compare_source=not args.no_source))
    if not args.run_dir and not args.runs:
        raise cli.UsageError("RUN_DIR is required (or --run RUN_DIR, or --check DIR)")
    runs = cli.model_runs(args.run_dir, args.runs)
    return export_run(runs if len(runs) > 1 else runs[0], args.out, name=args.name, version=args.version,
                      onnx=args.onnx, overwrite=args.overwrite, absolute_paths=args.absolute_paths,
                      tta=cli.tta_views(args.tta))


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
