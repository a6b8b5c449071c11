"""The dataset of a run folder: ``data.json`` (the resolved dataset, its path relative to the
run, what was asked for, its SHA-256 fingerprint) and the dataset resolved into ``<run>/data``.

Every run that reads prepared data records it here once (:func:`run_dataset`); readers find it
again through :func:`recorded_dataset` (``cardigan_tf.runs.Run.dataset``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cardigan_tf.files import sha256_file, write_json


def data_fingerprint(path: str | Path) -> dict[str, Any]:
    """SHA-256 of a prepared dataset: the .h5 file, or every file of a TFRecord folder."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {"path": str(path.resolve()), "files": {str(p.relative_to(path)): sha256_file(p) for p in files}}


def record_data(run_dir: str | Path, data_path: str | Path, requested: Any = None) -> dict:
    """Write ``run_dir/data.json``: the resolved dataset (its absolute path, and its path
    relative to the run folder, so that a run moved together with its data still finds it),
    what was asked for, its fingerprint."""
    resolved = Path(data_path).resolve()
    record = {"path": str(resolved), "relative": os.path.relpath(resolved, Path(run_dir).resolve()),
              "requested": None if requested is None else str(requested), "fingerprint": data_fingerprint(data_path)}
    write_json(Path(run_dir) / "data.json", record)
    return record


def recorded_dataset(run_dir: str | Path) -> Path | None:
    """The dataset recorded in ``run_dir/data.json`` when the record and the file exist: at its
    absolute path, else at its path relative to the run folder (a study or tuning folder
    renamed or moved with the data inside it)."""
    record = Path(run_dir) / "data.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    candidates = [Path(data["path"])]
    if data.get("relative"):
        candidates.append(Path(run_dir) / data["relative"])
    return next((path.resolve() for path in candidates if path.exists()), None)


def resolve_into(run_dir: str | Path, data: Any, size: int, seed: int, n_phantom: int, phantom: Any = None) -> Path:
    """``data`` (phantom, .h5, TFRecord folder or CAMUS folder; split with ``seed``) resolved
    into ``run_dir/data``; ``phantom``: the built-in phantom's PhantomConfig (None: default)."""
    from cardigan_tf.data.source import resolve_data  # lazy: TensorFlow, which runs (importing this) must not load

    return Path(resolve_data(data, Path(run_dir) / "data", size=int(size), seed=int(seed), n_phantom=int(n_phantom),
                             phantom=phantom))


def run_dataset(run_dir: str | Path, data: Any, size: int, seed: int, n_phantom: int, phantom: Any = None) -> Path:
    """The prepared dataset of a run being trained: the one recorded in ``run_dir/data.json``
    when it still exists, else ``data`` resolved into ``run_dir/data`` and recorded with its
    fingerprint."""
    path = recorded_dataset(run_dir)
    if path is None:
        path = resolve_into(run_dir, data, size, seed, n_phantom, phantom)
        record_data(run_dir, path, data)
    return path
