"""Convert any CAMUS layout into the seed HDF5 layout (and optionally TFRecord shards).

The command is ``python -m cardigan_tf.prepare`` (:mod:`cardigan_tf.prepare`, its options).

``im`` and ``gt`` are resized to size x size by :mod:`cardigan_tf.resize` (images: exact area
averaging when shrinking, bilinear otherwise; masks: nearest with pixel centres), the same code
that training, evaluation and the exported models use; ``im_ref`` / ``gt_ref`` keep the original
resolution.
Splits are by patient: the official lists when present (2023 ``database_split``; 2019
``listSubGroups`` with ``--fold K``; the splits of an input HDF5), otherwise
``splits.seeded_split`` 80/10/10. 2019 ``testing/`` patients WITH ground truth (the full
release) are the official held-out test patients: they form the ``test`` split, and
``training/`` is split into ``train`` and ``valid`` only (the ``--fold K`` lists' training and
validation patients, the fold's own testing patients joining ``train``; without ``--fold`` a
seeded 8:1 split, ``splits.train_valid_split``). Patients without ground truth (2019
``testing/`` of the public release) go to the ``unlabelled`` group. The 2019 fold lists' held-out
(``subGroup{k}_testing``) patients are recorded in the root attribute ``official_folds`` (fold
number -> patients; carried over from an HDF5 input that has it), for cross-validation runs
(``splits.official_kfolds``). The file is written under a
temporary name and renamed at the end; the command prints the patients per split.
A source that records no pixel spacing (CREATIS' HDF5) is written with ``spacing_known`` False
and no spacing (:mod:`cardigan_tf.data.h5layout`): every later step reports its distances in px.
"""

from __future__ import annotations

import logging
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cardigan_tf.data import tfrecord
from cardigan_tf.data.camus import CamusDataset, read_camus
from cardigan_tf.data.h5layout import H5Writer, read_root_attrs
from cardigan_tf.data.sample import DataError, spacing_known
from cardigan_tf.data.splits import seeded_split, train_valid_split
from cardigan_tf.files import refuse_overwrite
from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.resize import resize_image_np, resize_mask_np

log = logging.getLogger(__name__)
_VIEW_ATTRS = ("group", "ed_frame", "es_frame", "nb_frames", "ef", "edv", "esv", "sex", "age", "frame_rate")


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


def official_folds(ds: CamusDataset) -> dict[str, list[str]]:
    """Fold number -> the patients that fold's list holds out (2019 ``subGroup{k}_testing``), or
    the ``official_folds`` an HDF5 input records; {} when there are none."""
    if ds.layout == "h5":
        recorded = read_root_attrs(ds.root).get("official_folds")
        return recorded if isinstance(recorded, dict) else {}
    return {str(k): list(ds.official[k].get("test", [])) for k in ds.folds()}


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
        im = np.stack([resize_image_np(x, size) for x in im_ref])
        gt = np.stack([resize_mask_np(x, size) for x in gt_ref]) if labelled else None
        files: dict[str, str] = {}
        for s in vs:
            files.update(s.meta.get("source_files") or {})
        meta = vs[0].meta
        attrs = {k: meta[k] for k in _VIEW_ATTRS if meta.get(k) is not None}
        attrs["source_layout"] = meta.get("source_layout") or layout
        attrs["frames"] = [s.meta.get("frame") for s in vs if s.meta.get("frame") is not None]
        known = all(spacing_known(s) for s in vs)  # an unknown spacing is written as none, never as (1, 1)
        w.write_view(split, vs[0].patient, view, im, gt, phases=[s.phase for s in vs], im_ref=im_ref, gt_ref=gt_ref,
                     spacing=vs[0].spacing if known else None, original_shape=vs[0].original_shape, quality=vs[0].quality,
                     cfg=meta.get("cfg") or {}, source_files=files, attrs=attrs)


def prepare(source: str | Path, out: str | Path, size: int = 256, fold: int | None = None, seed: int = 0,
            tfrecords: str | Path | None = None, shards: int = 1, skip_invalid: bool = False,
            overwrite: bool = False, tfrecord_dtype: str = "float32", progress: bool = True) -> Path:
    """Convert ``source`` (any CAMUS layout) into the seed HDF5 layout at ``out``; return ``out``."""
    out = Path(out)
    if int(size) < 1:
        raise ValueError(f"size: expected a positive integer, got {size}")
    refuse_overwrite(out, overwrite, "dataset")
    if tfrecords is not None:
        tfrecord.check_output_dir(tfrecords, overwrite)
    ds = read_camus(source, skip_invalid=skip_invalid)
    split_of, info = assign_splits(ds, fold, seed)
    ds.entries = [e for e in ds.entries if e.patient in split_of]
    attrs = {"source_layout": ds.layout, "source": str(Path(source).resolve()), "size": int(size),
             "split_method": info["split_method"], "fold": "" if fold is None else int(fold), "seed": int(seed),
             "interpolation_im": "area", "interpolation_gt": "nearest",
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    folds = official_folds(ds)
    if folds:
        attrs["official_folds"] = folds
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
    if not w.all_spacing_known:
        log.warning("%s records no pixel spacing: HD and MAD will be in pixels of the original grid (px) and "
                    "volumes are not reported", source)
    if tfrecords is not None:
        tfrecord.write_tfrecords(out, tfrecords, shards=shards, overwrite=overwrite, image_dtype=tfrecord_dtype)
    return out
