"""The default main job (``python -m cardigan_tf.train`` with no sub-command), reduced budget."""

import csv


def test_smoke_main_job_writes_its_report(tmp_path, capsys):
    from cardigan_tf.configs.study import BUDGETS
    from cardigan_tf.train import main

    assert "standard" in BUDGETS and "smoke" in BUDGETS
    assert main(["--budget", "smoke", "--runs-dir", str(tmp_path)]) == 0
    (study,) = tmp_path.glob("study-main_smoke-*")
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
    assert sorted(r["synthetic_fraction"] for r in rows) == ["0.0", "0.5"]
    assert (study / "gans" / "gan-f1-seed0" / "quality" / "quality.md").is_file()
    assert "## GAN quality" in text
