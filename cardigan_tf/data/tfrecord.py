"""Sharded TFRecord files for large or multi-worker runs (streamed, interleaved across shards).

Layout of a folder::

    DIR/{split}-{i:05d}-of-{n:05d}.tfrecord     one tf.train.Example per frame
    DIR/index.json                              format, image dtype, size, per-split files/counts

Each patient's frames go to one shard (patients dealt round-robin over the shards), so
file-level sharding across workers (``tf.data`` AUTO/FILE policy) never splits a patient.
Example features: ``image`` (raw bytes, uint8 or float32, (H, W)), ``mask`` (raw uint8 (H, W);
zeros when unlabelled), ``has_mask``, ``height``, ``width``, ``patient``, ``view``, ``phase``,
``split``, ``quality``, ``spacing`` (row, col mm of the original image), ``spacing_known`` (0
when the source recorded no spacing: ``spacing`` is then (1, 1) and distances are in pixels;
read as 1 from shards without the feature), ``original_shape``. ``index.json`` gives each split's
``spacing_known`` (every frame's) and the folder's.

Shards are written under temporary names and renamed only when every shard is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from cardigan_tf.data.h5layout import SPLITS, iter_samples as iter_h5_samples, list_patients
from cardigan_tf.data.sample import DataError, EmptyDatasetError, Sample, spacing_known
from cardigan_tf.files import OverwriteError, atomic_write_text
from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.units import SPACING_KNOWN, UNKNOWN_SPACING

FORMAT = "cardigan_tf/tfrecord"
INDEX = "index.json"
IMAGE_DTYPES = ("float32", "uint8")


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def check_output_dir(directory: str | Path, overwrite: bool = False) -> None:
    """Refuse a folder that already holds shards or an index unless ``overwrite``."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OverwriteError(f"{directory}: exists and is not a folder")
    if directory.is_dir() and not overwrite and ((directory / INDEX).exists() or any(directory.glob("*.tfrecord"))):
        raise OverwriteError(f"{directory}: TFRecord shards already exist; pass --overwrite to replace them")


def _bytes(v: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _ints(v: Iterable[int]):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))


def _floats(v: Iterable[float]):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))


def encode_example(sample, split: str, image_dtype: str = "float32") -> bytes:
    """One Sample -> serialized tf.train.Example."""
    img = sample.image[..., 0] if sample.image.ndim == 3 else sample.image
    if image_dtype == "uint8":
        raw = np.round(np.clip(img, 0, 1) * 255.0).astype(np.uint8)
    else:
        raw = np.asarray(img, np.float32)
    h, w = img.shape
    mask = sample.mask if sample.mask is not None else np.zeros((h, w), np.uint8)
    feats = {
        "image": _bytes(np.ascontiguousarray(raw).tobytes()),
        "mask": _bytes(np.ascontiguousarray(mask, np.uint8).tobytes()),
        "has_mask": _ints([sample.mask is not None]),
        "height": _ints([h]),
        "width": _ints([w]),
        "patient": _bytes(sample.patient.encode()),
        "view": _bytes(sample.view.encode()),
        "phase": _bytes(sample.phase.encode()),
        "split": _bytes(split.encode()),
        "quality": _bytes((sample.quality or "").encode()),
        "spacing": _floats(sample.spacing),
        SPACING_KNOWN: _ints([spacing_known(sample)]),
        "original_shape": _ints(sample.original_shape),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecords(source: str | Path, directory: str | Path, shards: int = 1, splits: Iterable[str] | None = None,
                    overwrite: bool = False, image_dtype: str = "float32", progress: bool = True) -> dict[str, list[Path]]:
    """Write the frames of a seed-layout .h5 (working resolution) as sharded TFRecords.

    Returns split -> list of shard paths. Splits absent from the file are not written.
    """
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image_dtype {image_dtype!r} not one of {IMAGE_DTYPES}")
    if int(shards) < 1:
        raise ValueError(f"shards: expected at least 1, got {shards}")
    directory = Path(directory)
    check_output_dir(directory, overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    present = list_patients(source)
    want = [s for s in (splits or SPLITS) if s in present and present[s]]
    if not want:
        raise EmptyDatasetError(source, f"no patient in splits {list(splits or SPLITS)}")
    n = int(shards)
    shard_of = {(s, p): i % n for s in want for i, p in enumerate(present[s])}
    tmp_of = {(s, i): directory / f".{shard_name(s, i, n)}.tmp-{os.getpid()}" for s in want for i in range(n)}
    writers = {k: tf.io.TFRecordWriter(str(p)) for k, p in tmp_of.items()}
    counts = {s: 0 for s in want}
    known = {s: True for s in want}
    sizes: set[tuple[int, ...]] = set()
    try:
        total = sum(len(present[s]) for s in want) * 4
        for split, sample in tqdm(iter_h5_samples(source, want), total=total, desc="tfrecord", unit="frame",
                                  disable=not progress, leave=False):
            writers[(split, shard_of[(split, sample.patient)])].write(encode_example(sample, split, image_dtype))
            counts[split] += 1
            known[split] &= spacing_known(sample)
            sizes.add(sample.image.shape[:2])
        for wr in writers.values():
            wr.close()
        written: dict[str, list[Path]] = {}
        for s in want:
            for old in directory.glob(f"{s}-*-of-*.tfrecord"):
                old.unlink()
            written[s] = []
            for i in range(n):
                final = directory / shard_name(s, i, n)
                os.replace(tmp_of[(s, i)], final)
                written[s].append(final)
    finally:
        for wr in writers.values():
            try:
                wr.close()
            except Exception:  # noqa: BLE001 - already closed
                pass
        for p in tmp_of.values():
            if p.exists():
                p.unlink()
    index = {
        "format": FORMAT, "version": 1, "source": str(source), "image_dtype": image_dtype,
        "size": list(next(iter(sizes))) if len(sizes) == 1 else None,
        SPACING_KNOWN: all(known.values()),
        "splits": {s: {"shards": n, "files": [p.name for p in written[s]], "examples": counts[s],
                       "patients": len(present[s]), SPACING_KNOWN: known[s]} for s in want},
    }
    atomic_write_text(directory / INDEX, json.dumps(index, indent=2) + "\n")
    return written


def read_index(directory: str | Path) -> dict:
    path = Path(directory) / INDEX
    if not path.is_file():
        raise DataError(path, "missing index.json (expected a folder written by write_tfrecords)")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise DataError(path, f"format: expected {FORMAT!r}, got {index.get('format')!r}")
    return index


def list_shards(directory: str | Path, split: str) -> list[str]:
    index = read_index(directory)
    if split not in index["splits"]:
        raise EmptyDatasetError(Path(directory) / INDEX, f"no split {split!r} (have {sorted(index['splits'])})")
    files = [Path(directory) / f for f in index["splits"][split]["files"]]
    for f in files:
        if not f.is_file():
            raise DataError(f, "missing TFRecord shard listed in index.json")
    return [str(f) for f in files]


def read_tfrecords(directory: str | Path, split: str = "train", *, shuffle_files: bool = False, seed: int = 0,
                   cycle_length: int | None = None, deterministic: bool = True):
    """Stream one split as a ``tf.data.Dataset`` of dicts.

    Keys: ``image`` float32 (H, W, 1) in [0, 1]; ``mask`` uint8 (H, W); ``has_mask`` bool;
    ``patient``, ``view``, ``phase``, ``split``, ``quality`` (tf.string); ``spacing`` float32 (2,);
    ``spacing_known`` bool; ``original_shape`` int64 (2,). Shards are read interleaved
    (``cycle_length`` at a time).
    """
    index = read_index(directory)
    files = list_shards(directory, split)
    as_uint8 = index.get("image_dtype") == "uint8"
    size = index.get("size")
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string), "mask": tf.io.FixedLenFeature([], tf.string),
        "has_mask": tf.io.FixedLenFeature([], tf.int64), "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64), "patient": tf.io.FixedLenFeature([], tf.string),
        "view": tf.io.FixedLenFeature([], tf.string), "phase": tf.io.FixedLenFeature([], tf.string),
        "split": tf.io.FixedLenFeature([], tf.string), "quality": tf.io.FixedLenFeature([], tf.string),
        "spacing": tf.io.FixedLenFeature([2], tf.float32), "original_shape": tf.io.FixedLenFeature([2], tf.int64),
        SPACING_KNOWN: tf.io.FixedLenFeature([], tf.int64, default_value=1),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        shape = tf.stack([ex["height"], ex["width"]])
        if as_uint8:
            image = tf.cast(tf.io.decode_raw(ex["image"], tf.uint8), tf.float32) / 255.0
        else:
            image = tf.io.decode_raw(ex["image"], tf.float32)
        image = tf.reshape(image, tf.concat([shape, [1]], 0))
        mask = tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), shape)
        if size:
            image = tf.ensure_shape(image, [size[0], size[1], 1])
            mask = tf.ensure_shape(mask, [size[0], size[1]])
        out = {k: ex[k] for k in ("patient", "view", "phase", "split", "quality", "spacing", "original_shape")}
        out.update(image=image, mask=mask, has_mask=ex["has_mask"] > 0)
        out[SPACING_KNOWN] = ex[SPACING_KNOWN] > 0
        return out

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length or min(len(files), 8), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def to_pairs(ds, mask_dtype=None):
    """Dataset of dicts (from :func:`read_tfrecords`) -> ``(image float32 (H,W,1), mask int32 (H,W))``."""
    dtype = mask_dtype or tf.int32
    return ds.map(lambda d: (d["image"], tf.cast(d["mask"], dtype)), num_parallel_calls=tf.data.AUTOTUNE)


def iter_samples(directory: str | Path, splits: Iterable[str] | None = None, views: Iterable[str] | None = None,
                 phases: Iterable[str] | None = None) -> Iterator[tuple[str, Sample]]:
    """Yield ``(split, Sample)`` for every frame of the folder's splits (those present of
    ``splits``), at the stored size, in shard order; ``meta`` holds ``split``,
    ``spacing_known``, ``has_mask`` and ``source_layout`` "tfrecord"."""
    index = read_index(directory)
    want_views = set(views) if views is not None else set(VIEWS)
    want_phases = set(phases) if phases is not None else set(PHASES)
    for split in [s for s in (splits or SPLITS) if s in index["splits"]]:
        for ex in read_tfrecords(directory, split).as_numpy_iterator():
            view, phase = ex["view"].decode(), ex["phase"].decode()
            if view not in want_views or phase not in want_phases:
                continue
            known = bool(ex[SPACING_KNOWN])
            yield split, Sample(
                image=np.asarray(ex["image"], np.float32), mask=ex["mask"] if ex["has_mask"] else None,
                patient=ex["patient"].decode(), view=view, phase=phase,
                spacing=tuple(float(str(v)) for v in ex["spacing"]) if known else UNKNOWN_SPACING,  # float32's shortest decimal
                original_shape=tuple(int(v) for v in ex["original_shape"]), quality=ex["quality"].decode(),
                meta={"split": split, SPACING_KNOWN: known, "has_mask": bool(ex["has_mask"]),
                      "source_layout": "tfrecord", "cfg": {}})
