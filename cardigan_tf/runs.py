"""Run folders and safe file writing.

Every command that trains writes one self-describing folder::

    runs/<kind>-<name>-<UTC time>/
        config.yaml      everything needed to rerun
        checkpoints/     resumable state
        tensorboard/     event files
        samples/         PNG grids
        metrics.json     final figures
        report.md        short human summary

Nothing is written half: files are written under a temporary name in the same folder and
renamed into place. Nothing is overwritten without an explicit ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

RUN_SUBDIRS = ("checkpoints", "tensorboard", "samples")


class OverwriteError(FileExistsError):
    """Raised when an output exists and ``--overwrite`` was not given."""


def refuse_overwrite(path: Path, overwrite: bool, what: str = "output") -> None:
    """Raise OverwriteError if ``path`` exists and ``overwrite`` is False."""
    if Path(path).exists() and not overwrite:
        raise OverwriteError(f"{path}: {what} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    On error the temporary file (or folder) is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if not overwrite:
        refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # let the writer create it (file or folder)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "run"


def new_run_dir(root: str | Path, kind: str, name: str = "run") -> Path:
    """Create ``root/<kind>-<name>-<UTC time>/`` with its standard subfolders.

    Never reuses an existing folder: a numeric suffix is added when two runs start in the
    same second.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{_slug(kind)}-{_slug(name)}-{utc_stamp()}"
    run = root / base
    i = 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            run = root / f"{base}-{i}"
            i += 1
    for sub in RUN_SUBDIRS:
        (run / sub).mkdir()
    return run


def open_run_dir(path: str | Path, kind: str | None = None) -> Path:
    """Check that ``path`` is a run folder (of ``kind`` when given) and return it."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path}: not a run folder (no config.yaml)")
    if kind is not None and not path.name.startswith(f"{kind}-"):
        raise ValueError(f"{path}: expected a '{kind}' run folder (name starting '{kind}-')")
    for sub in RUN_SUBDIRS:
        (path / sub).mkdir(exist_ok=True)
    return path
