"""Run folders: create them, record what made them, and open them again (the run API).

Every command that trains writes one self-describing folder::

    runs/<kind>-<name>-<UTC time>/
        config.yaml      ``kind:`` + everything needed to rerun
        provenance.json  Python / TensorFlow / Keras versions, code revision, command line,
                         and (in data.json) a fingerprint of the data
        data.json        the resolved dataset and its fingerprint (file hashes)
        checkpoints/     resumable state
        tensorboard/     event files
        samples/         PNG grids
        metrics.json     final figures
        report.md        short human summary

The kind is read from ``config.yaml``, never from the folder's name: a renamed run folder still
opens. :func:`open_run` only reads; it creates nothing. Folders written before the kind was
recorded are recognised by their contents (``legacy=True``).

Example::

    run = open_run("runs/seg-tiny-20260101T000000Z")
    run.kind, run.config.model.size, run.model_path()
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cardigan_tf.files import (  # noqa: F401  (re-exported: the historical home of these names)
    OverwriteError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    refuse_overwrite,
    sha256_file,
    write_json,
)

RUN_SUBDIRS = ("checkpoints", "tensorboard", "samples")
#: files whose presence identifies the kind of a folder written before config.yaml held it
_LEGACY_MARKERS = (("study", ("cells",)), ("gan", ("generator_ema.keras", "generator.keras")),
                   ("seg", ("best.keras", "final.keras", "checkpoints/state.json")))


class RunError(ValueError):
    """A path is not a run folder of the expected kind, or lacks what was asked of it."""


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


# ----------------------------------------------------------------------------- provenance
def code_revision() -> dict[str, Any]:
    """The git commit of the cardigan_tf checkout (and whether it has local changes), or
    ``{"commit": None}`` when the package is not in a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"commit": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit or None, "dirty": bool(dirty)}


def library_versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries a run depends on (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "h5py", "keras-tuner", "SimpleITK"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """What made a run: versions, code revision, command line, host, time."""
    return {
        "created": utc_stamp(),
        "command": list(sys.argv if command is None else command),
        "cwd": os.getcwd(),
        "versions": library_versions(),
        "code": code_revision(),
        "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


def data_fingerprint(path: str | Path) -> dict[str, Any]:
    """SHA-256 of a prepared dataset: the .h5 file, or every file of a TFRecord folder."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {"path": str(path.resolve()), "files": {str(p.relative_to(path)): sha256_file(p) for p in files}}


def record_data(run_dir: str | Path, data_path: str | Path, requested: Any = None) -> dict:
    """Write ``run_dir/data.json``: the resolved dataset, what was asked for, its fingerprint."""
    record = {"path": str(Path(data_path).resolve()), "requested": None if requested is None else str(requested),
              "fingerprint": data_fingerprint(data_path)}
    write_json(Path(run_dir) / "data.json", record)
    return record


def recorded_dataset(run_dir: str | Path) -> Path | None:
    """The dataset recorded in ``run_dir/data.json``, when the record and the file exist."""
    record = Path(run_dir) / "data.json"
    if record.is_file():
        path = Path(json.loads(record.read_text())["path"])
        if path.exists():
            return path
    return None


def _resolve_into(run_dir: str | Path, data: Any, size: int, seed: int, n_phantom: int) -> Path:
    """``data`` (phantom, .h5, TFRecord folder or CAMUS folder; split with ``seed``) resolved
    into ``run_dir/data``."""
    from cardigan_tf.data.source import resolve_data

    return Path(resolve_data(data, Path(run_dir) / "data", size=int(size), seed=int(seed), n_phantom=int(n_phantom)))


def run_dataset(run_dir: str | Path, data: Any, size: int, seed: int, n_phantom: int) -> Path:
    """The prepared dataset of a run being trained: the one recorded in ``run_dir/data.json``
    when it still exists, else ``data`` resolved into ``run_dir/data`` and recorded with its
    fingerprint."""
    path = recorded_dataset(run_dir)
    if path is None:
        path = _resolve_into(run_dir, data, size, seed, n_phantom)
        record_data(run_dir, path, data)
    return path


# ----------------------------------------------------------------------------- create / open
def save_run_config(run_dir: str | Path, kind: str, cfg: Any) -> None:
    """Write ``config.yaml`` with the run's kind first, atomically."""
    import yaml

    from cardigan_tf.config import to_dict

    text = yaml.safe_dump({"kind": kind, **to_dict(cfg)}, sort_keys=False)
    atomic_write_text(Path(run_dir) / "config.yaml", text)


def create_run(kind: str, cfg: Any, *, runs_dir: str | Path = "runs", run_dir: str | Path | None = None,
               name: str | None = None, command: list[str] | None = None) -> Path:
    """Make a run folder (a new ``runs_dir/<kind>-<name>-<UTC>/``, or ``run_dir``) and write its
    ``config.yaml`` and ``provenance.json``. Validate inputs before calling this."""
    if run_dir is None:
        path = new_run_dir(runs_dir, kind, name or getattr(cfg, "name", None) or getattr(cfg, "preset", "run"))
    else:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        for sub in RUN_SUBDIRS:
            (path / sub).mkdir(exist_ok=True)
    save_run_config(path, kind, cfg)
    write_json(path / "provenance.json", provenance(command))
    return path


def _legacy_kind(path: Path) -> str | None:
    for kind, markers in _LEGACY_MARKERS:
        if any((path / m).exists() for m in markers):
            return kind
    prefix = path.name.split("-", 1)[0]
    from cardigan_tf.configs import RUN_KINDS

    return prefix if prefix in RUN_KINDS else None


@dataclasses.dataclass
class Run:
    """An opened run folder. ``config`` is the typed config of its kind."""

    path: Path
    kind: str
    config: Any
    legacy: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data(self) -> dict | None:
        """``data.json`` (resolved dataset path, request, fingerprint), or None."""
        f = self.path / "data.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def data_path(self) -> Path | None:
        """The resolved dataset, when it was recorded and still exists."""
        return recorded_dataset(self.path)

    def dataset(self, data: Any = None) -> Path:
        """The prepared dataset to read this run's data from: ``data`` when given, else the
        recorded one (:meth:`data_path`), else the run's ``data.data`` resolved again with its
        split seed and size (into ``<run>/data``; the run's record is not rewritten: reading a
        run does not change it). GAN runs work at ``model.size``, seg runs at ``data.size``."""
        if data is None:
            recorded = self.data_path()
            if recorded is not None:
                return recorded
            data = self.config.data.data
        cfg = self.config
        size = cfg.model.size if self.kind == "gan" else cfg.data.size
        return _resolve_into(self.path, data, size, cfg.data.seed, cfg.data.n_phantom)

    @property
    def provenance(self) -> dict:
        f = self.path / "provenance.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    @property
    def metrics(self) -> dict | None:
        f = self.path / "metrics.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def model_path(self, which: str = "best") -> Path:
        """The trained model: seg ``best`` (falls back to ``final``) or ``final``; gan ``ema``
        (``generator_ema.keras``) or ``raw`` (``generator.keras``). RunError if absent."""
        names = {
            "seg": {"best": ("best.keras", "final.keras"), "final": ("final.keras",)},
            "gan": {"ema": ("generator_ema.keras",), "raw": ("generator.keras",),
                    "best": ("generator_ema.keras",)},
        }.get(self.kind)
        if names is None or which not in names:
            raise RunError(f"{self.path}: a {self.kind} run has no {which!r} model")
        for name in names[which]:
            if (self.path / name).is_file():
                return self.path / name
        raise RunError(f"{self.path}: no {' or '.join(names[which])} (has the {self.kind} run finished?)")


def read_config_file(path: Path) -> tuple[str | None, dict]:
    from cardigan_tf.config import ConfigError, load_yaml

    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    kind = data.pop("kind", None)
    return kind, data


def open_run(path: str | Path, kind: str | None = None) -> Run:
    """Open a run folder read-only: its kind (from ``config.yaml``), typed config and paths.

    Raises RunError when ``path`` is no run folder, is of another kind than ``kind``, or its
    config no longer loads (the message says which key and why).
    """
    from cardigan_tf.config import ConfigError, from_dict
    from cardigan_tf.configs import RUN_KINDS, config_class, migrate

    path = Path(path)
    cfg_file = path / "config.yaml"
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not cfg_file.is_file():
        raise RunError(f"{path}: not a run folder (no config.yaml)")
    recorded, data = read_config_file(cfg_file)
    legacy = recorded is None
    found = recorded or _legacy_kind(path)
    if found not in RUN_KINDS:
        raise RunError(f"{cfg_file}: cannot tell the kind of this run (no 'kind:' key, and neither its files "
                       f"nor its name say it); expected one of {list(RUN_KINDS)}")
    if kind is not None and found != kind:
        raise RunError(f"{path}: expected a {kind} run folder, found a {found} run")
    try:
        cfg = from_dict(config_class(found), migrate(found, data), where=str(cfg_file))
    except ConfigError as exc:
        raise RunError(f"{path}: its config does not load with this version of cardigan_tf: {exc}") from None
    return Run(path=path, kind=found, config=cfg, legacy=legacy)


def ensure_run_subdirs(path: str | Path) -> Path:
    """Create the standard subfolders of a run that is about to be written to (resume)."""
    path = Path(path)
    for sub in RUN_SUBDIRS:
        (path / sub).mkdir(exist_ok=True)
    return path
