"""What made a run: library versions, the code revision, the command line, the host
(``provenance.json`` of every run folder; also recorded in every export's metadata)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


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
