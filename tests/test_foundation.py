"""Config system, run folders, atomic writes and the HDF5 layout round trip."""

from dataclasses import dataclass, field

import h5py
import numpy as np
import pytest

from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.data import h5layout
from cardigan_tf.data.sample import DataError
from cardigan_tf.files import OverwriteError, atomic_path
from cardigan_tf.runs import new_run_dir

from harness import assert_config_round_trip


@dataclass
class _Inner:
    lr: float = 1e-4
    steps: int = 10


@dataclass
class _Cfg:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  steps: 5\n")
    cfg = load_config(_Cfg, path, ["inner.lr=0.5", "sizes=[3,4]", "name=abc"])
    assert cfg.inner.steps == 5 and cfg.inner.lr == 0.5 and cfg.sizes == [3, 4] and cfg.name == "abc"
    assert_config_round_trip(cfg, tmp_path, "out.yaml")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        load_config(_Cfg, None, ["inner.nope=1"])
    with pytest.raises(ConfigError, match="inner.steps"):
        load_config(_Cfg, None, ["inner.steps=abc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("extra: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*extra"):
        load_config(_Cfg, bad)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(OverwriteError):
        target.write_text("x")
        with atomic_path(target, overwrite=False):
            pass


def test_run_dirs_are_unique(tmp_path):
    a = new_run_dir(tmp_path, "gan", "t")
    b = new_run_dir(tmp_path, "gan", "t")
    assert a != b and (a / "checkpoints").is_dir() and (b / "samples").is_dir()


def test_h5_layout_round_trip(tmp_path, rng):
    path = tmp_path / "d.h5"
    im = rng.random((2, 16, 12)).astype(np.float32)
    gt = rng.integers(0, 4, (2, 16, 12)).astype(np.uint8)
    with h5layout.H5Writer(path, attrs={"source_layout": "test"}) as w:
        w.write_view("train", "patient0001", "2CH", im, gt, spacing=(0.154, 0.308),
                     original_shape=(843, 512), quality="Good", cfg={"LVef": 55.0})
    with pytest.raises(OverwriteError):
        h5layout.H5Writer(path)
    samples = list(h5layout.iter_samples(path))
    assert [(s.phase, sp) for sp, s in samples] == [("ED", "train"), ("ES", "train")]
    s = samples[1][1]
    np.testing.assert_array_equal(s.image[..., 0], im[1])
    np.testing.assert_array_equal(s.mask, gt[1])
    assert s.spacing == (0.154, 0.308) and s.original_shape == (843, 512) and s.quality == "Good"
    assert s.meta["cfg"] == {"LVef": 55.0}
    arrays = h5layout.load_arrays(path, "train", phases=["ES"])
    assert arrays["image"].shape == (1, 16, 12, 1) and arrays["phase"].tolist() == ["ES"]


def test_h5_layout_rejects_bad_labels(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["train/patient0001/2CH/im"] = np.zeros((2, 8, 8), np.float32)
        f["train/patient0001/2CH/gt"] = np.full((2, 8, 8), 7, np.uint8)
    with pytest.raises(DataError, match=r"patient0001/2CH/gt.*outside"):
        list(h5layout.iter_samples(path))


def test_config_float_accepts_yaml_exponent_strings():
    # PyYAML reads "1e-4" (no dot) as a string; float fields must still accept it.
    cfg = load_config(_Cfg, None, ["inner.lr=1e-4"])
    assert cfg.inner.lr == 1e-4
    with pytest.raises(ConfigError, match="inner.lr"):
        load_config(_Cfg, None, ["inner.lr=fast"])
