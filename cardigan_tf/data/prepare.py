"""Convert any CAMUS layout into the seed HDF5 layout (and optionally TFRecord shards).

Usage::

    python -m cardigan_tf.data.prepare --source CAMUS_DIR --out camus_256.h5 [--size 256]
        [--fold K] [--seed S] [--tfrecords DIR --shards N] [--skip-invalid] [--overwrite]
    python -m cardigan_tf.data.prepare --phantom --patients N --out phantom.h5 [--size] [--seed]

``im`` is resized to size x size by exact area averaging (each output pixel is the
area-weighted mean of the input pixels it covers; correct for non-square inputs), ``gt`` by
nearest neighbour (half-pixel centres); ``im_ref`` / ``gt_ref`` keep the original resolution.
Splits are by patient: the official lists when present (2023 ``database_split``; 2019
``listSubGroups`` with ``--fold K``; the splits of an input HDF5), otherwise
``splits.seeded_split`` 80/10/10. 2019 ``testing/`` patients WITH ground truth (the full
release) are the official held-out test patients: they form the ``test`` split, and
``training/`` is split into ``train`` and ``valid`` only (the ``--fold K`` lists' training and
validation patients, the fold's own testing patients joining ``train``; without ``--fold`` a
seeded 8:1 split, ``splits.train_valid_split``). Patients without ground truth (2019
``testing/`` of the public release) go to the ``unlabelled`` group. The file is written under a
temporary name and renamed at the end; the command prints the patients per split.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cardigan_tf.data.camus import CamusDataset, read_camus
from cardigan_tf.data.h5layout import H5Writer, list_patients, read_root_attrs
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.splits import seeded_split, train_valid_split
from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.runs import refuse_overwrite

log = logging.getLogger(__name__)
_VIEW_ATTRS = ("group", "ed_frame", "es_frame", "nb_frames", "ef", "edv", "esv", "sex", "age", "frame_rate")


@functools.lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int):
    """Sparse (n_out, n_in) weights: overlap of output cell i with input pixel j, rows summing to 1."""
    from scipy import sparse

    scale = n_in / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * scale
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)
    return sparse.csr_matrix(np.clip(overlap, 0.0, None) / scale)


def resize_area(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-average resize of a 2-D float image to ``shape`` (rows, cols); float32."""
    image = np.asarray(image, np.float64)
    rows = _area_matrix(image.shape[0], int(shape[0])) @ image  # (h, W)
    out = (_area_matrix(image.shape[1], int(shape[1])) @ rows.T).T  # (h, w)
    return np.asarray(out, np.float32)


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label mask (half-pixel centres)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def assign_splits(ds: CamusDataset, fold: int | None = None, seed: int = 0) -> tuple[dict[str, str], dict[str, Any]]:
    """patient -> split for every patient of ``ds`` that will be written, plus a description."""
    labelled = [e.patient for e in ds.entries if e.labelled]
    split_of = {e.patient: "unlabelled" for e in ds.entries if not e.labelled}
    info: dict[str, Any] = {"fold": fold, "seed": seed, "unlisted": [], "missing_listed": []}
    if ds.layout == "h5":
        if fold is not None:
            raise DataError(ds.root, f"--fold {fold}: an HDF5 input keeps its own splits (folds are for the 2019 lists)")
        split_of = {e.patient: e.group for e in ds.entries}
        info["split_method"] = "source_h5"
        return split_of, info
    if fold is not None and ds.layout != "camus2019":
        raise DataError(ds.root, f"--fold {fold}: only the 2019 release has fold lists (listSubGroups/subGroup{{k}}_*.txt)")
    official_test = official_test_patients(ds)
    if official_test:
        return _assign_with_official_test(ds, official_test, fold, seed, split_of, info)
    lists = ds.official_split(fold) if fold is not None else ds.official.get(None)
    if lists is None:
        if ds.folds():
            msg = f"{ds.root}: fold lists found ({ds.folds()}) but no --fold given: using a seeded 80/10/10 split"
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)
        split_of.update({p: s for s, pats in seeded_split(labelled, seed).items() for p in pats})
        info["split_method"] = f"seeded:{seed}"
        return split_of, info
    listed: dict[str, str] = {}
    for split, pats in lists.items():
        for p in pats:
            if listed.get(p, split) != split:
                raise DataError(ds.root, f"patient {p} is in both the {listed[p]} and {split} official lists")
            listed[p] = split
    present = set(labelled)
    for p in labelled:
        if p in listed:
            split_of[p] = listed[p]
        else:
            info["unlisted"].append(p)
    info["missing_listed"] = sorted(set(listed) - present - set(split_of))
    _warn_lists(ds, info)
    info["split_method"] = "official" if fold is None else f"official:fold{fold}"
    return split_of, info


def official_test_patients(ds: CamusDataset) -> list[str]:
    """The 2019 ``testing/`` patients that have ground truth (the official held-out test set of
    the full release); empty for other layouts and for the public release's unlabelled testing/."""
    if ds.layout != "camus2019":
        return []
    return [e.patient for e in ds.entries if e.group == "testing" and e.labelled]


def _assign_with_official_test(ds: CamusDataset, test: list[str], fold: int | None, seed: int,
                               split_of: dict[str, str], info: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """2019 with labelled testing/: test = those patients; training/ -> train + valid."""
    test_set = set(test)
    trainable = [e.patient for e in ds.entries if e.labelled and e.patient not in test_set]
    split_of.update({p: "test" for p in test})
    info["official_test"] = len(test)
    if fold is None:
        if ds.folds():
            msg = (f"{ds.root}: fold lists found ({ds.folds()}) but no --fold given: testing/ is the test split, "
                   "training/ gets a seeded train/valid split")
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)
        split_of.update({p: s for s, pats in train_valid_split(trainable, seed).items() for p in pats})
        info["split_method"] = f"official_test+seeded:{seed}"
        return split_of, info
    lists = ds.official_split(fold)
    listed: dict[str, str] = {}
    for split, pats in lists.items():
        for p in pats:
            if listed.get(p, split) != split:
                raise DataError(ds.root, f"patient {p} is in both the {listed[p]} and {split} lists of fold {fold}")
            listed[p] = split
    clash = sorted(p for p in listed if p in test_set)
    if clash:
        msg = (f"{ds.root}: {len(clash)} patients of the fold {fold} lists are official test patients (testing/ with "
               f"ground truth) and stay in test: {clash[:10]}")
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
    moved = []
    for p in trainable:
        if p not in listed:
            info["unlisted"].append(p)
        elif listed[p] == "valid":
            split_of[p] = "valid"
        else:  # the fold's training and (cross-validation) testing patients both train
            split_of[p] = "train"
            if listed[p] == "test":
                moved.append(p)
    info["fold_test_in_train"] = moved
    info["missing_listed"] = sorted(set(listed) - set(trainable) - test_set)
    if moved:
        log.info("fold %d: its %d testing-list patients join train (the official testing/ patients are the test split)",
                 fold, len(moved))
    _warn_lists(ds, info)
    info["split_method"] = f"official_test+official:fold{fold}"
    return split_of, info


def _warn_lists(ds: CamusDataset, info: dict[str, Any]) -> None:
    for key, what in (("unlisted", "labelled patients in no official list (not written)"),
                      ("missing_listed", "listed patients not found in the source")):
        if info[key]:
            msg = f"{ds.root}: {len(info[key])} {what}: {info[key][:10]}"
            log.warning(msg)
            warnings.warn(msg, stacklevel=4)


def split_summary(counts: dict[str, list[str]], method: str) -> str:
    """Lines "train: 360 patients (patient0001 ... patient0450)" per split, then the method."""
    lines = []
    for split in ("train", "valid", "test", "unlabelled"):
        pats = counts.get(split, [])
        if not pats:
            continue
        shown = " ".join(pats) if len(pats) <= 4 else f"{' '.join(pats[:3])} ... {pats[-1]}"
        lines.append(f"{split}: {len(pats)} patients ({shown})")
    lines.append(f"split method: {method}")
    return "\n".join(lines)


def _write_patient(w: H5Writer, split: str, samples, size: int, layout: str) -> None:
    for view in VIEWS:
        vs = sorted((s for s in samples if s.view == view), key=lambda s: PHASES.index(s.phase))
        shapes = {s.image.shape for s in vs}
        if len(shapes) != 1:
            where = next(iter(vs[0].meta.get("source_files") or {}), vs[0].patient)
            raise DataError(where, f"{view}: ED and ES images differ in shape {sorted(shapes)}", patient=vs[0].patient)
        labelled = all(s.mask is not None for s in vs)
        im_ref = np.stack([s.image[..., 0] for s in vs])
        gt_ref = np.stack([s.mask for s in vs]) if labelled else None
        im = np.clip(np.stack([resize_area(x, (size, size)) for x in im_ref]), 0.0, 1.0)
        gt = np.stack([resize_nearest(x, (size, size)) for x in gt_ref]) if labelled else None
        files: dict[str, str] = {}
        for s in vs:
            files.update(s.meta.get("source_files") or {})
        meta = vs[0].meta
        attrs = {k: meta[k] for k in _VIEW_ATTRS if meta.get(k) is not None}
        attrs["source_layout"] = meta.get("source_layout") or layout
        attrs["frames"] = [s.meta.get("frame") for s in vs if s.meta.get("frame") is not None]
        w.write_view(split, vs[0].patient, view, im, gt, phases=[s.phase for s in vs], im_ref=im_ref, gt_ref=gt_ref,
                     spacing=vs[0].spacing, original_shape=vs[0].original_shape, quality=vs[0].quality,
                     cfg=meta.get("cfg") or {}, source_files=files, attrs=attrs)


def prepare(source: str | Path, out: str | Path, size: int = 256, fold: int | None = None, seed: int = 0,
            tfrecords: str | Path | None = None, shards: int = 1, skip_invalid: bool = False,
            overwrite: bool = False, tfrecord_dtype: str = "float32", progress: bool = True) -> Path:
    """Convert ``source`` (any CAMUS layout) into the seed HDF5 layout at ``out``; return ``out``."""
    from tqdm import tqdm

    out = Path(out)
    if int(size) < 1:
        raise ValueError(f"size: expected a positive integer, got {size}")
    refuse_overwrite(out, overwrite, "dataset")
    if tfrecords is not None:
        from cardigan_tf.data import tfrecord

        tfrecord.check_output_dir(tfrecords, overwrite)
    ds = read_camus(source, skip_invalid=skip_invalid)
    split_of, info = assign_splits(ds, fold, seed)
    ds.entries = [e for e in ds.entries if e.patient in split_of]
    attrs = {"source_layout": ds.layout, "source": str(Path(source).resolve()), "size": int(size),
             "split_method": info["split_method"], "fold": "" if fold is None else int(fold), "seed": int(seed),
             "interpolation_im": "area", "interpolation_gt": "nearest",
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    counts: dict[str, int] = {}
    with H5Writer(out, attrs=attrs, overwrite=overwrite) as w:
        bar = tqdm(total=len(ds.entries), desc="prepare", unit="patient", disable=not progress, file=sys.stderr)
        for entry, samples in ds.iter_patients():
            split = split_of[entry.patient]
            _write_patient(w, split, samples, int(size), ds.layout)
            counts[split] = counts.get(split, 0) + 1
            bar.update(1)
        bar.close()
        w.set_attrs({"n_skipped": len(ds.skipped), "skipped": ds.skipped, "n_patients": counts,
                     "unlisted": info["unlisted"], "missing_listed": info["missing_listed"],
                     "fold_test_in_train": info.get("fold_test_in_train", [])})
    log.info("wrote %s: %s patients per split, %d skipped", out, counts, len(ds.skipped))
    if tfrecords is not None:
        tfrecord.write_tfrecords(out, tfrecords, shards=shards, overwrite=overwrite, image_dtype=tfrecord_dtype)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="CAMUS folder (2019 or 2023 release) or seed-layout .h5")
    p.add_argument("--phantom", action="store_true", help="write the built-in phantom instead of converting")
    p.add_argument("--patients", type=int, default=50, help="phantom patients (with --phantom)")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.phantom:
            from cardigan_tf.data import phantom

            path = phantom.write_h5(args.out, n_patients=args.patients, seed=args.seed, size=args.size,
                                    overwrite=args.overwrite)
            if args.tfrecords:
                from cardigan_tf.data import tfrecord

                tfrecord.write_tfrecords(path, args.tfrecords, shards=args.shards, overwrite=args.overwrite,
                                         image_dtype=args.tfrecord_dtype)
        else:
            if not args.source:
                build_parser().error("--source is required (or --phantom)")
            path = prepare(args.source, args.out, size=args.size, fold=args.fold, seed=args.seed,
                           tfrecords=args.tfrecords, shards=args.shards, skip_invalid=args.skip_invalid,
                           overwrite=args.overwrite, tfrecord_dtype=args.tfrecord_dtype,
                           progress=not args.no_progress)
    except (DataError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(split_summary(list_patients(path), read_root_attrs(path).get("split_method", "?")))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
