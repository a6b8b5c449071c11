#!/usr/bin/env python
"""Distributed KerasTuner search on one host: one chief (the oracle) and N workers (trials).

Usage::

    python experiments/tune_distributed.py --run-dir runs/tune-dist --workers 2 [--ip 127.0.0.1] [--port 0]
        [--timeout 3600] [--log-dir DIR] -- [python -m cardigan_tf.tune options, e.g. --tuner random
        --max-trials 12 --max-epochs 5 --set seg.data.n_phantom=60]

It sets KerasTuner's own variables for each process (KERASTUNER_TUNER_ID=chief / worker<i>,
KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT; ``--port 0`` picks a free port), starts the chief,
waits until it has written ``<dir>/chief.json`` (folder made, data resolved, oracle about to
serve), then starts the workers with the same options. The chief ends when every trial has
ended; it then writes the reports and (unless ``--set retrain=false``) retrains the best trial.
Every wait is bounded by ``--timeout``; on timeout, Ctrl-C or a failed process the others are
terminated (SIGTERM, then SIGKILL). Exit status 0 only when all processes exited with 0. Logs:
``<log-dir>/<tuner id>.log`` (default ``<dir>-logs``).

On several machines, run the same command line by hand on each, with KERASTUNER_ORACLE_IP set to
the chief's address, distinct KERASTUNER_TUNER_ID values and ``--run-dir`` on a shared file system.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def _stop(procs: dict[str, subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def launch(tune_dir: str | Path, workers: int, tune_args: list[str], ip: str = "127.0.0.1", port: int = 0,
           timeout_s: float = 3600.0, log_dir: str | Path | None = None, python: str = sys.executable) -> dict:
    """Run the chief and ``workers`` workers; return ``{tuner_id: exit status}`` (None = killed)."""
    tune_dir = Path(tune_dir)
    log_dir = Path(log_dir) if log_dir else tune_dir.with_name(tune_dir.name + "-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(ip)
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": ip, "KERASTUNER_ORACLE_PORT": str(port)}
    cmd = [python, "-m", "cardigan_tf.tune", "--run-dir", str(tune_dir), *tune_args]
    deadline = time.monotonic() + float(timeout_s)
    procs: dict[str, subprocess.Popen] = {}
    logs = []

    def start(tuner_id: str) -> None:
        log = open(log_dir / f"{tuner_id}.log", "w")
        logs.append(log)
        procs[tuner_id] = subprocess.Popen(cmd, env={**base_env, "KERASTUNER_TUNER_ID": tuner_id},
                                           stdout=log, stderr=subprocess.STDOUT)

    try:
        start("chief")
        marker = tune_dir / "chief.json"
        while not marker.is_file():  # the chief made the folder and resolved the data
            if procs["chief"].poll() is not None:
                raise RuntimeError(f"the chief exited with {procs['chief'].returncode} before serving; "
                                   f"see {log_dir / 'chief.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the chief did not start serving within {timeout_s:.0f} s")
            time.sleep(0.5)
        for i in range(int(workers)):
            start(f"worker{i}")
        while any(p.poll() is None for p in procs.values()):
            failed = [k for k, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"{failed} failed; see {log_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the search did not end within {timeout_s:.0f} s")
            time.sleep(0.5)
    finally:
        _stop(procs)
        for log in logs:
            log.close()
    return {k: p.returncode for k, p in procs.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, tune_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description="Distributed KerasTuner search: one chief and N workers on this host.")
    p.add_argument("--run-dir", dest="dir", required=True, help="the (shared) tuning folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ip", default="127.0.0.1", help="the chief oracle's address (default: loopback)")
    p.add_argument("--port", type=int, default=0, help="the chief oracle's port (0: a free one)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before every process is stopped")
    p.add_argument("--log-dir", help="per-process logs (default: <dir>-logs)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        codes = launch(args.dir, args.workers, tune_args, args.ip, args.port, args.timeout, args.log_dir)
    except (RuntimeError, TimeoutError, KeyboardInterrupt) as exc:
        print(f"error: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    print(json.dumps({"exit_codes": codes, "dir": args.dir}))
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
