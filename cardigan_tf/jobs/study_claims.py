"""Atomic claims on the units of a study folder, so that several processes (on one machine or
on several sharing the folder) never work on the same GAN or cell (see
:mod:`cardigan_tf.jobs.study`).

``claims/<unit>.claim`` is created with O_CREAT|O_EXCL and holds host, pid and time; it is
removed when the unit is done. A claim of a dead process on the same host is taken over; a claim
of another host is honoured. ``claims/work.log`` records who worked on what (one JSON line per
event); ``claims/data.lock`` serialises the resolution of the study's data.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)


def claims_dir(root: Path) -> Path:
    """``root/claims`` (created)."""
    path = root / "claims"
    path.mkdir(exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(root: Path, unit: str) -> bool:
    """Claim ``unit`` for this process (True) or see it held by a live process (False).
    A claim left by a dead process of this host is taken over."""
    path = claims_dir(root) / f"{unit}.claim"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                return False  # being written right now
            if held.get("host") == me["host"] and held.get("pid") and not _pid_alive(int(held["pid"])):
                log.info("claim %s of dead pid %s taken over", unit, held["pid"])
                path.unlink(missing_ok=True)
                continue
            if held.get("host") == me["host"] and held.get("pid") == me["pid"]:
                return True
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        work_log(root, unit, "claimed")
        return True
    return False


def release(root: Path, unit: str) -> None:
    (claims_dir(root) / f"{unit}.claim").unlink(missing_ok=True)


def work_log(root: Path, unit: str, event: str) -> None:
    """Append one JSON line (unit, event, host, pid, time) to ``claims/work.log``."""
    line = json.dumps({"unit": unit, "event": event, "host": socket.gethostname(), "pid": os.getpid(),
                       "time": time.time()}) + "\n"
    fd = os.open(claims_dir(root) / "work.log", os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class data_lock:
    """An exclusive fcntl lock on ``claims/data.lock`` while the study data is resolved."""

    def __init__(self, root: Path):
        self.path = claims_dir(root) / "data.lock"

    def __enter__(self):
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        return False
