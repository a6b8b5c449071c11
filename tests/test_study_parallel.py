"""A study split across two processes sharing its folder: every unit (GAN, cell) is worked on
exactly once, and one report is written. Claims: atomic, stale ones of dead local pids reclaimed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cardigan_tf.configs.study import build_study_config
from cardigan_tf.data.splits import subset_patients
from cardigan_tf.jobs.study import gan_seeds
from cardigan_tf.jobs.study_claims import claim, release
from cardigan_tf.train import main

from harness import STUDY_TINY, assert_config_round_trip, sets, without


ROOT = Path(__file__).resolve().parents[1]
BOUND = 420


# a fraction of 1 with two seeds and shared_gan: both seeds train on every training patient, so ONE
# GAN serves the synthetic cells of both seeds
SHARED = [*without(STUDY_TINY, "train_fractions", "seeds", "exposures"), "train_fractions=[1.0]", "seeds=[0, 1]",
          "shared_gan=true", "exposures=[replace]"]


def test_claims_are_exclusive_and_dead_claims_reclaimable(tmp_path):
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
    first = subprocess.Popen([*cmd, "study", *sets(SHARED), "--run-dir", str(study)], cwd=ROOT, env=env,
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
    # each unit exactly once, and one GAN for both seeds
    assert sorted(done) == ["gan-f1-seed0", "seg-f1-s0-seed0", "seg-f1-s0-seed1", "seg-f1-s0.5-replace-seed0",
                            "seg-f1-s0.5-replace-seed1"]
    claimed = [e["unit"] for e in events if e["event"] == "claimed" and e["unit"] != "report"]
    cells = sorted(u for u in done if u.startswith("seg-"))
    assert sorted(u for u in claimed if u.startswith("seg-")) == cells  # nobody started a cell another process had
    # a GAN is claimed to train it and claimed again, once its scorer is trained, to choose its
    # checkpoint and draw its set: finished once
    assert claimed.count("gan-f1-seed0") >= 1 and done.count("gan-f1-seed0") == 1
    assert len(json.loads((study / "gans" / "gan-f1-seed0" / "selection.json").read_text())["checkpoints"]) >= 1
    assert [p.name for p in (study / "gans").iterdir()] == ["gan-f1-seed0"]
    assert [p.name for p in (study / "synthetic").glob("*.h5")] == ["synth-f1-seed0.h5"]
    for seed in (0, 1):
        cell = json.loads((study / "cells" / f"seg-f1-s0.5-replace-seed{seed}" / "result.json").read_text())
        assert cell["gan"] == "gan-f1-seed0" and cell["seed"] == seed
        config = (study / "cells" / f"seg-f1-s0.5-replace-seed{seed}" / "config.yaml").read_text()
        assert "synth-f1-seed0.h5" in config
    assert json.loads((study / "cells" / "seg-f1-s0-seed1" / "result.json").read_text())["gan"] is None
    assert len(list(study.glob("cells/*/result.json"))) == 4
    assert not list((study / "claims").glob("*.claim"))  # all released
    report = (study / "report.md").read_text()
    assert "gan-f1-seed0" in report and (study / "results.csv").is_file()
    assert "share one GAN and its synthetic set (`gan-f1-seed0` served seeds 0, 1)" in report
    print("units per process:", {pid: [e["unit"] for e in events if e["pid"] == pid and e["event"] == "done"]
                                 for pid in {e["pid"] for e in events}})


def test_worker_flags_need_resume():
    assert main(["study", "--worker"]) == 2
    with pytest.raises(SystemExit):
        main(["study", "--report-only", "--bogus"])


def test_gan_seeds_share_a_gan_only_between_equal_patient_subsets(tmp_path):
    patients = [f"patient{i:04d}" for i in range(1, 21)]
    independent = build_study_config(None, ["train_fractions=[0.25, 1.0]", "seeds=[3, 1, 2]"])
    got = gan_seeds(tmp_path, independent, patients)
    assert all(got[f, s] == s for f in (0.25, 1.0) for s in (3, 1, 2))  # by default every seed its own GAN
    cfg = build_study_config(None, ["train_fractions=[0.25, 1.0]", "seeds=[3, 1, 2]", "shared_gan=true"])
    got = gan_seeds(tmp_path, cfg, patients)
    assert {got[1.0, s] for s in (3, 1, 2)} == {3}  # every patient for every seed: the first seed's GAN
    subsets = {s: subset_patients(patients, 0.25, seed=s) for s in (3, 1, 2)}
    assert len({tuple(v) for v in subsets.values()}) == 3  # (the three subsets differ)
    assert [got[0.25, s] for s in (3, 1, 2)] == [3, 1, 2]  # other patients: their own GAN
    # a study folder from before the sharing: seed 1's finished GAN keeps serving seed 1
    gan = tmp_path / "gans" / "gan-f1-seed1"
    gan.mkdir(parents=True)
    for name in ("generator_ema.keras", "metrics.json"):
        (gan / name).write_text("x")
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "synth-f1-seed1.h5").write_text("x")
    got = gan_seeds(tmp_path, cfg, patients)
    assert [got[1.0, s] for s in (3, 1, 2)] == [3, 1, 3]
    assert_config_round_trip(cfg, tmp_path, "study.yaml", load=lambda path: build_study_config(str(path)))
