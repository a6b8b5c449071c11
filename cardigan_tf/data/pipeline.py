"""tf.data pipelines: select, resize once, shuffle, mix real + synthetic, batch, augment, prefetch.

Sources: a seed-layout ``.h5`` file (held in memory), a dict of arrays like
:func:`cardigan_tf.data.h5layout.load_arrays` returns, or a TFRecord folder written by
:mod:`cardigan_tf.data.tfrecord` (streamed). Images and masks are resized to the working size
by :mod:`cardigan_tf.resize` (the one resize path): once up front in memory, per frame when
streamed.

:func:`make_dataset` chains the steps, each a function of its own:

1. frames: :func:`load_frames` (in memory) or :func:`stream_frames` (TFRecord), restricted to a
   :class:`Selection` of views, phases, qualities and patients;
2. order: without :class:`Training`, one pass in order (validation, test); with it, shuffled
   (seeded) and repeated forever, real and synthetic samples interleaved by a fixed pattern:
   among the first n samples of the stream exactly ``synthetic_samples(n, synthetic_fraction)``
   (floor of n times the fraction) are synthetic, so the real and synthetic samples a run sees
   are known exactly, not only in expectation;
3. batches: of the GLOBAL batch size; training keeps full batches only and starts
   ``skip_batches`` in (a resumed stream, without computing the skipped batches);
4. :func:`augment_batches` (training): each batch augmented as a whole with per-sample
   parameters and a stateless seed derived from ``(seed, batch index)``, so the stream is the
   same for the same seed;
5. :func:`finish`: labels (int32, or one-hot float32), options, prefetch.

With a ``strategy`` the dataset is returned undistributed, with its sharding policy set: by
file for a TFRecord split with at least one shard per ``TF_CONFIG`` worker, else by data (each
worker keeps its part of every global batch). Keras ``fit`` distributes it; a custom loop
calls ``strategy.experimental_distribute_dataset(ds)``.

Example::

    ds = make_dataset("phantom.h5", "train", size=64, batch_size=8, one_hot=True,
                      training=Training(seed=0, synthetic="camusx.h5", synthetic_fraction=0.5))
    images, masks = next(iter(ds))   # (8, 64, 64, 1) float32, (8, 64, 64, 4) float32
    valid = make_dataset("phantom.h5", "valid", size=64, batch_size=8,
                         select=Selection(views=["4CH"]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import tensorflow as tf

from cardigan_tf.data import h5layout, tfrecord
from cardigan_tf.data.augment import WARP_IMPLS, AugmentConfig, augment_batch
from cardigan_tf.data.sample import DataError, EmptyDatasetError
from cardigan_tf.labels import NUM_CLASSES, PHASES, QUALITIES, VIEWS
from cardigan_tf.resize import resize_image, resize_mask, resize_pairs_np
from cardigan_tf.runtime import worker_info

AUTOTUNE = tf.data.AUTOTUNE
Source = Any  # str | Path | dict[str, np.ndarray]
STREAM_SHUFFLE_BUFFER = 2048  # frames in the shuffle buffer of a streamed (TFRecord) training source
MAX_MIX_DENOMINATOR = 4096  # the synthetic share of a stream is this exact a fraction (synthetic_ratio)


# ----------------------------------------------------------------------------- options
def _check_choice(name: str, values: Iterable[str] | None, allowed: Iterable[str]) -> list[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown value(s) {bad}; expected some of {list(allowed)}")
    return values


@dataclass
class Selection:
    """Which frames of a split to keep; ``None`` keeps every value of that key."""

    views: list[str] | None = None
    phases: list[str] | None = None
    qualities: list[str] | None = None
    patients: list[str] | None = None

    def __post_init__(self):
        self.views = _check_choice("views", self.views, VIEWS)
        self.phases = _check_choice("phases", self.phases, PHASES)
        self.qualities = _check_choice("qualities", self.qualities, QUALITIES + ("",))
        if self.patients is not None:
            self.patients = [str(p) for p in ([self.patients] if isinstance(self.patients, str) else self.patients)]

    def items(self) -> list[tuple[str, list[str] | None]]:
        """(key of a frame, wanted values) for each key."""
        return [("view", self.views), ("phase", self.phases), ("quality", self.qualities), ("patient", self.patients)]

    def is_all(self) -> bool:
        return all(wanted is None for _, wanted in self.items())


@dataclass
class Training:
    """A training stream: shuffled (seeded), repeated forever, mixed, augmented, full batches.

    seed: of the shuffling, the mixing and the augmentation (the same seed, the same stream).
    augment: the augmentation of every batch; None: none.
    synthetic: a second source (``.h5``, dict, or a TFRecord folder when the real source is one
        too), its ``train`` split resized like the real data.
    synthetic_fraction: in [0, 1); share of synthetic samples in the stream (see
        :func:`synthetic_samples`); 0: ``synthetic`` unused.
    skip_batches: start the stream this many batches in (the stream of an uninterrupted run).
    warp_impl: the geometric warp of :func:`cardigan_tf.data.augment.augment_batch`.
    """

    seed: int = 0
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    synthetic: Source | None = None
    synthetic_fraction: float = 0.0
    skip_batches: int = 0
    warp_impl: str = "pillow"

    def __post_init__(self):
        if self.augment is not None:
            if not isinstance(self.augment, AugmentConfig):
                raise TypeError(f"augment: expected an AugmentConfig or None, got {type(self.augment).__name__}")
            self.augment.validate()
        f = float(self.synthetic_fraction)
        if not 0.0 <= f < 1.0:
            raise ValueError(f"synthetic_fraction: expected a value in [0, 1), got {self.synthetic_fraction}")
        if f > 0 and self.synthetic is None:
            raise ValueError(f"synthetic_fraction={f} needs a synthetic source (synthetic=...)")
        self.synthetic_fraction = f
        if not isinstance(self.skip_batches, (int, np.integer)) or self.skip_batches < 0:
            raise ValueError(f"skip_batches: expected an integer >= 0, got {self.skip_batches!r}")
        if self.warp_impl not in WARP_IMPLS:
            raise ValueError(f"warp_impl: expected one of {WARP_IMPLS}, got {self.warp_impl!r}")

    @property
    def mixed(self) -> bool:
        return self.synthetic_fraction > 0


# ----------------------------------------------------------------------------- the dataset
def make_dataset(
    source: Source,
    split: str = "train",
    *,
    size: int = 64,
    batch_size: int = 8,
    select: Selection | None = None,
    training: Training | None = None,
    one_hot: bool = False,
    strategy: Any = None,
) -> tf.data.Dataset:
    """Batches ``(image float32 (B, size, size, 1) in [0, 1], mask)`` of the ``select``-ed
    frames of ``split`` (a name, or several pooled: a cross-validation fold); mask int32 (B, size, size) or, with ``one_hot``, float32
    (B, size, size, NUM_CLASSES).

    training: None: one pass in order, the last batch kept, never mixed nor augmented
        (validation, test); a :class:`Training`: its stream (see there).
    batch_size: the global batch size (a multiple of the strategy's replicas).
    """
    splits = [split] if isinstance(split, str) else list(split)
    if not splits or any(s not in h5layout.SPLITS for s in splits):
        raise ValueError(f"split: unknown split {split!r}; expected one or several of {h5layout.SPLITS}")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size: expected an integer >= 8, got {size!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if strategy is not None and batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size: the global batch {batch_size} must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas of the strategy")
    if training is not None and not isinstance(training, Training):
        raise TypeError(f"training: expected a Training or None, got {training!r}")
    if select is not None and not isinstance(select, Selection):
        raise TypeError(f"select: expected a Selection or None, got {select!r}")
    select = Selection() if select is None else select
    if is_tfrecord_dir(source):
        ds = _streamed_batches(source, splits, size, batch_size, select, training)
        by_file = ((training is None or not training.mixed or is_tfrecord_dir(training.synthetic))
                   and len(splits) == 1 and _enough_files(source, splits[0], strategy))
    else:
        ds = _memory_batches(source, splits, size, batch_size, select, training)
        by_file = False
    if training is not None and training.augment is not None:
        ds = augment_batches(ds, training.augment, training.seed, training.skip_batches, training.warp_impl)
    return finish(ds, one_hot, strategy, shard_by_file=by_file)


# ----------------------------------------------------------------------------- 1. frames
def _filter_dict(arrays: dict[str, np.ndarray], where: str, select: Selection) -> dict[str, np.ndarray]:
    if "image" not in arrays or "mask" not in arrays:
        raise DataError(where, f"expected a dict with 'image' and 'mask' arrays, got keys {sorted(arrays)}")
    n = len(arrays["image"])
    keep = np.ones(n, bool)
    for key, wanted in select.items():
        if wanted is None:
            continue
        if key not in arrays:
            raise DataError(where, f"cannot filter by {key}: the dict has no {key!r} array")
        keep &= np.isin(np.asarray(arrays[key]).astype(str), [str(w) for w in wanted])
    if not keep.any():
        raise EmptyDatasetError(where, f"no sample matches views={select.views} phases={select.phases} "
                                       f"qualities={select.qualities} patients={select.patients}")
    return {k: (np.asarray(v)[keep] if np.ndim(v) and len(v) == n else v) for k, v in arrays.items()}


def load_source(source: Source, split: str | Iterable[str], select: Selection | None = None) -> dict[str, np.ndarray]:
    """Selected frames of an in-memory source (``.h5`` path or dict) as numpy arrays."""
    select = Selection() if select is None else select
    if isinstance(source, dict):
        return _filter_dict(source, "dict source", select)
    path = Path(source)
    if not path.exists():
        raise DataError(path, "file not found (expected a seed-layout .h5 file or a TFRecord folder)")
    return h5layout.load_arrays(path, split, views=select.views, phases=select.phases, qualities=select.qualities,
                                patients=select.patients)


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(arrays["image"]), np.asarray(arrays["mask"])
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[-1] != 1:
        raise DataError(where, f"image: expected (N, H, W) or (N, H, W, 1), got {image.shape}")
    if mask.shape != image.shape[:3]:
        raise DataError(where, f"mask: expected shape {image.shape[:3]} (same as the images), got {mask.shape}")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False), mask.astype(np.uint8, copy=False)


def resize_arrays(image: np.ndarray, mask: np.ndarray, size: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 1) images and (N, H, W) masks to (size, size) with :mod:`cardigan_tf.resize`
    (the one resize path: the same in training, evaluation, generation and serving)."""
    return resize_pairs_np(image, mask, size, chunk)


def load_frames(source: Source, split: str | Iterable[str], size: int, select: Selection | None = None,
                where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The selected frames of an in-memory source at the working size: images float32
    (N, size, size, 1) in [0, 1], masks uint8 (N, size, size). ``where`` names the source in
    errors (default: its path)."""
    if where is None:
        where = "dict source" if isinstance(source, dict) else str(source)
    return resize_arrays(*_check_arrays(load_source(source, split, select), where), size)


def stream_frames(directory, split: str | Iterable[str], size: int, select: Selection | None = None,
                  shuffle_files_seed: int | None = None) -> tf.data.Dataset:
    """The selected frames of a TFRecord split (or of several, one after the other), resized
    per frame: (image float32 (size, size, 1), mask uint8 (size, size)); its shards in a seeded
    random order when ``shuffle_files_seed`` is given, else in order."""
    select = Selection() if select is None else select
    ds = None
    for name in [split] if isinstance(split, str) else list(split):
        part = tfrecord.read_tfrecords(directory, name, shuffle_files=shuffle_files_seed is not None,
                                       seed=shuffle_files_seed or 0)
        ds = part if ds is None else ds.concatenate(part)
    for key, wanted in select.items():
        if wanted is not None:
            allowed = tf.constant([str(w) for w in wanted])
            ds = ds.filter(lambda d, k=key, a=allowed: tf.reduce_any(tf.equal(d[k], a)))
    return ds.map(lambda d: _resize_one(d["image"], d["mask"], size), num_parallel_calls=AUTOTUNE)


def _resize_one(image, mask, size):
    img = tf.ensure_shape(resize_image(image, size), [size, size, 1])
    msk = tf.ensure_shape(tf.cast(resize_mask(mask, size), tf.uint8), [size, size])
    return img, msk


def is_tfrecord_dir(source: Source) -> bool:
    return not isinstance(source, dict) and Path(source).is_dir()


# ----------------------------------------------------------------------------- 2.-3. order and batches
def _memory_batches(source, split, size, batch_size, select, training) -> tf.data.Dataset:
    """Batches of an in-memory source: indices are ordered and batched, then gathered."""
    image, mask = load_frames(source, split, size, select)
    n_real = len(image)
    if training is None:
        order = tf.data.Dataset.range(n_real)
    else:
        order = _shuffled(tf.data.Dataset.range(n_real), n_real, training.seed)
        if training.mixed:
            if is_tfrecord_dir(training.synthetic):
                raise ValueError("synthetic: a TFRecord folder can be mixed only into a TFRecord source; "
                                 "pass the synthetic set as a seed-layout .h5 file")
            s_img, s_msk = load_frames(training.synthetic, "train", size, where="synthetic source")
            image, mask = np.concatenate([image, s_img]), np.concatenate([mask, s_msk])
            n_syn = len(image) - n_real
            synthetic = _shuffled(tf.data.Dataset.range(n_real, n_real + n_syn), n_syn, training.seed + 1)
            order = _mixed(order, synthetic, training, stop_on_empty=True)
    bank_i, bank_m = tf.constant(image), tf.constant(mask)
    return _batched(order, batch_size, training).map(lambda i: (tf.gather(bank_i, i), tf.gather(bank_m, i)),
                                                     num_parallel_calls=AUTOTUNE)


def _streamed_batches(directory, split, size, batch_size, select, training) -> tf.data.Dataset:
    """Batches of a TFRecord source (shards in a seeded order and a shuffle buffer when training)."""
    if training is None:
        return _batched(stream_frames(directory, split, size, select), batch_size, None)
    ds = _shuffled(stream_frames(directory, split, size, select, shuffle_files_seed=training.seed),
                   STREAM_SHUFFLE_BUFFER, training.seed)
    if training.mixed:
        ds = _mixed(ds, _synthetic_frames(training.synthetic, size, training.seed + 1), training, stop_on_empty=False)
    return _batched(ds, batch_size, training)


def _synthetic_frames(source, size: int, seed: int) -> tf.data.Dataset:
    """The shuffled, repeated frames of a synthetic source mixed into a TFRecord source."""
    if is_tfrecord_dir(source):
        return _shuffled(stream_frames(source, "train", size, shuffle_files_seed=seed), STREAM_SHUFFLE_BUFFER, seed)
    image, mask = load_frames(source, "train", size, where="synthetic source")
    return _shuffled(tf.data.Dataset.from_tensor_slices((image, mask)), len(image), seed)


def _shuffled(ds: tf.data.Dataset, buffer: int, seed: int) -> tf.data.Dataset:
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()


def synthetic_ratio(fraction: float) -> Fraction:
    """The exact share of synthetic samples of a stream mixed at ``fraction``: the nearest
    fraction whose denominator is at most :data:`MAX_MIX_DENOMINATOR`."""
    return Fraction(float(fraction)).limit_denominator(MAX_MIX_DENOMINATOR)


def synthetic_samples(n_samples: int, fraction: float) -> int:
    """How many of the first ``n_samples`` samples of a training stream mixed at ``fraction``
    are synthetic (the rest are real)."""
    ratio = synthetic_ratio(fraction)
    return int(n_samples) * ratio.numerator // ratio.denominator


def _mixed(real: tf.data.Dataset, synthetic: tf.data.Dataset, training: Training, stop_on_empty: bool):
    """Sample i of the stream is synthetic when floor((i + 1) p) > floor(i p), p the ratio."""
    ratio = synthetic_ratio(training.synthetic_fraction)
    num, den = ratio.numerator, ratio.denominator
    choice = tf.data.Dataset.counter().map(lambda i: (i + 1) * num // den - i * num // den)
    return tf.data.Dataset.choose_from_datasets([real, synthetic], choice, stop_on_empty_dataset=stop_on_empty)


def _batched(ds: tf.data.Dataset, batch_size: int, training: Training | None) -> tf.data.Dataset:
    ds = ds.batch(batch_size, drop_remainder=training is not None)
    if training is not None and training.skip_batches:
        ds = ds.skip(int(training.skip_batches))
    return ds


# ----------------------------------------------------------------------------- 4.-5. augment and finish
def augment_batches(ds: tf.data.Dataset, cfg: AugmentConfig, seed: int, start: int = 0,
                    warp_impl: str = "pillow") -> tf.data.Dataset:
    """Augment every (images, masks) batch with :func:`cardigan_tf.data.augment.augment_batch`,
    seeded with ``(seed, batch index)``; ``start``: the index of the first batch."""
    return ds.enumerate(start=int(start)).map(
        lambda b, pair: augment_batch(pair[0], pair[1], tf.stack([tf.constant(seed, tf.int64), b]), cfg, warp_impl),
        num_parallel_calls=AUTOTUNE)


def finish(ds: tf.data.Dataset, one_hot: bool, strategy: Any = None, shard_by_file: bool = False) -> tf.data.Dataset:
    """Masks as int32 labels (or one-hot float32), deterministic order, sharding policy, prefetch."""
    def labels(image, mask):
        mask = tf.cast(mask, tf.int32)
        if one_hot:
            return image, tf.one_hot(mask, NUM_CLASSES, dtype=tf.float32)
        return image, mask

    ds = ds.map(labels, num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # No tf.data autotuning model: its background thread can hold up the iterator's destructor
    # (the end of ``fit``) for the rest of its optimisation period, up to a minute, while other
    # processes share the cores (docs/bench_pipeline.md). Parallel maps keep AUTOTUNE's default
    # width (the thread pool's size) and prefetch sizes its own buffer.
    options.autotune.enabled = False
    if strategy is not None:  # multi-worker: TFRecord shards by file when each worker gets one, else by data
        policy = tf.data.experimental.AutoShardPolicy
        options.experimental_distribute.auto_shard_policy = policy.FILE if shard_by_file else policy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)


def _enough_files(directory, split, strategy) -> bool:
    """Shard a TFRecord split by file across workers when every worker gets a file."""
    if strategy is None:
        return False
    workers = worker_info().num_workers
    return workers > 1 and len(tfrecord.list_shards(directory, split)) >= workers


# ----------------------------------------------------------------------------- info
def count_samples(source: Source, split: str | Iterable[str] = "train", **filters) -> int:
    """Frames of ``split`` an evaluation ``make_dataset`` pass yields (before batching);
    ``filters``: the fields of :class:`Selection`."""
    select = Selection(**filters)
    if is_tfrecord_dir(source):
        if select.is_all() and isinstance(split, str):
            return int(tfrecord.read_index(source)["splits"][split]["examples"])
        return int(sum(1 for _ in stream_frames(source, split, 8, select)))
    return len(load_source(source, split, select)["image"])


__all__ = ["make_dataset", "Selection", "Training", "load_source", "load_frames", "stream_frames", "resize_arrays",
           "augment_batches", "finish", "count_samples", "AugmentConfig"]
