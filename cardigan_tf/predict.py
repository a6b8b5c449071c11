"""``python -m cardigan_tf.predict --model MODEL INPUTS... --out DIR [--overwrite]``

Segment echocardiography images with a trained U-Net (console script ``cardigan-predict``):
masks in each input's format and geometry, overlays, ``predictions.csv`` and, for CAMUS
patients given with their four ED/ES frames, ``clinical.csv`` (EDV, ESV, EF). The work is
:func:`cardigan_tf.serving.predict.predict_files`; the model backends are in
:mod:`cardigan_tf.serving`.
"""

from __future__ import annotations

import argparse
import sys

from cardigan_tf import cli
from cardigan_tf.serving.errors import ServingError

EPILOG = """\
MODEL is one of
  EXPORT_DIR            an exported segmentation model, BASE/NAME (latest version) or BASE/NAME/VERSION
  RUN_DIR               a seg run folder (runs/seg-...): its best.keras through the run's resize chain;
                        a cv run (runs/cv-...): its fold ensemble; --model A --model B: one ensemble
  http://HOST:PORT/NAME a TF-Serving REST endpoint (optionally .../NAME/versions/N)
  grpc://HOST:PORT/NAME a TF-Serving gRPC endpoint (optionally .../NAME/versions/N)
Segmentation only: a GAN export (input 'mask', output 'image') is not a predict target; use
python -m cardigan_tf.generate or the GAN export's serving signature for synthesis.

INPUTS are .mhd/.mha (2-D, or 3-D with one slice), .nii/.nii.gz, .png (8-bit grey) or .npy files,
CAMUS patient folders (patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}.mhd or .nii.gz; *_gt files and
sequences are skipped), or folders of patient folders.

Outputs under --out: <stem>_mask.<ext> in the input's format, size, spacing, origin and
direction (patient folders mirrored), <stem>_overlay.png, predictions.csv (every input, its
outputs, status and error) and clinical.csv (patient, edv_ml, esv_ml, ef_percent, reason) for
CAMUS-named frames. A file that cannot be read or predicted is reported and skipped; the exit
status is 0 when at least one file was predicted, 2 otherwise.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.predict", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Segment echocardiography images (LV cavity, myocardium, left atrium) "
                                            "with an exported model, a seg run, or a TF-Serving endpoint.")
    p.add_argument("--model", required=True, action="append", metavar="MODEL",
                   help="EXPORT_DIR, RUN_DIR, http://host:port/NAME or grpc://host:port/NAME (see below); "
                        "repeat with run folders for their ensemble")
    p.add_argument("--tta", metavar="VIEWS", help="test-time views of a run folder's model, comma-separated (hflip, "
                                                  "gamma:G, contrast:C; 'none': none; default: a cv run's own)")
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files and/or CAMUS patient folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request to a server (default 10)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed request to a server (default 3)")
    p.add_argument("--rest-format", choices=("columns", "rows"), default="columns",
                   help="REST request format: columns (inputs/outputs) or rows (instances/predictions)")
    p.add_argument("--postprocess", action="store_true",
                   help="largest component per label + hole filling before writing and measuring")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> str:
    from cardigan_tf.serving.predict import (  # lazy: loads TensorFlow, which --help does not need
        check_output,
        collect_inputs,
        open_backend,
        predict_files,
    )

    if args.timeout <= 0 or args.retries < 0:
        raise cli.UsageError(f"--timeout must be > 0 and --retries >= 0, got {args.timeout} and {args.retries}")
    check_output(args.out, args.inputs, args.overwrite)  # before loading anything
    collect_inputs(args.inputs)
    try:
        backend = open_backend(args.model, timeout=args.timeout, retries=args.retries, fmt=args.rest_format,
                               tta=cli.tta_views(args.tta))
    except (ServingError, ValueError) as exc:  # not a segmentation model, server unreachable
        if isinstance(exc, cli.expected_errors()):
            raise
        raise cli.UsageError(str(exc)) from None
    result = predict_files(backend, args.inputs, args.out, args.overwrite,
                           progress=False if args.no_progress else None, postprocess=args.postprocess)
    print(f"predicted {result.n_ok} of {len(result.rows)} files"
          + (f" ({result.n_failed} skipped, see predictions.csv)" if result.n_failed else "")
          + (f"; clinical indices of {len(result.clinical)} patients" if result.clinical else ""), file=sys.stderr)
    if result.n_ok == 0:
        raise cli.UsageError(f"no input could be predicted ({result.n_failed} failed; see {result.out / 'predictions.csv'})")
    return str(result.out)


main = cli.entry(build_parser, run)

if __name__ == "__main__":
    sys.exit(main())
