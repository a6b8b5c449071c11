"""No leak between the GAN and the U-Net: one split definition (``data.seed`` in both configs),
source patients recorded in synthetic sets, and a refusal naming the held-out patients."""

import numpy as np
import pytest

from cardigan_tf.configs.gan import preset_config as gan_preset
from cardigan_tf.configs.seg import preset_config as seg_preset
from cardigan_tf.data.h5layout import H5Writer, list_patients
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.source import resolve_data
from cardigan_tf.data.synthetic import check_synthetic_set
from cardigan_tf.train import main

from camus_fixtures import write_2023_tree


def _synthetic(path, patients, size=64):
    rng = np.random.default_rng(0)
    attrs = {"kind": "synthetic", "source_layout": "synthetic", "size": size,
             "provenance": {"source_patients": sorted(patients)}}
    with H5Writer(path, attrs=attrs) as w:
        for i, p in enumerate(sorted(patients)):
            mask = np.zeros((1, size, size), np.uint8)
            mask[0, 16:40, 20:44] = 1
            w.write_view("train", f"{p}_x{i:04d}_ED", "2CH", rng.random((1, size, size)).astype(np.float32), mask,
                         phases=["ED"], spacing=(0.3, 0.3), original_shape=(size, size))
    return path


def test_two_seeds_split_a_folder_differently_and_the_unet_refuses_the_other_gans_set(tmp_path, capsys):
    folder = tmp_path / "camus2023"
    write_2023_tree(folder, n=12, split=False)  # no official lists: a seeded split
    # the GAN and the U-Net name their split with the same key
    assert hasattr(gan_preset("tiny").data, "seed") and hasattr(seg_preset("tiny").data, "seed")
    h5_gan = resolve_data(folder, tmp_path / "gan_data", size=64, seed=1)  # a standalone GAN with data.seed=1
    h5_seg = resolve_data(folder, tmp_path / "seg_data", size=64, seed=0)  # the U-Net with data.seed=0
    gan_train = set(list_patients(h5_gan)["train"])
    held_out = set(list_patients(h5_seg)["valid"]) | set(list_patients(h5_seg)["test"])
    leaked = sorted(gan_train & held_out)
    assert leaked, "the two seeds should split the 12 patients differently"
    syn = _synthetic(tmp_path / "synth.h5", gan_train)
    check_synthetic_set(syn, h5_gan, size=64)  # same split definition: accepted
    with pytest.raises(DataError) as info:
        check_synthetic_set(syn, h5_seg, size=64)
    for p in leaked:
        assert p in str(info.value)
    runs = tmp_path / "runs"
    assert main(["seg", "--data", str(h5_seg), "--synthetic", str(syn), "--synthetic-fraction", "0.5",
                 "--runs-dir", str(runs), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and leaked[0] in err and str(syn) in err
    assert not runs.exists() or not any(runs.iterdir())
    # a CAMUS folder is split only once resolved: the check runs then, and the new folder goes away
    assert main(["seg", "--data", str(folder), "--synthetic", str(syn), "--synthetic-fraction", "0.5",
                 "--runs-dir", str(runs), "--epochs", "1"]) == 2
    assert leaked[0] in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())
