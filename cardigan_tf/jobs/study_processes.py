"""One study in several local processes, to use every CPU core (library; the commands are
``python -m cardigan_tf.train [main|study] --processes N``).

A small study is made of units that use several cores poorly: the 64x64 tiny GAN step gains
far less than 2x from a second TensorFlow thread, and one-thread processes side by side do not
slow each other (figures in docs/distributed.md). So N processes with cores / N threads each
finish the study sooner than one process with every core, as long as there are independent
units (GANs of different patient subsets, U-Net cells) to share.

The processes share the study folder exactly as processes on several machines do
(:mod:`cardigan_tf.jobs.study`: every GAN and cell is claimed atomically, a process that needs
a GAN another one is training takes other cells first). Process i writes
``logs/process<i>.log`` in the study folder; this terminal shows one progress display, the
parent's (cells finished, GANs trained). A process that dies leaves its claim to be taken over
by the others (same host, dead pid); the call fails naming the log of any process that did not
end cleanly.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from cardigan_tf.jobs.study import create_study, progress, run_study
from cardigan_tf.run_plan import plan_run
from cardigan_tf.runs import open_run
from cardigan_tf.runtime import available_cores

log = logging.getLogger(__name__)


def auto_processes(cores: int | None = None) -> int:
    """The default number of study processes: 2 when there are at least 2 cores, else 1."""
    return 2 if (available_cores() if cores is None else cores) >= 2 else 1


def process_env(threads: int, base: dict | None = None) -> dict:
    """Environment of one study process: TensorFlow (intra- and inter-op) and OpenMP limited
    to ``threads`` threads. The variables are read when TensorFlow starts, so they only work
    for a new process."""
    env = dict(os.environ if base is None else base)
    env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    env.pop("TF_CONFIG", None)  # a study process is never a tf.distribute worker
    return env


def run_study_processes(root: str | Path, processes: int, wait_s: float = 6 * 3600,
                        poll_s: float = 1.0) -> Path:
    """Work on the study folder ``root`` (made by :func:`cardigan_tf.jobs.study.create_study`,
    or one to resume) with ``processes`` processes of ``cores // processes`` threads each, and
    wait for all of them; return ``root``. Raises RuntimeError naming the log of a process that
    failed (the others are stopped)."""
    root = Path(root)
    n = max(1, int(processes))
    threads = max(1, available_cores() // n)
    (root / "logs").mkdir(exist_ok=True)
    log.info("study %s: %d processes of %d thread(s) each", root.name, n, threads)
    cmd = [sys.executable, "-m", "cardigan_tf.train", "study", "--resume", str(root), "--worker",
           "--wait", str(float(wait_s))]
    env = process_env(threads)
    cfg = open_run(root, "study").config
    procs, logs = [], []
    log.info("logs of the study processes: %s", root / "logs" / "process*.log")
    done, total, gans = progress(root, cfg)
    bar = tqdm(total=total, initial=done, desc="study cells", unit="cell", disable=None)
    try:
        for i in range(n):
            out = open(root / "logs" / f"process{i}.log", "w")
            logs.append(out)
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
        while True:  # until all ended well, or one failed
            codes = [p.poll() for p in procs]
            done, _, gans = progress(root, cfg)
            bar.update(done - bar.n)
            bar.set_postfix_str(f"{gans} GAN(s) trained", refresh=True)
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(poll_s)
        if failed is not None:
            where = str(root / "logs" / f"process{failed}.log")
            raise RuntimeError(f"study {root}: process {failed} of {n} exited with code "
                               f"{procs[failed].returncode} (see {where}); the study can be resumed "
                               f"with --resume {root}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for fh in logs:
            fh.close()
        bar.close()
    return root


def study_in_processes(cfg, processes: int, resume=None, runs_dir: str | Path = "runs",
                       study_dir: str | Path | None = None, wait_s: float = 6 * 3600) -> Path:
    """Create the study of ``cfg`` (or take the folder ``resume``; a ``cfg`` given with it must
    equal the saved design) and work on it in this process (``processes`` = 1) or in that many
    new processes; return its folder."""
    if int(processes) == 1:
        return run_study(cfg, resume=resume, runs_dir=runs_dir, study_dir=study_dir, wait_s=wait_s)
    if resume is not None and cfg is not None:
        plan_run("study", cfg, resume=resume)  # a changed value is refused before any process starts
    root = resume if resume is not None else create_study(cfg, runs_dir=runs_dir, study_dir=study_dir)
    return run_study_processes(root, processes, wait_s=wait_s)
