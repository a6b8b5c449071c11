"""``python -m cardigan_tf.gan_quality --synthetic FILE.h5 --seg RUN_DIR [--inception-weights FILE] ...``

GAN quality report of a synthetic set: segmentation consistency and FID / KID (console script
``cardigan-gan-quality``). The work is :func:`cardigan_tf.jobs.gan_quality.gan_quality_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cardigan_tf import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.gan_quality",
                                description="GAN quality report of a synthetic set.")
    p.add_argument("--synthetic", required=True, metavar="FILE.h5", help="synthetic set (python -m cardigan_tf.generate)")
    p.add_argument("--seg", required=True, metavar="RUN_DIR", help="seg run trained on real images only")
    p.add_argument("--real", metavar="DATA", help="real dataset (default: the synthetic set's source data)")
    p.add_argument("--inception-weights", metavar="FILE", help="local InceptionV3 no-top weights (default: U-Net encoder features)")
    p.add_argument("--split", default="test", help="real split scored beside the synthetic images (default: test)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <synthetic stem>-quality/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def run(a: argparse.Namespace) -> Path:
    from cardigan_tf.jobs.gan_quality import gan_quality_report  # lazy: loads TensorFlow, which --help does not need

    r = gan_quality_report(a.synthetic, a.seg, real_data=a.real, out_dir=a.out, inception_weights=a.inception_weights,
                           split=a.split, overwrite=a.overwrite)
    return Path(r["out_dir"]) / "quality.md"


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
