"""``python -m cardigan_tf.generate --gan RUN_DIR --out FILE.h5 [--masks real|deformed|sampled] ...``

Writes a synthetic "CAMUSx" set from a trained GAN (console script ``cardigan-generate``).
The work is :func:`cardigan_tf.jobs.generation.generate_set`; see that module for the mask
sources and the file's provenance.
"""

from __future__ import annotations

import argparse
import sys

from cardigan_tf import cli

MASK_SOURCES = ("real", "deformed", "sampled")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.generate",
                                description="Write a synthetic CAMUSx set (seed HDF5 layout) from a trained GAN.")
    p.add_argument("--gan", required=True, metavar="RUN_DIR", help="a finished `train gan` run folder")
    p.add_argument("--out", required=True, metavar="FILE.h5", help="output synthetic set (seed HDF5 layout)")
    p.add_argument("--masks", choices=MASK_SOURCES, default="real", help="mask source (default: real)")
    p.add_argument("--per-mask", type=int, default=1, metavar="K", help="synthetic images per source mask")
    p.add_argument("--n", type=int, metavar="N", help="total images (default: every mask x per-mask)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="use the raw generator instead of its EMA")
    p.add_argument("--vae-epochs", type=int, help="mask VAE training epochs (--masks sampled; default: "
                   "at least 40 epochs and 300 updates)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(args: argparse.Namespace):
    from cardigan_tf.jobs.generation import generate_set  # lazy: loads TensorFlow, which --help does not need

    return generate_set(args.gan, args.out, masks=args.masks, per_mask=args.per_mask, n=args.n, seed=args.seed,
                        overwrite=args.overwrite, weights="raw" if args.raw else "ema", vae_epochs=args.vae_epochs)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
