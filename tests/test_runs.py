"""The run API: kind recorded in config.yaml, provenance, read-only opening, renamed and old
folders, and expected CLI failures that end with one ``error:`` line before any folder exists."""

import json
import shutil

import pytest
import yaml

from cardigan_tf.configs.gan import preset_config as gan_preset
from cardigan_tf.configs.seg import preset_config as seg_preset
from cardigan_tf.data import h5layout
from cardigan_tf.evaluate import main as evaluate
from cardigan_tf.run_data import record_data
from cardigan_tf.runs import RunError, create_run, open_run
from cardigan_tf.train import main as train

from harness import assert_config_round_trip


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_create_run_records_kind_provenance_and_opens_renamed(tmp_path):
    run = create_run("seg", seg_preset("tiny"), runs_dir=tmp_path, command=["train", "seg"])
    text = (run / "config.yaml").read_text()
    assert text.startswith("kind: seg\n")
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["command"] == ["train", "seg"]
    assert set(prov["versions"]) >= {"python", "tensorflow", "keras"} and prov["versions"]["keras"]
    assert "commit" in prov["code"]
    renamed = tmp_path / "my favourite run"
    run.rename(renamed)
    before = _tree(renamed)
    opened = open_run(renamed)
    assert opened.kind == "seg" and not opened.legacy and opened.config.model.size == 64
    assert _tree(renamed) == before  # opening writes nothing
    with pytest.raises(RunError, match="expected a gan run folder, found a seg run"):
        open_run(renamed, "gan")
    with pytest.raises(RunError, match="no best.keras or final.keras"):
        opened.model_path("best")


def test_open_run_refuses_what_is_no_run(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        open_run(tmp_path / "missing")
    with pytest.raises(RunError, match="no config.yaml"):
        open_run(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.yaml").write_text("name: x\n")
    with pytest.raises(RunError, match="cannot tell the kind"):
        open_run(odd)
    (odd / "config.yaml").write_text("kind: seg\ntrain:\n  lr: -1\n")
    with pytest.raises(RunError, match="train.lr"):
        open_run(odd)


def test_old_gan_folder_is_migrated_and_recognised_by_its_files(tmp_path):
    """A folder written before the config layer: no kind, data.hflip + untyped augment, the split
    seed in train.seed, renamed so that its name says nothing."""
    old = tmp_path / "renamed"
    old.mkdir()
    cfg = yaml.safe_load(yaml.safe_dump({"preset": "tiny", "model": {"size": 64}, "train": {"seed": 7},
                                         "data": {"data": None, "hflip": False, "augment": {"rotation": 5.0},
                                                  "n_phantom": 50}}))
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    (old / "generator_ema.keras").write_bytes(b"")
    run = open_run(old)
    assert run.kind == "gan" and run.legacy
    aug = run.config.data.augment
    assert aug.hflip is False and aug.rotation == 5.0 and aug.p_intensity == 0.0  # GAN defaults kept
    assert run.config.data.seed == 7 and run.config.data.n_phantom == 50


def test_cli_errors_are_one_line_and_leave_no_folder(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(["seg", "--data", str(tmp_path / "missing.h5"), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "missing.h5" in err[-1] and "does not exist" in err[-1]
    assert not runs.exists() or not any(runs.iterdir())
    assert train(["seg", "--set", "train.lr=-1", "--runs-dir", str(runs)]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())
    assert evaluate([str(tmp_path / "not" / "a" / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    (tmp_path / "plain").mkdir()
    assert evaluate([str(tmp_path / "plain")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_train_help_lists_the_main_job(capsys):
    with pytest.raises(SystemExit):
        train(["--help"])
    out = capsys.readouterr().out
    assert "main" in out and "the main job" in out and "--budget" in out


@pytest.mark.parametrize("kind, preset", [("gan", "spade"), ("gan", "tiny"), ("seg", "camus")])
def test_preset_config_round_trips_through_a_run_folder(tmp_path, kind, preset):
    cfg = (gan_preset if kind == "gan" else seg_preset)(preset)
    assert_config_round_trip(cfg, tmp_path, f"{kind}/config.yaml",
                             save=lambda c, path: create_run(kind, c, run_dir=path.parent),
                             load=lambda path: open_run(path.parent, kind).config)
    shutil.rmtree(tmp_path / kind)


def test_run_dataset_recorded_else_resolved_without_rewriting_the_run(tmp_path):
    cfg = gan_preset("tiny")
    cfg.data.n_phantom = 4
    create_run("gan", cfg, run_dir=tmp_path / "g")
    run = open_run(tmp_path / "g", "gan")
    assert run.data is None
    path = run.dataset()  # no record: the config's phantom, at the GAN's model.size
    assert path.parent == tmp_path / "g" / "data"
    assert h5layout.read_root_attrs(path)["size"] == 64 and h5layout.read_root_attrs(path)["n_patients"] == 4
    assert not (tmp_path / "g" / "data.json").exists()  # reading a run does not change it
    other = tmp_path / "other.h5"
    shutil.copy(path, other)
    record_data(tmp_path / "g", other)
    assert open_run(tmp_path / "g", "gan").dataset() == other.resolve()  # the record wins
    assert open_run(tmp_path / "g", "gan").dataset(str(path)) == path  # an explicit dataset wins
    other.unlink()  # a record whose file is gone: resolved again from the config
    assert open_run(tmp_path / "g", "gan").dataset() == path
