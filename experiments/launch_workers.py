#!/usr/bin/env python
"""Start multi-worker training (MultiWorkerMirroredStrategy through ``TF_CONFIG``).

One host: start N worker processes on 127.0.0.1 (free ports), each with its own ``TF_CONFIG``,
wait for all of them (bounded by ``--timeout``), and stop the others when one fails::

    python experiments/launch_workers.py --workers 2 -- \\
        gan --preset tiny --steps 200 --strategy multiworker --run-dir runs/gan-2workers

Several hosts: print, for each host, the command to run there (the same arguments, the
``TF_CONFIG`` of that host's task); the run folder must be on a folder all hosts share::

    python experiments/launch_workers.py --hosts node1:2222,node2:2222 -- \\
        seg --preset camus --strategy multiworker --run-dir /shared/runs/seg-2nodes

Every argument after ``--`` goes to ``python -m cardigan_tf.train``. Worker 0 is the chief (it
writes the run folder); the others write temporary copies and delete them. Each worker's
output goes to ``--log-dir`` (default: a new temporary folder) as ``worker-<i>.log``.
A worker that dies makes the others fail within ``CARDIGAN_WORKER_TIMEOUT`` seconds (60 by
default, see cardigan_tf.runtime.multiworker_strategy); ``--timeout`` bounds the whole launch.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(addresses: list[str]) -> list[str]:
    """The ``TF_CONFIG`` JSON of each worker of a cluster of ``host:port`` addresses."""
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--hosts: expected host:port entries, got {a!r}")
    cluster = {"worker": list(addresses)}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(addresses))]


def host_commands(addresses: list[str], train_args: list[str]) -> list[str]:
    """One shell command per host: ``TF_CONFIG='...' python -m cardigan_tf.train ARGS``."""
    args = " ".join(shlex.quote(a) for a in train_args)
    return [f"TF_CONFIG={shlex.quote(c)} python -m cardigan_tf.train {args}" for c in tf_configs(addresses)]


def launch_local(n: int, train_args: list[str], timeout: float, log_dir: Path, grace: float = 90.0) -> int:
    """Run ``n`` workers on 127.0.0.1; return 0 when all succeed, else the first failure's code
    (124 when ``timeout`` ran out). A failed worker's peers get ``grace`` seconds to fail by
    themselves (their own bounded timeouts) before they are killed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(n)]
    procs, logs = [], []
    for i, config in enumerate(tf_configs(addresses)):
        env = dict(os.environ, TF_CONFIG=config)
        log = open(log_dir / f"worker-{i}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-m", "cardigan_tf.train", *train_args], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    print(f"{n} workers on {', '.join(addresses)}; logs in {log_dir}", flush=True)
    deadline = time.monotonic() + timeout
    first_failure = None
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.returncode not in (None, 0) and first_failure is None:
                    first_failure = (i, p.returncode)
                    print(f"worker {i} exited with code {p.returncode}; waiting up to {grace:.0f} s for "
                          "the others to stop", flush=True)
                    deadline = min(deadline, time.monotonic() + grace)
            if time.monotonic() > deadline:
                print(f"timeout: stopping workers still running after "
                      f"{'the failure of worker %d' % first_failure[0] if first_failure else '%.0f s' % timeout}",
                      flush=True)
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    for i, code in enumerate(codes):
        print(f"worker {i}: exit code {code}", flush=True)
    if first_failure is not None:
        return first_failure[1]
    if any(c != 0 for c in codes):
        return 124
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s (--workers N | --hosts H:P,H:P,...) [options] -- TRAIN ARGS")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workers", type=int, help="start N workers on this host (127.0.0.1, free ports)")
    where.add_argument("--hosts", help="comma-separated host:port list: print each host's command")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds before all workers are stopped")
    p.add_argument("--log-dir", help="folder of the workers' logs (default: a new temporary folder)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of python -m cardigan_tf.train")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    if not train_args or train_args[0] not in ("gan", "seg"):
        print("error: give the training job after --, e.g. -- gan --preset tiny --strategy multiworker "
              "--run-dir runs/gan-mw", file=sys.stderr)
        return 2
    if "--strategy" not in train_args:
        train_args += ["--strategy", "multiworker"]
    if args.hosts:
        try:
            commands = host_commands([h.strip() for h in args.hosts.split(",") if h.strip()], train_args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for i, cmd in enumerate(commands):
            print(f"# worker {i}{' (chief)' if i == 0 else ''}\n{cmd}")
        return 0
    if args.workers < 1:
        print("error: --workers: expected at least 1", file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="cardigan-workers-"))
    return launch_local(args.workers, train_args, args.timeout, log_dir)


if __name__ == "__main__":
    sys.exit(main())
