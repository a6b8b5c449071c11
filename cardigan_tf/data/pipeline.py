"""tf.data pipelines: select, resize once, shuffle, mix real + synthetic, batch, augment, prefetch.

Sources: a seed-layout ``.h5`` file (held in memory), a dict of arrays like
:func:`cardigan_tf.data.h5layout.load_arrays` returns, or a TFRecord folder written by
:mod:`cardigan_tf.data.tfrecord` (streamed). Images and masks are resized once up front to the working
size by :mod:`cardigan_tf.resize` (the one resize path).

Training (``training=True``): shuffled (seeded), repeated, mixed with a synthetic source so that
each sample is synthetic with probability ``synthetic_fraction`` (the expected share of
synthetic samples in every batch), batched, then augmented as a whole batch with per-sample
parameters and a stateless seed derived from ``(seed, batch index)``: the stream is the same for
the same seed (``skip_batches`` resumes it cheaply). Validation/test: in order, one pass, never
mixed nor augmented.

Batch size is the GLOBAL batch size. With a ``strategy`` the dataset is returned undistributed,
with its sharding policy set: by file for a TFRecord split with at least one shard per
``TF_CONFIG`` worker, else by data (each worker keeps its part of every global batch). Keras
``fit`` distributes it; a custom loop calls
``strategy.experimental_distribute_dataset(ds)``.

Example::

    ds = make_dataset("phantom.h5", "train", size=64, batch_size=8, training=True,
                      synthetic="camusx.h5", synthetic_fraction=0.5, one_hot=True)
    images, masks = next(iter(ds))   # (8, 64, 64, 1) float32, (8, 64, 64, 4) float32
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import tensorflow as tf

from cardigan_tf.data import h5layout
from cardigan_tf.data.augment import AugmentConfig, augment_batch
from cardigan_tf.data.sample import DataError, EmptyDatasetError
from cardigan_tf.labels import NUM_CLASSES, PHASES, QUALITIES, VIEWS
from cardigan_tf.resize import resize_image, resize_mask, resize_pairs_np

AUTOTUNE = tf.data.AUTOTUNE
Source = Any  # str | Path | dict[str, np.ndarray]


# ----------------------------------------------------------------------------- loading
def _check_choice(name: str, values: Iterable[str] | None, allowed: Iterable[str]) -> list[str] | None:
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown value(s) {bad}; expected some of {list(allowed)}")
    return values


def _filter_dict(arrays: dict[str, np.ndarray], where: str, views, phases, qualities, patients) -> dict[str, np.ndarray]:
    if "image" not in arrays or "mask" not in arrays:
        raise DataError(where, f"expected a dict with 'image' and 'mask' arrays, got keys {sorted(arrays)}")
    n = len(arrays["image"])
    keep = np.ones(n, bool)
    for key, wanted in (("view", views), ("phase", phases), ("quality", qualities), ("patient", patients)):
        if wanted is None:
            continue
        if key not in arrays:
            raise DataError(where, f"cannot filter by {key}: the dict has no {key!r} array")
        keep &= np.isin(np.asarray(arrays[key]).astype(str), [str(w) for w in wanted])
    if not keep.any():
        raise EmptyDatasetError(where, f"no sample matches views={views} phases={phases} qualities={qualities} patients={patients}")
    return {k: (np.asarray(v)[keep] if np.ndim(v) and len(v) == n else v) for k, v in arrays.items()}


def load_source(source: Source, split: str | Iterable[str], views=None, phases=None, qualities=None,
                patients=None) -> dict[str, np.ndarray]:
    """Selected frames of an in-memory source (``.h5`` path or dict) as numpy arrays."""
    if isinstance(source, dict):
        return _filter_dict(source, "dict source", views, phases, qualities, patients)
    path = Path(source)
    if not path.exists():
        raise DataError(path, "file not found (expected a seed-layout .h5 file or a TFRecord folder)")
    return h5layout.load_arrays(path, split, views=views, phases=phases, qualities=qualities, patients=patients)


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


def _augment_config(augment: Any, training: bool) -> AugmentConfig | None:
    if not training or augment is False:
        return None
    if augment is None or augment is True:
        return AugmentConfig()
    if isinstance(augment, dict):
        augment = AugmentConfig(**augment)
    if not isinstance(augment, AugmentConfig):
        raise TypeError(f"augment: expected an AugmentConfig, a dict, True/False or None, got {type(augment).__name__}")
    augment.validate()
    return augment


def _is_tfrecord_dir(source: Source) -> bool:
    return not isinstance(source, dict) and Path(source).is_dir()


# ----------------------------------------------------------------------------- dataset
def make_dataset(
    source: Source,
    split: str = "train",
    *,
    size: int = 64,
    batch_size: int = 8,
    training: bool = False,
    augment: AugmentConfig | dict | bool | None = None,
    one_hot: bool = False,
    synthetic: Source | None = None,
    synthetic_fraction: float = 0.0,
    seed: int = 0,
    views: Iterable[str] | None = None,
    phases: Iterable[str] | None = None,
    qualities: Iterable[str] | None = None,
    patients: Iterable[str] | None = None,
    repeat: int | None = None,
    drop_remainder: bool | None = None,
    strategy: Any = None,
    deterministic: bool = True,
    skip_batches: int = 0,
) -> tf.data.Dataset:
    """Batches ``(image float32 (B, size, size, 1) in [0, 1], mask)``; mask int32 (B, size, size)
    or, with ``one_hot``, float32 (B, size, size, 4).

    training: shuffle, repeat (``repeat`` epochs; None = forever), mix in ``synthetic`` and
        augment (``augment``: None/True = default AugmentConfig, False = none). Validation and
        test (training=False) are one ordered pass (``repeat`` epochs if given), unmixed,
        unaugmented; ``synthetic`` and ``augment`` are ignored there with a warning.
    synthetic_fraction: in [0, 1); expected share of synthetic samples per training batch
        (each sample is drawn from the synthetic source with this probability). 0 = no
        synthetic source at all. The synthetic source's ``train`` split is used, resized to
        ``size`` like the real data.
    batch_size: global batch size (must divide evenly by the strategy's replicas).
    drop_remainder: default True for training, False otherwise.
    skip_batches: start a training stream this many batches in (same stream as an
        uninterrupted run, without computing the skipped batches).
    """
    if split not in h5layout.SPLITS:
        raise ValueError(f"split: unknown split {split!r}; expected one of {h5layout.SPLITS}")
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size: expected an integer >= 8, got {size!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    f = float(synthetic_fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"synthetic_fraction: expected a value in [0, 1), got {synthetic_fraction}")
    if f > 0 and synthetic is None:
        raise ValueError(f"synthetic_fraction={f} needs a synthetic source (synthetic=...)")
    if repeat is not None and (int(repeat) < 1):
        raise ValueError(f"repeat: expected a positive number of epochs or None, got {repeat}")
    views = _check_choice("views", views, VIEWS)
    phases = _check_choice("phases", phases, PHASES)
    qualities = _check_choice("qualities", qualities, QUALITIES + ("",))
    patients = None if patients is None else [str(p) for p in ([patients] if isinstance(patients, str) else patients)]
    if strategy is not None and batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size: the global batch {batch_size} must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas of the strategy")
    if not training and (f > 0 or augment not in (None, False)):
        warnings.warn(f"make_dataset({split!r}, training=False): synthetic mixing and augmentation are "
                      "training-only and are ignored", stacklevel=2)
        f = 0.0
    cfg = _augment_config(augment, training)
    if drop_remainder is None:
        drop_remainder = bool(training)
    filters = dict(views=views, phases=phases, qualities=qualities, patients=patients)

    if _is_tfrecord_dir(source):
        ds = _stream_tfrecords(source, split, size, training, seed, deterministic, **filters)
        if f > 0:
            syn = _stream_or_memory(synthetic, size, seed + 1, deterministic)
            ds = tf.data.Dataset.sample_from_datasets([ds, syn], weights=[1.0 - f, f], seed=seed,
                                                      stop_on_empty_dataset=False)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if skip_batches:
            ds = ds.skip(int(skip_batches))
        return _finish(ds, cfg, one_hot, seed, training, repeat, strategy, deterministic, skip_batches,
                       shard_by_file=(f == 0 or _is_tfrecord_dir(synthetic)) and _enough_files(source, split, strategy))

    arrays = load_source(source, split, **filters)
    image, mask = resize_arrays(*_check_arrays(arrays, str(source) if not isinstance(source, dict) else "dict source"), size)
    n_real = len(image)
    if f > 0:
        if _is_tfrecord_dir(synthetic):
            raise ValueError("synthetic: a TFRecord folder can be mixed only into a TFRecord source; "
                             "pass the synthetic set as a seed-layout .h5 file")
        syn = load_source(synthetic, "train")
        s_img, s_msk = resize_arrays(*_check_arrays(syn, "synthetic source"), size)
        image, mask = np.concatenate([image, s_img]), np.concatenate([mask, s_msk])
    bank_i, bank_m = tf.constant(image), tf.constant(mask)

    if training:
        idx = tf.data.Dataset.range(n_real).shuffle(n_real, seed=seed, reshuffle_each_iteration=True)
        idx = idx.repeat(repeat)
        if f > 0:
            n_syn = len(image) - n_real
            sidx = tf.data.Dataset.range(n_real, n_real + n_syn).shuffle(n_syn, seed=seed + 1,
                                                                         reshuffle_each_iteration=True).repeat()
            idx = tf.data.Dataset.sample_from_datasets([idx, sidx], weights=[1.0 - f, f], seed=seed,
                                                       stop_on_empty_dataset=True)
    else:
        idx = tf.data.Dataset.range(n_real)
        if repeat:
            idx = idx.repeat(repeat)
    ds = idx.batch(batch_size, drop_remainder=drop_remainder)
    if skip_batches:
        ds = ds.skip(int(skip_batches))
    ds = ds.map(lambda i: (tf.gather(bank_i, i), tf.gather(bank_m, i)), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    return _finish(ds, cfg, one_hot, seed, training, None, strategy, deterministic, skip_batches)


def _enough_files(directory, split, strategy) -> bool:
    """Shard a TFRecord split by file across workers when every worker gets a file."""
    if strategy is None:
        return False
    from cardigan_tf.data import tfrecord
    from cardigan_tf.runtime import worker_info

    workers = worker_info().num_workers
    return workers > 1 and len(tfrecord.list_shards(directory, split)) >= workers


def _finish(ds, cfg, one_hot, seed, training, repeat, strategy, deterministic, start,
            shard_by_file=False) -> tf.data.Dataset:
    if cfg is not None:
        ds = ds.enumerate(start=int(start)).map(
            lambda b, pair: augment_batch(pair[0], pair[1], tf.stack([tf.constant(seed, tf.int64), b]), cfg),
            num_parallel_calls=AUTOTUNE, deterministic=deterministic)

    def fmt(image, mask):
        mask = tf.cast(mask, tf.int32)
        if one_hot:
            return image, tf.one_hot(mask, NUM_CLASSES, dtype=tf.float32)
        return image, mask

    ds = ds.map(fmt, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    # No tf.data autotuning model: its background thread made the iterator's destructor wait for
    # the rest of its optimisation period (up to a minute) when fit ended while another training
    # process shared the cores (the main job's U-Nets, two one-thread processes side by side: 7 of
    # 10 runs lost 30-40 s there, 0 of 4 without it). Parallel maps keep AUTOTUNE's default width
    # (the thread pool's size, at most 16), prefetch sizes its own buffer, and `bench pipeline`
    # pairs/s are unchanged.
    options.autotune.enabled = False
    if strategy is not None:  # multi-worker: TFRecord shards by file when each worker gets one, else by data
        policy = tf.data.experimental.AutoShardPolicy
        options.experimental_distribute.auto_shard_policy = policy.FILE if shard_by_file else policy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)


def _stream_tfrecords(directory, split, size, training, seed, deterministic, views, phases, qualities, patients):
    from cardigan_tf.data import tfrecord

    ds = tfrecord.read_tfrecords(directory, split, shuffle_files=training, seed=seed, deterministic=deterministic)
    for key, wanted in (("view", views), ("phase", phases), ("quality", qualities), ("patient", patients)):
        if wanted is not None:
            allowed = tf.constant([str(w) for w in wanted])
            ds = ds.filter(lambda d, k=key, a=allowed: tf.reduce_any(tf.equal(d[k], a)))
    ds = ds.map(lambda d: _resize_one(d["image"], d["mask"], size), num_parallel_calls=AUTOTUNE,
                deterministic=deterministic)
    if training:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True).repeat()
    return ds


def _stream_or_memory(source, size, seed, deterministic):
    if _is_tfrecord_dir(source):
        return _stream_tfrecords(source, "train", size, True, seed, deterministic, None, None, None, None)
    image, mask = resize_arrays(*_check_arrays(load_source(source, "train"), "synthetic source"), size)
    ds = tf.data.Dataset.from_tensor_slices((image, mask))
    return ds.shuffle(len(image), seed=seed, reshuffle_each_iteration=True).repeat()


def _resize_one(image, mask, size):
    img = tf.ensure_shape(resize_image(image, size), [size, size, 1])
    msk = tf.ensure_shape(tf.cast(resize_mask(mask, size), tf.uint8), [size, size])
    return img, msk


# ----------------------------------------------------------------------------- info
def count_samples(source: Source, split: str = "train", **filters) -> int:
    """Number of frames a non-training ``make_dataset`` call would yield (before batching)."""
    if _is_tfrecord_dir(source):
        from cardigan_tf.data import tfrecord

        if not any(v is not None for v in filters.values()):
            return int(tfrecord.read_index(source)["splits"][split]["examples"])
        return int(sum(1 for _ in _stream_tfrecords(source, split, 8, False, 0, True, **{
            k: filters.get(k) for k in ("views", "phases", "qualities", "patients")})))
    return len(load_source(source, split, **filters)["image"])


def dataset_info(source: Source) -> dict[str, Any]:
    """Counts per split, view, phase and quality: ``{split: {"frames", "patients", "views": {..},
    "phases": {..}, "qualities": {..}}}`` (read from the metadata only for .h5 files)."""
    out: dict[str, Any] = {}

    def add(split, patient, view, phase, quality):
        d = out.setdefault(split, {"frames": 0, "patients": set(), "views": {}, "phases": {}, "qualities": {}})
        d["frames"] += 1
        d["patients"].add(patient)
        for key, value in (("views", view), ("phases", phase), ("qualities", quality or "unknown")):
            d[key][value] = d[key].get(value, 0) + 1

    if isinstance(source, dict):
        n = len(source["image"])
        for i in range(n):
            get = lambda k: str(source[k][i]) if k in source else ""  # noqa: E731
            add(get("split") or "all", get("patient"), get("view"), get("phase"), get("quality"))
    elif _is_tfrecord_dir(source):
        from cardigan_tf.data import tfrecord

        for split, entry in tfrecord.read_index(source).get("splits", {}).items():
            out[split] = {k: v for k, v in entry.items() if k != "files"}
        return out
    else:
        import h5py

        path = Path(source)
        if not h5layout.is_h5_layout(path):
            raise DataError(path, "not an HDF5 file in the seed layout (no train/valid/test group)")
        with h5py.File(path, "r") as fh:
            for split in h5layout.SPLITS:
                for patient in sorted(fh.get(split, {})):
                    for view, grp in fh[split][patient].items():
                        phases = h5layout._maybe_json(h5layout._decode(grp.attrs.get("phases", ""))) or list(h5layout.DEFAULT_PHASES)
                        quality = h5layout._decode(grp.attrs.get("quality", ""))
                        for phase in phases:
                            add(split, patient, view, phase, quality)
    for d in out.values():
        d["patients"] = len(d["patients"])
    return out


def format_info(info: dict[str, Any]) -> str:
    """Human-readable table of :func:`dataset_info`."""
    lines = []
    for split, d in info.items():
        parts = [f"{split}: {d.get('frames', d.get('examples', '?'))} frames, {d.get('patients', '?')} patients"]
        for key in ("views", "phases", "qualities"):
            if key in d:
                parts.append(key + " " + ", ".join(f"{k}={v}" for k, v in sorted(d[key].items())))
        lines.append("; ".join(parts))
    return "\n".join(lines)


__all__ = ["make_dataset", "load_source", "resize_arrays", "count_samples", "dataset_info", "format_info",
           "AugmentConfig"]
