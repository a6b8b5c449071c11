"""The default main job (``python -m cardigan_tf.train`` with no sub-command), reduced budget."""

import csv
import json

import pytest

from cardigan_tf.configs.study import BUDGETS
from cardigan_tf.jobs.study_processes import auto_processes, process_env, run_study_processes
from cardigan_tf.train import main


def test_smoke_main_job_writes_its_report(tmp_path, capsys):
    assert "standard" in BUDGETS and "smoke" in BUDGETS
    # default --processes auto: 2 processes on a 2-core machine (CI), sharing the study's units
    assert main(["--budget", "smoke", "--runs-dir", str(tmp_path)]) == 0
    (study,) = tmp_path.glob("study-main_smoke-*")
    if auto_processes() == 2:
        assert (study / "logs" / "process1.log").is_file()
        events = [json.loads(line) for line in (study / "claims" / "work.log").read_text().splitlines()]
        done = sorted(e["unit"] for e in events if e["event"] == "done")
        assert done == ["gan-f1-seed0", "seg-f1-s0-seed0", "seg-f1-s0.5-add-seed0",
                        "seg-f1-s0.5-replace-seed0"]  # each unit once
    report = study / "report.md"
    assert str(report) in capsys.readouterr().out
    text = report.read_text()
    table = (study / "results.md").read_text()
    assert table.strip() in text and "LV endo Dice" in table.splitlines()[0]
    assert "](dice_vs_synthetic.png)" in text and "](samples.png)" in text
    for name in ("dice_vs_synthetic.png", "samples.png"):
        assert (study / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(study / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["synthetic_fraction"], r["exposure"]) for r in rows) == [("0.0", ""), ("0.5", "add"),
                                                                             ("0.5", "replace")]
    assert (study / "gans" / "gan-f1-seed0" / "quality" / "quality.md").is_file()
    assert "## GAN quality" in text


def test_study_processes_fail_naming_the_process_and_its_log(tmp_path):
    env = process_env(3, base={"TF_CONFIG": "{}", "PATH": "/bin"})
    assert env["TF_NUM_INTRAOP_THREADS"] == env["TF_NUM_INTEROP_THREADS"] == env["OMP_NUM_THREADS"] == "3"
    assert "TF_CONFIG" not in env and env["PATH"] == "/bin"
    assert auto_processes(1) == 1 and auto_processes(2) == 2 and auto_processes(16) == 2
    assert main(["--processes", "0", "--runs-dir", str(tmp_path)]) == 2
    assert main(["study", "--resume", str(tmp_path), "--worker", "--processes", "2"]) == 2
    from cardigan_tf.configs.study import build_study_config
    from cardigan_tf.runs import create_run

    # a study whose data is gone: each process ends with "error: ... does not exist" (status 2)
    broken = create_run("study", build_study_config(None, [f"data={tmp_path / 'gone.h5'}"]), run_dir=tmp_path / "s")
    with pytest.raises(RuntimeError, match=r"process \d of 2 exited with code 2") as err:
        run_study_processes(broken, 2, poll_s=0.2)
    assert "--resume" in str(err.value)
