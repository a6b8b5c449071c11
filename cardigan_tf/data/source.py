"""Resolve a command's ``--data`` argument into a seed-layout .h5 file.

``resolve_data(None, work_dir)`` writes the built-in phantom to ``work_dir/phantom.h5``
(``phantom_<tag>.h5`` for a non-default quality mix or style); an .h5 in the seed layout is used as is; a CAMUS folder (2019 or 2023 release, or a folder of
patient folders) is converted with :func:`cardigan_tf.data.prepare.prepare` into
``work_dir/camus_<size>.h5``. A folder of TFRecord shards (with the ``index.json`` that
:mod:`cardigan_tf.data.tfrecord` writes) is returned as is for the pipeline to stream. A file already there from an earlier call with the same
parameters is reused; one with other parameters is never overwritten (a distinct name is used).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py

from cardigan_tf.data.phantom import PhantomConfig, phantom_attrs, write_h5
from cardigan_tf.data.camus import detect_layout
from cardigan_tf.data.h5layout import is_h5_layout, read_root_attrs
from cardigan_tf.data.prepare import prepare
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.tfrecord import read_index

log = logging.getLogger(__name__)


def _matches(path: Path, want: dict) -> bool:
    if not is_h5_layout(path):
        return False
    attrs = read_root_attrs(path)
    return all(str(attrs.get(k)) == str(v) for k, v in want.items())


def _target(path: Path, want: dict) -> tuple[Path, bool]:
    """(path to use, whether it already holds what we want)."""
    if not path.exists():
        return path, False
    if _matches(path, want):
        return path, True
    alt = path.with_name(f"{path.stem}_" + "_".join(f"{k}{v}" for k, v in want.items() if k != "source")[:80]
                         + path.suffix)
    if alt.exists() and _matches(alt, want):
        return alt, True
    if alt.exists():
        raise DataError(alt, f"exists with other parameters than {want}; remove it or use another work_dir")
    return alt, False


def check_data(data: str | Path | None, what: str = "--data") -> None:
    """Raise DataError unless ``data`` can be resolved (None = phantom, a seed-layout .h5, a
    TFRecord folder or a CAMUS folder). Writes nothing: call it before creating a run folder."""
    if data is None or str(data) == "":
        return
    data = Path(data)
    if not data.exists():
        raise DataError(data, f"{what}: does not exist (expected a seed-layout .h5 file, a TFRecord folder "
                              "or a CAMUS folder)")
    if data.is_dir() and (data / "index.json").is_file():
        read_index(data)
        return
    if data.is_file():
        if not is_h5_layout(data):
            raise DataError(data, f"{what}: not an HDF5 file in the seed layout (expected train/valid/test "
                                  "groups of patientXXXX/{2CH,4CH}/{im,gt}) nor a CAMUS folder")
        return
    detect_layout(data)


def resolve_data(data: str | Path | None, work_dir: str | Path, size: int = 256, seed: int = 0,
                 n_phantom: int = 60, phantom: PhantomConfig | None = None) -> Path:
    """Return a seed-layout .h5 for ``data`` (None -> the built-in phantom, drawn with
    ``phantom``'s quality mix and styles: ``work_dir/phantom.h5`` for the default config, else
    ``work_dir/phantom_<tag>.h5``, e.g. ``phantom_q0-0-100_A-B.h5``)."""
    work_dir = Path(work_dir)
    if data is None or str(data) == "":
        phantom = phantom if phantom is not None else PhantomConfig()
        want = phantom_attrs(n_phantom, seed, size, phantom)
        tag = phantom.tag()
        path, ready = _target(work_dir / (f"phantom_{tag}.h5" if tag else "phantom.h5"), want)
        if ready:
            return path
        work_dir.mkdir(parents=True, exist_ok=True)
        log.info("writing the built-in phantom (%d patients, %dx%d, %s) to %s", n_phantom, size, size,
                 phantom.attrs(), path)
        return Path(write_h5(path, n_patients=int(n_phantom), seed=int(seed), size=int(size), phantom=phantom))
    data = Path(data)
    if not data.exists():
        raise DataError(data, "does not exist (expected a seed-layout .h5 file or a CAMUS folder)")
    if data.is_dir() and (data / "index.json").is_file():
        read_index(data)  # DataError unless it is a folder written by tfrecord.write_tfrecords
        return data  # TFRecord shards: the pipeline streams them as they are
    if data.is_file():
        if is_h5_layout(data):
            return data
        raise DataError(data, "not an HDF5 file in the seed layout (expected train/valid/test groups of "
                              "patientXXXX/{2CH,4CH}/{im,gt}) nor a CAMUS folder")
    layout = detect_layout(data)  # DataError with what was expected when it is no CAMUS folder

    want = {"source": str(data.resolve()), "size": int(size), "seed": int(seed)}
    path, ready = _target(work_dir / f"camus_{int(size)}.h5", want)
    if ready:
        return path
    log.info("converting %s (%s) to %s", data, layout, path)
    return prepare(data, path, size=int(size), seed=int(seed))


def prepared_size(path: str | Path) -> int | None:
    """The square image size a prepared dataset stores (``im`` of the seed layout, or the
    ``size`` of a TFRecord index); None when the file holds several sizes or none."""
    path = Path(path)
    if path.is_dir():
        size = read_index(path).get("size")
        return int(size[0]) if size and size[0] == size[1] else None

    with h5py.File(path, "r") as fh:
        for split in ("train", "valid", "test", "unlabelled"):
            for patient in fh.get(split, {}):
                for view in fh[split][patient]:
                    shape = fh[split][patient][view]["im"].shape
                    h, w = shape[1], shape[2]
                    return int(h) if h == w else None
    return None
