"""``python -m cardigan_tf.prepare`` (console script ``cardigan-prepare``): convert any CAMUS layout to the seed HDF5 layout, or write the phantom.

Usage::

    python -m cardigan_tf.prepare --source CAMUS_DIR --out camus_256.h5 [--size 256]
        [--fold K] [--seed S] [--tfrecords DIR --shards N] [--skip-invalid] [--overwrite]
    python -m cardigan_tf.prepare --phantom --patients N --out phantom.h5 [--size] [--seed]
        [--set quality_mix=[0.2,0.5,0.3]] [--set style=A] [--set test_style=B]

The work is :func:`cardigan_tf.data.prepare.prepare` (see it for resizing and splits).
"""

from __future__ import annotations

import argparse
import sys

from cardigan_tf import cli
from cardigan_tf.config import load_config
from cardigan_tf.data import phantom
from cardigan_tf.data.h5layout import list_patients, read_root_attrs
from cardigan_tf.data.splits import split_summary
from cardigan_tf.units import PX, SPACING_KNOWN


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.prepare",
                                description="Convert any CAMUS layout into the seed HDF5 layout (or write the phantom).")
    p.add_argument("--source", help="CAMUS folder (2019 or 2023 release) or seed-layout .h5")
    p.add_argument("--phantom", action="store_true", help="write the built-in phantom instead of converting")
    p.add_argument("--patients", type=int, default=50, help="phantom patients (with --phantom)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --phantom: a PhantomConfig value, e.g. quality_mix=[0.2,0.5,0.3] (Good, Medium, "
                        "Poor), style=A, test_style=B (the test patients' acquisition style); repeatable")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--size", type=int, default=256, help="working size of 'im'/'gt' (default 256)")
    p.add_argument("--fold", type=int, default=None,
                   help="2019 listSubGroups fold K to use as the split (train/valid only when testing/ has ground truth)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the 80/10/10 split when no official lists (8:1 train/valid of training/ when "
                        "testing/ has ground truth)")
    p.add_argument("--tfrecords", default=None, help="also write TFRecord shards into this folder")
    p.add_argument("--shards", type=int, default=1, help="TFRecord shards per split")
    p.add_argument("--tfrecord-dtype", choices=("float32", "uint8"), default="float32")
    p.add_argument("--skip-invalid", action="store_true", help="skip (and count) invalid patients instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace):
    path = _write(args)
    attrs = read_root_attrs(path)
    print(split_summary(list_patients(path), attrs.get("split_method", "?")))
    if not attrs.get(SPACING_KNOWN, True):
        print(f"pixel spacing: not recorded by the source; distances will be in {PX} and volumes not reported")
    return path


def _write(args: argparse.Namespace):
    if args.phantom:
        path = phantom.write_h5(args.out, n_patients=args.patients, seed=args.seed, size=args.size,
                                overwrite=args.overwrite,
                                phantom=load_config(phantom.PhantomConfig, None, args.overrides))
        if args.tfrecords:
            from cardigan_tf.data import tfrecord  # lazy: loads TensorFlow, which --help does not need

            tfrecord.write_tfrecords(path, args.tfrecords, shards=args.shards, overwrite=args.overwrite,
                                     image_dtype=args.tfrecord_dtype)
        return path
    if not args.source:
        raise cli.UsageError("--source is required (or --phantom)")
    if args.overrides:
        raise cli.UsageError("--set sets phantom values: it needs --phantom")
    from cardigan_tf.data.prepare import prepare  # lazy: loads TensorFlow, which --help does not need

    return prepare(args.source, args.out, size=args.size, fold=args.fold, seed=args.seed,
                   tfrecords=args.tfrecords, shards=args.shards, skip_invalid=args.skip_invalid,
                   overwrite=args.overwrite, tfrecord_dtype=args.tfrecord_dtype, progress=not args.no_progress)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
