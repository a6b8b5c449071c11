"""Read and write the seed HDF5 layout (CREATIS' ``camus05_256.hdf5``, as cardiGAN used it).

Layout::

    {train,valid,test,unlabelled}/patientXXXX/{2CH,4CH}/
        im       float32 (n, H, W) in [0, 1]   (CREATIS files may hold (n, H, W, 1))
        gt       uint8   (n, H, W) labels 0..3 (absent for unlabelled images)
        im_ref   original-resolution images (n, H0, W0)   optional
        gt_ref   original-resolution labels (n, H0, W0)   optional

Index ``i`` along ``n`` is the phase ``attrs["phases"][i]``; when the attribute is absent
(CREATIS' files) it is ("ED", "ES"). Our files add, per view group: ``spacing`` (row, col mm of
the original image) and ``spacing_known`` (False, without ``spacing``, when the source recorded
none: :mod:`cardigan_tf.data.spacing`), ``original_shape``, ``quality``, ``cfg`` (JSON of the
Info cfg values), ``source_files`` (JSON name -> sha256), the phantom's ``style`` (its acquisition
style, read back as ``Sample.meta["style"]`` like every other view-group attribute), and root
attributes describing the file (``format``, ``format_version``, ``source_layout``, ``size``,
``split_method``, ``spacing_known`` (every view group's), ``n_skipped``, ``skipped``, ...).
Synthetic "CAMUSx" sets use the same layout with ``kind = "synthetic"`` and ``provenance``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from cardigan_tf.data.sample import DataError, EmptyDatasetError, Sample
from cardigan_tf.data.spacing import CREATIS_LAYOUT, read_spacing, write_spacing
from cardigan_tf.files import atomic_path, refuse_overwrite
from cardigan_tf.labels import LABEL_VALUES, PHASES, VIEWS
from cardigan_tf.units import SPACING_KNOWN

FORMAT = "cardigan_tf/camus-h5"
FORMAT_VERSION = 2  # 2: view groups carry ``spacing_known``
SPLITS = ("train", "valid", "test", "unlabelled")
DEFAULT_PHASES = PHASES  # the frames of a view group that records no ``phases``


def _attr_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
    return value


class H5Writer:
    """Write the seed layout atomically: the file appears under its name only on ``close``.

    Usage::

        with H5Writer("out.h5", attrs={"source_layout": "camus2019"}, overwrite=False) as w:
            w.write_view("train", "patient0001", "2CH", im, gt, spacing=(0.154, 0.308), ...)

    ``spacing=None`` writes ``spacing_known = False`` and no spacing; the root attribute
    ``spacing_known`` (every view group's) is written on ``close``.
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None, overwrite: bool = False):
        self.path = Path(path)
        refuse_overwrite(self.path, overwrite, "dataset")
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self.file = h5py.File(self._tmp, "w")
        self.file.attrs["format"] = FORMAT
        self.file.attrs["format_version"] = FORMAT_VERSION
        self.set_attrs(attrs or {})
        self.count = 0
        self.all_spacing_known = True

    def set_attrs(self, attrs: dict[str, Any], group: str | None = None) -> None:
        target = self.file[group] if group else self.file
        for key, value in attrs.items():
            if isinstance(value, (dict, list, tuple)) and not _is_numeric_seq(value):
                target.attrs[key] = _attr_json(value)
            elif value is None:
                target.attrs[key] = ""
            else:
                target.attrs[key] = value

    def write_view(
        self,
        split: str,
        patient: str,
        view: str,
        im: np.ndarray,
        gt: np.ndarray | None,
        *,
        phases: Iterable[str] = DEFAULT_PHASES,
        im_ref: np.ndarray | None = None,
        gt_ref: np.ndarray | None = None,
        spacing: tuple[float, float] | None = None,
        original_shape: tuple[int, int] | None = None,
        quality: str = "",
        cfg: dict[str, Any] | None = None,
        source_files: dict[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} not one of {SPLITS}")
        phases = list(phases)
        im = np.asarray(im, dtype=np.float32)
        if im.ndim != 3 or im.shape[0] != len(phases):
            raise ValueError(f"{split}/{patient}/{view}/im: expected ({len(phases)}, H, W), got {im.shape}")
        grp = self.file.require_group(f"{split}/{patient}/{view}")
        grp.create_dataset("im", data=im, compression="gzip", compression_opts=1, chunks=True)
        if gt is not None:
            gt = np.asarray(gt, dtype=np.uint8)
            if gt.shape != im.shape:
                raise ValueError(f"{split}/{patient}/{view}/gt: shape {gt.shape} != im {im.shape}")
            grp.create_dataset("gt", data=gt, compression="gzip", compression_opts=1, chunks=True)
        if im_ref is not None:
            grp.create_dataset("im_ref", data=np.asarray(im_ref, np.float32), compression="gzip", compression_opts=1)
        if gt_ref is not None:
            grp.create_dataset("gt_ref", data=np.asarray(gt_ref, np.uint8), compression="gzip", compression_opts=1)
        grp.attrs["phases"] = _attr_json(phases)
        self.all_spacing_known &= write_spacing(grp.attrs, spacing, f"{split}/{patient}/{view}")
        if original_shape is not None:
            grp.attrs["original_shape"] = np.asarray(original_shape, np.int64)
        grp.attrs["quality"] = quality or ""
        grp.attrs["cfg"] = _attr_json(cfg or {})
        grp.attrs["source_files"] = _attr_json(source_files or {})
        for key, value in (attrs or {}).items():
            grp.attrs[key] = _attr_json(value) if isinstance(value, (dict, list, tuple)) else value
        self.count += len(phases)

    def close(self) -> None:
        if self.file is not None:
            self.file.attrs["n_images"] = self.count
            self.file.attrs[SPACING_KNOWN] = self.all_spacing_known
            self.file.close()
            self.file = None
            self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "H5Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _is_numeric_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
    )


def read_root_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes of a layout file, JSON strings decoded where they parse."""
    with _open(path) as f:
        return {k: _maybe_json(_decode(v)) for k, v in f.attrs.items()}


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found (expected an HDF5 file in the seed layout)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not a readable HDF5 file: {exc}") from None


def is_h5_layout(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file whose top level holds at least one split group."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return any(s in f for s in SPLITS)
    except OSError:
        return False


def _squeeze_last(arr: np.ndarray) -> np.ndarray:
    return arr[..., 0] if arr.ndim == 4 and arr.shape[-1] == 1 else arr


def _squeeze_last_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-1] if len(shape) == 4 and shape[-1] == 1 else tuple(shape)


def _image_stack(ds: h5py.Dataset, where: str) -> np.ndarray:
    arr = ds[()]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(where, f"expected (n, H, W) or (n, H, W, 1), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise DataError(where, f"expected float values in [0, 1], got [{np.nanmin(arr)}, {np.nanmax(arr)}]")
    return np.clip(arr, 0.0, 1.0)


def _label_stack(ds: h5py.Dataset, where: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = ds[()]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != shape:
        raise DataError(where, f"expected shape {shape} (same as the images), got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise DataError(where, "expected integer labels, got non-integer values")
    bad = np.setdiff1d(np.unique(arr), LABEL_VALUES)
    if bad.size:
        raise DataError(where, f"label values {bad.tolist()} outside {{0,1,2,3}}")
    return arr.astype(np.uint8)


def iter_samples(
    path: str | Path,
    splits: Iterable[str] | None = None,
    views: Iterable[str] | None = None,
    phases: Iterable[str] | None = None,
    with_ref: bool = False,
) -> Iterator[tuple[str, Sample]]:
    """Yield ``(split, Sample)`` for every frame in the file, in sorted order.

    ``with_ref=True`` adds ``meta["image_ref"]`` / ``meta["mask_ref"]`` (original resolution).
    A view group that records no spacing (CREATIS' files, and files converted from them:
    :mod:`cardigan_tf.data.spacing`) gives spacing (1, 1) and ``meta["spacing_known"]`` False:
    distances are then in pixels of the reference image.
    """
    path = Path(path)
    want_splits = list(splits) if splits is not None else list(SPLITS)
    want_views = set(views) if views is not None else set(VIEWS)
    want_phases = set(phases) if phases is not None else set(PHASES)
    with _open(path) as f:
        source_layout = _decode(f.attrs.get("source_layout", CREATIS_LAYOUT))
        for split in want_splits:
            if split not in f:
                continue
            for patient in sorted(f[split]):
                pgrp = f[split][patient]
                for view in sorted(pgrp):
                    if view not in want_views:
                        continue
                    grp = pgrp[view]
                    where = f"{path}:{split}/{patient}/{view}"
                    if "im" not in grp:
                        raise DataError(where, "missing dataset 'im'", patient=patient)
                    im = _image_stack(grp["im"], f"{where}/im")
                    gt = _label_stack(grp["gt"], f"{where}/gt", im.shape) if "gt" in grp else None
                    ph = _maybe_json(_decode(grp.attrs.get("phases", ""))) or list(DEFAULT_PHASES)
                    if len(ph) != im.shape[0]:
                        raise DataError(f"{where}/im", f"expected {len(ph)} frames ({ph}), got {im.shape[0]}")
                    im_ref = gt_ref = None
                    if with_ref and "im_ref" in grp:
                        im_ref = _squeeze_last(grp["im_ref"][()])
                    if with_ref and "gt_ref" in grp:
                        gt_ref = _squeeze_last(grp["gt_ref"][()])
                    if "original_shape" in grp.attrs:
                        original_shape = tuple(int(v) for v in grp.attrs["original_shape"])
                    else:  # from the reference datasets' shapes, without reading them
                        ref_shapes = [_squeeze_last_shape(grp[k].shape) for k in ("gt_ref", "im_ref") if k in grp]
                        ref_shapes = [sh for sh in ref_shapes if len(sh) == 3]
                        original_shape = tuple(ref_shapes[0][1:]) if ref_shapes else tuple(im.shape[1:])
                    spacing, spacing_known = read_spacing(grp.attrs, where)
                    quality = _decode(grp.attrs.get("quality", ""))
                    base_meta = {
                        "split": split,
                        "source_layout": source_layout,
                        SPACING_KNOWN: spacing_known,
                        "cfg": _maybe_json(_decode(grp.attrs.get("cfg", "{}"))) or {},
                        "source_files": _maybe_json(_decode(grp.attrs.get("source_files", "{}"))) or {},
                        "h5_path": f"{split}/{patient}/{view}",
                    }
                    for key, value in grp.attrs.items():
                        if key not in ("phases", "spacing", SPACING_KNOWN, "original_shape", "quality", "cfg",
                                       "source_files"):
                            base_meta[key] = _maybe_json(_decode(value))
                    for i, phase in enumerate(ph):
                        if phase not in want_phases:
                            continue
                        meta = dict(base_meta, index=i)
                        if with_ref:
                            if im_ref is not None and im_ref.ndim == 3 and i < im_ref.shape[0]:
                                meta["image_ref"] = im_ref[i]
                            if gt_ref is not None and gt_ref.ndim == 3 and i < gt_ref.shape[0]:
                                meta["mask_ref"] = gt_ref[i].astype(np.uint8)
                        yield split, Sample(
                            image=im[i][..., None],
                            mask=None if gt is None else gt[i],
                            patient=str(patient),
                            view=str(view),
                            phase=str(phase),
                            spacing=spacing,  # type: ignore[arg-type]
                            original_shape=original_shape,  # type: ignore[arg-type]
                            quality=str(quality),
                            meta=meta,
                        )


def load_arrays(
    path: str | Path,
    split: str | Iterable[str] = "train",
    views: Iterable[str] | None = None,
    phases: Iterable[str] | None = None,
    qualities: Iterable[str] | None = None,
    patients: Iterable[str] | None = None,
    require_masks: bool = True,
) -> dict[str, np.ndarray]:
    """Stack the selected frames into arrays (for in-memory tf.data pipelines).

    Returns ``image`` float32 (N, H, W, 1), ``mask`` uint8 (N, H, W), and per-frame
    ``patient``, ``view``, ``phase``, ``quality`` (str arrays), ``spacing`` (N, 2),
    ``spacing_known`` (N,) bool and ``original_shape`` (N, 2). Raises EmptyDatasetError when
    nothing matches.
    """
    splits = [split] if isinstance(split, str) else list(split)
    qual = set(qualities) if qualities is not None else None
    pats = set(patients) if patients is not None else None
    images, masks, rows = [], [], []
    for _, s in iter_samples(path, splits, views, phases):
        if qual is not None and s.quality not in qual:
            continue
        if pats is not None and s.patient not in pats:
            continue
        if s.mask is None:
            if require_masks:
                raise DataError(f"{path}:{s.meta['h5_path']}", "missing dataset 'gt' (labels required here)")
            mask = np.zeros(s.image.shape[:2], np.uint8)
        else:
            mask = s.mask
        images.append(s.image)
        masks.append(mask)
        rows.append(s)
    if not rows:
        raise EmptyDatasetError(
            path,
            f"no sample matches split={splits} views={views} phases={phases} qualities={qualities}",
        )
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(path, f"images of different sizes {sorted(shapes)}: resize with `prepare --size`")
    return {
        "image": np.stack(images).astype(np.float32),
        "mask": np.stack(masks).astype(np.uint8),
        "patient": np.array([s.patient for s in rows]),
        "view": np.array([s.view for s in rows]),
        "phase": np.array([s.phase for s in rows]),
        "quality": np.array([s.quality for s in rows]),
        "spacing": np.array([s.spacing for s in rows], np.float64),
        SPACING_KNOWN: np.array([bool(s.meta[SPACING_KNOWN]) for s in rows], bool),
        "original_shape": np.array([s.original_shape for s in rows], np.int64),
    }


def list_patients(path: str | Path) -> dict[str, list[str]]:
    """split -> sorted patient ids present in the file."""
    with _open(path) as f:
        return {s: sorted(f[s]) for s in SPLITS if s in f}
