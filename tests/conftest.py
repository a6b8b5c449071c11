"""Test configuration (TensorFlow backend, quiet logs, CPU only) and the session-scoped data
and trained runs that several tests read.

Each fixture below builds its data or trains its run ONCE per test session, from the tiny
presets of :mod:`harness`. Tests only read them: a test that changes a run (resume, rename,
overwrite) copies it into its own ``tmp_path`` first (``shutil.copytree``).
"""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cardigan_tf import runtime  # noqa: E402
from cardigan_tf.config import load_config  # noqa: E402
from cardigan_tf.configs.gan import GanConfig, build_config, network_configs  # noqa: E402
from cardigan_tf.configs.seg import SegConfig  # noqa: E402
from cardigan_tf.data import h5layout, phantom  # noqa: E402
from cardigan_tf.export import main as export_main  # noqa: E402
from cardigan_tf.jobs.evaluation import evaluate_run  # noqa: E402
from cardigan_tf.jobs.gan import train_gan  # noqa: E402
from cardigan_tf.jobs.seg import train_seg  # noqa: E402
from cardigan_tf.models.generator import build_generator  # noqa: E402
from cardigan_tf.models.saving import load_network  # noqa: E402
from cardigan_tf.runs import open_run  # noqa: E402
from cardigan_tf.train import main as train_main  # noqa: E402

import harness  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def phantom_h5(tmp_path_factory):
    """A prepared phantom dataset: 10 patients (8 train, 1 valid, 1 test), seed 0, 64x64."""
    return phantom.write_h5(tmp_path_factory.mktemp("phantom") / "phantom.h5", n_patients=10, seed=0, size=64,
                            preview=False)


@pytest.fixture(scope="session")
def two_cpus(phantom_h5, tmp_path_factory):
    """Every script of :data:`harness.TWO_CPU_SCRIPTS` run in a fresh process with two logical
    CPU devices (configured before TensorFlow starts), one process for all but those that ask for
    their own: ``{name: {"ok", "stdout", "error"}}``."""
    folder = tmp_path_factory.mktemp("two_cpus")
    shared = {name: src for name, (src, own) in harness.TWO_CPU_SCRIPTS.items() if not own}
    groups = ([shared] if shared else []) + [{name: src} for name, (src, own) in harness.TWO_CPU_SCRIPTS.items() if own]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), KERAS_BACKEND="tensorflow")
    results = {}
    for i, scripts in enumerate(groups):
        (folder / f"scripts{i}.json").write_text(json.dumps(scripts))
        res = subprocess.run([sys.executable, "-c", harness.TWO_CPU_RUNNER, str(folder / f"scripts{i}.json"),
                              json.dumps({"phantom_h5": str(phantom_h5)})], env=env, capture_output=True,
                             text=True, timeout=600)
        lines = [line for line in res.stdout.splitlines() if line.startswith("TWO-CPUS ")]
        assert res.returncode == 0 and lines, res.stderr[-3000:]
        results.update(json.loads(lines[-1][len("TWO-CPUS "):]))
    return results


# ----------------------------------------------------------------------------- U-Net runs
@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """``python -m cardigan_tf.train seg --epochs 2`` with :data:`harness.SEG_TINY`, straight
    through, deterministic (``runtime.enable_determinism(7)``): the run folder."""
    root = tmp_path_factory.mktemp("seg_runs")
    runtime.enable_determinism(7)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_main(["seg", "--epochs", "2", "--runs-dir", str(root), "--name", "cli",
                           *harness.sets(harness.SEG_TINY)]) == 0
    return root / out.getvalue().strip().splitlines()[-1].split("/")[-1]


@pytest.fixture(scope="session")
def key_seg_run(tmp_path_factory):
    """The key U-Net: preset tiny (64x64, depth 4, base 16) on the phantom, trained by
    :data:`harness.SEG_KEY` to reach LV endo Dice >= 0.80 on held-out patients."""
    runtime.enable_determinism(0)
    return train_seg(load_config(SegConfig, None, harness.SEG_KEY), runs_dir=tmp_path_factory.mktemp("key_runs"))


@pytest.fixture(scope="session")
def key_seg_evaluation(key_seg_run):
    """(summary, folder) of the key U-Net evaluated on its test split (``eval-test/`` in the run)."""
    return evaluate_run(key_seg_run, split="test"), key_seg_run / "eval-test"


# ----------------------------------------------------------------------------- GAN runs
@pytest.fixture(scope="session")
def gan_run(tmp_path_factory):
    """``python -m cardigan_tf.train gan --steps 6`` with :data:`harness.GAN_TINY` (32x32),
    eager steps, checkpoints and samples every 3 steps, straight through: the run folder. (The
    traced GAN step runs in the main job's GAN and in ``bench gan``.)"""
    runs = tmp_path_factory.mktemp("gan_runs")
    argv = ["gan", "--steps", "6", "--runs-dir", str(runs), "--name", "straight",
            *harness.sets(harness.GAN_TINY, harness.GAN_EAGER_6)]
    assert train_main(argv) == 0
    return harness.latest(runs.glob("gan-straight-*"))


@pytest.fixture(scope="session")
def generate_gan(phantom_h5, tmp_path_factory):
    """A mask-only GAN (64x64, 2 steps) trained on 5 of the 8 training patients of
    ``phantom_h5``: ``(run folder, data, patients it saw)``."""
    subset = h5layout.list_patients(phantom_h5)["train"][:5]
    cfg = build_config("tiny", None, [*harness.GAN_GENERATE, f"data.data={phantom_h5}",
                                      f"data.train_patients={subset}"])
    return train_gan(cfg, run_dir=tmp_path_factory.mktemp("generate") / "gan-tiny"), phantom_h5, subset


@pytest.fixture(scope="session")
def gan_z_run(tmp_path_factory):
    """A style-z GAN (32x32, z_dim 8, 2 eager steps, :data:`harness.GAN_Z`): the run folder.

    Its EMA generator is then replaced by one of the same architecture with weights of unit
    gain (Xavier x 1 instead of x 0.02): 2 training steps leave the generator drawing a flat
    grey image whatever the mask and z, which would make every image comparison of the export
    tests vacuous; this one draws grey levels that depend on both."""
    run = train_gan(load_config(GanConfig, None, harness.GAN_Z), runs_dir=tmp_path_factory.mktemp("gan_z"))
    keras.utils.set_random_seed(0)
    g_cfg = dataclasses.replace(network_configs(open_run(run, "gan").config.model)[0], init_gain=1.0)
    generator = build_generator(g_cfg)
    assert [w.shape for w in generator.weights] == [w.shape for w in load_network(run / "generator_ema.keras").weights]
    keras.saving.save_model(generator, run / "generator_ema.keras")
    return run


# ----------------------------------------------------------------------------- exports
@pytest.fixture(scope="session")
def exported(seg_run, gan_z_run, tmp_path_factory):
    """``python -m cardigan_tf.export`` of :func:`seg_run` (with ONNX) and :func:`gan_z_run`
    into one model base folder (``seg/1``, ``gan/1``, ``models.config``)."""
    base = tmp_path_factory.mktemp("export") / "models"
    assert export_main([str(seg_run), "--out", str(base), "--onnx"]) == 0
    assert export_main([str(gan_z_run), "--out", str(base)]) == 0
    return base


# ----------------------------------------------------------------------------- study
@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """``python -m cardigan_tf.train study`` with :data:`harness.STUDY_TINY`: the study folder."""
    runs = tmp_path_factory.mktemp("study_runs")
    assert train_main(["study", *harness.sets(harness.STUDY_TINY), "--runs-dir", str(runs)]) == 0
    return harness.latest(runs.glob("study-tiny-*"))
