"""A study split across two processes sharing its folder: every unit (GAN, cell) is worked on
exactly once, and one report is written. Claims: atomic, stale ones of dead local pids reclaimed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_study import TINY

ROOT = Path(__file__).resolve().parents[1]
BOUND = 420


def _sets():
    out = []
    for s in TINY:
        out += ["--set", s]
    return out


def test_claims_are_exclusive_and_dead_claims_reclaimable(tmp_path):
    from cardigan_tf.jobs.study import claim, release

    assert claim(tmp_path, "seg-f1-s0-seed0")
    path = tmp_path / "claims" / "seg-f1-s0-seed0.claim"
    held = json.loads(path.read_text())
    assert held["pid"] == os.getpid() and held["host"]
    # another live process holds it
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps(dict(held, pid=other.pid)))
        assert not claim(tmp_path, "seg-f1-s0-seed0")
    finally:
        other.kill()
        other.wait()
    assert claim(tmp_path, "seg-f1-s0-seed0")  # its process died: taken over
    path.write_text(json.dumps(dict(held, host="another-host", pid=1)))
    assert not claim(tmp_path, "seg-f1-s0-seed0")  # other hosts' claims are honoured
    release(tmp_path, "seg-f1-s0-seed0")
    assert not path.exists() and claim(tmp_path, "seg-f1-s0-seed0")


def test_study_split_across_two_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CONFIG", None)
    study = tmp_path / "study"
    cmd = [sys.executable, "-m", "cardigan_tf.train"]
    logs = [open(tmp_path / f"p{i}.log", "w") for i in range(2)]
    first = subprocess.Popen([*cmd, "study", *_sets(), "--study-dir", str(study)], cwd=ROOT, env=env,
                             stdout=logs[0], stderr=subprocess.STDOUT)
    procs = [first]
    try:
        deadline = time.monotonic() + BOUND
        while not (study / "config.yaml").is_file():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "p0.log").read_text()[-3000:]
            time.sleep(0.5)
        procs.append(subprocess.Popen([*cmd, "study", "--resume", str(study), "--worker", "--wait", "300"], cwd=ROOT,
                                      env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"p{i}.log").read_text()[-3000:] for i in range(2)]
    assert codes == [0, 0], texts
    events = [json.loads(line) for line in (study / "claims" / "work.log").read_text().splitlines()]
    done = [e["unit"] for e in events if e["event"] == "done"]
    assert sorted(done) == ["gan-f0.5-seed0", "seg-f0.5-s0-seed0", "seg-f0.5-s0.5-seed0"]  # each exactly once
    claimed = [e["unit"] for e in events if e["event"] == "claimed" and e["unit"] != "report"]
    assert sorted(claimed) == sorted(done)  # nobody started a unit another process had
    assert len(list(study.glob("cells/*/result.json"))) == 2
    assert not list((study / "claims").glob("*.claim"))  # all released
    report = (study / "report.md").read_text()
    assert "gan-f0.5-seed0" in report and (study / "results.csv").is_file()
    print("units per process:", {pid: [e["unit"] for e in events if e["pid"] == pid and e["event"] == "done"]
                                 for pid in {e["pid"] for e in events}})


def test_worker_flags_need_resume():
    from cardigan_tf.train import main

    assert main(["study", "--worker"]) == 2
    with pytest.raises(SystemExit):
        main(["study", "--report-only", "--bogus"])
