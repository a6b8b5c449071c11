"""``python -m cardigan_tf.generate``: synthetic sets from a tiny GAN (64x64, a few steps).

A generated set round-trips through the tf.data pipeline, carries its provenance, never holds a
validation or test patient, only valid masks, and is never overwritten silently.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cardigan_tf.data import h5layout
from cardigan_tf.data import masks as mask_rules
from cardigan_tf.data.masks import check_mask
from cardigan_tf.data.pipeline import make_dataset
from cardigan_tf.files import OverwriteError
from cardigan_tf.jobs import generation
from cardigan_tf.jobs.generation import generate_set


@pytest.fixture(scope="module")
def gan_run(generate_gan, tmp_path_factory):
    """The session's ``generate_gan`` and a fresh output folder: (run, data, out folder, patients it saw)."""
    run_dir, data, subset = generate_gan
    return run_dir, data, tmp_path_factory.mktemp("generated"), subset


@pytest.fixture(scope="module")
def real_set(gan_run):
    run_dir, _, root, _ = gan_run
    return generate_set(run_dir, root / "real.h5", masks="real", seed=3)


def _source_patients(path):
    out = set()
    for split, s in h5layout.iter_samples(path, ["train"]):
        out.add(s.meta.get("source_patient") or s.patient.rsplit("_x", 1)[0])
    return out


def _check_set(path, gan_run, mask_source, n=None):
    run_dir, data, _, subset = gan_run
    splits = h5layout.list_patients(path)
    assert list(splits) == ["train"]
    arrays = h5layout.load_arrays(path, "train")
    if n is not None:
        assert len(arrays["mask"]) == n
    assert arrays["image"].shape[1:] == (64, 64, 1)
    assert 0.0 <= arrays["image"].min() and arrays["image"].max() <= 1.0 and arrays["image"].std() > 0
    for m in arrays["mask"]:
        assert check_mask(m) == []
    # round trip through the pipeline
    b = min(2, len(arrays["mask"]))
    image, mask = next(iter(make_dataset(str(path), "train", size=64, batch_size=b)))
    assert tuple(image.shape) == (b, 64, 64, 1) and image.dtype.name == "float32"
    assert tuple(mask.shape) == (b, 64, 64) and mask.dtype.name == "int32"
    assert set(np.unique(mask.numpy())) <= {0, 1, 2, 3}
    # provenance
    attrs = h5layout.read_root_attrs(path)
    assert attrs["kind"] == "synthetic"
    prov = attrs["provenance"]
    assert prov["gan_run"] == str(run_dir.resolve()) and prov["checkpoint_step"] == 2
    assert prov["weights"] == "ema" and prov["mask_source"] == mask_source and "seed" in prov
    assert path.with_suffix(".png").is_file()
    # no validation / test patient; every source patient is one of the GAN's training patients
    real = h5layout.list_patients(data)
    held_out = set(real["valid"]) | set(real["test"])
    assert held_out and not held_out & set(prov["source_patients"])
    assert prov["source_patients"] == sorted(subset)
    sources = _source_patients(path)
    assert not sources & held_out and not sources & (set(real["train"]) - set(subset))
    return arrays, sources, set(subset)


def test_real_masks_round_trip_with_provenance(real_set, gan_run):
    arrays, sources, train = _check_set(real_set, gan_run, "real", n=5 * 4)
    assert sources == train  # every training mask of the GAN's patients used once
    real = h5layout.load_arrays(gan_run[1], "train", patients=gan_run[3])
    assert sorted(map(bytes, arrays["mask"])) == sorted(map(bytes, real["mask"]))


def test_refuses_overwrite_and_bad_arguments(real_set, gan_run):
    run_dir, _, root, _ = gan_run
    before = real_set.stat().st_mtime_ns
    with pytest.raises(OverwriteError, match="real.h5"):
        generate_set(run_dir, real_set, masks="real")
    assert real_set.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="deterministic"):
        generate_set(run_dir, root / "copies.h5", masks="real", per_mask=2)
    with pytest.raises(ValueError, match="masks"):
        generate_set(run_dir, root / "bad.h5", masks="drawn")
    assert not (root / "copies.h5").exists() and not (root / "bad.h5").exists()


def test_deformed_masks(gan_run):
    run_dir, _, root, _ = gan_run
    path = generate_set(run_dir, root / "deformed.h5", masks="deformed", n=6, seed=1)
    arrays, sources, train = _check_set(path, gan_run, "deformed", n=6)
    assert sources <= train
    real = {bytes(m) for m in h5layout.load_arrays(gan_run[1], "train")["mask"]}
    assert any(bytes(m) not in real for m in arrays["mask"])  # new anatomies, not copies


def test_sampled_masks(gan_run, monkeypatch):
    """Masks drawn from a mask VAE trained on the GAN's masks; the recorded number of rejected
    draws equals the failures of the validity check counted here, as the check is called."""
    run_dir, _, root, _ = gan_run
    failures = {"n": 0, "by_rule": {}}
    original = mask_rules.validity_check

    def counting_validity_check(*args, **kwargs):
        check = original(*args, **kwargs)

        def counted(mask):
            kept, failed = check(mask)
            if failed:
                failures["n"] += 1
                for rule in set(failed):
                    failures["by_rule"][rule] = failures["by_rule"].get(rule, 0) + 1
            return kept, failed

        return counted

    monkeypatch.setattr(generation, "validity_check", counting_validity_check)  # where generate_set looks it up
    path = generate_set(run_dir, root / "sampled.h5", masks="sampled", n=1, seed=0, vae_epochs=40)
    arrays, _, _ = _check_set(path, gan_run, "sampled")
    assert len(arrays["mask"]) == 1
    prov = h5layout.read_root_attrs(path)["provenance"]
    assert prov["rejected_masks"] == failures["n"]
    assert prov["rejected_by_rule"] == failures["by_rule"]


def test_cli_in_a_fresh_process(gan_run):
    run_dir, _, root, _ = gan_run
    out = root / "cli.h5"
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "cardigan_tf.generate", "--gan", str(run_dir), "--out", str(out),
                          "--n", "2", "--seed", "5"], capture_output=True, text=True, cwd=repo, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str(out)
    assert len(h5layout.load_arrays(out, "train")["mask"]) == 2
    assert h5layout.read_root_attrs(out)["provenance"]["seed"] == 5
