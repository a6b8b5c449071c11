"""``python -m cardigan_tf.train study``: a tiny study (one training fraction, synthetic
fractions 0 and 0.5, one seed) end to end, its tables, plot, GAN quality report and resume."""

import csv
import json

import keras
import numpy as np
import pytest
import yaml

from cardigan_tf.data import h5layout
from cardigan_tf.data.splits import subset_patients
from cardigan_tf.files import OverwriteError
from cardigan_tf.jobs.gan_quality import gan_quality_report
from cardigan_tf.jobs.study import gan_train_patients
from cardigan_tf.metrics.synthesis import fid
from cardigan_tf.models.features import bottleneck_layer
from cardigan_tf.train import main


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tables_plot_and_report(tiny_study):
    study = tiny_study
    cells = _rows(study / "cells.csv")
    assert sorted((r["train_fraction"], r["synthetic_fraction"], r["exposure"], r["seed"]) for r in cells) == [
        ("0.5", "0.0", "", "0"), ("0.5", "0.5", "add", "0"), ("0.5", "0.5", "replace", "0")]
    results = _rows(study / "results.csv")
    assert sorted((r["synthetic_fraction"], r["exposure"]) for r in results) == [
        ("0.0", ""), ("0.5", "add"), ("0.5", "replace")]
    for r in results:
        assert 0.0 <= float(r["lv_endo_dice_mean"]) <= 1.0 and r["n_seeds"] == "1"
    table = (study / "results.md").read_text()
    assert table.startswith("| train fraction | synthetic fraction | exposure | seeds | LV endo Dice")
    assert len([line for line in table.splitlines() if line.startswith("| 0.50 |")]) == 3
    tests = _rows(study / "wilcoxon.csv")
    assert sorted((r["exposure"], r["structure"], r["metric"]) for r in tests) == [
        (a, s, m) for a in ("add", "replace") for s in ("la", "lv_endo", "lv_epi") for m in ("dice", "hd", "mad")]
    assert all(r["synthetic_fraction"] == "0.5" for r in tests)
    test_patients = h5layout.list_patients(study / "data" / "phantom.h5")["test"]
    assert 0 < len(test_patients) < 6  # the tiny phantom: too few patients for any test
    for r in tests:
        assert r["pvalue"] == "" and r["pvalue_holm"] == "" and r["significant"] == ""
        assert r["distance_unit"] == "mm"  # the phantom records its spacing
        if r["metric"] == "dice":  # every phantom image has all three structures: Dice is always finite
            assert r["n_patients"] == str(len(test_patients)) and r["n_seeds"] == "1"
            assert r["n_image_pairs"] == str(4 * len(test_patients))
            assert float(r["ci_low"]) <= float(r["mean_diff"]) <= float(r["ci_high"])
        else:  # HD/MAD are undefined (dropped) where the 2-step U-Net predicts nothing
            assert int(r["n_patients"]) <= len(test_patients)
            assert int(r["n_image_pairs"]) <= 4 * len(test_patients)
    assert (study / "dice_vs_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (study / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (study / "report.md").read_text()
    assert table.strip() in report
    assert "](dice_vs_synthetic.png)" in report and "](samples.png)" in report
    assert "## GAN quality" in report and "gan-f0.5-seed0" in report
    assert "no two-sided signed-rank test can reach p < 0.05" in report and "95% CI" in report
    assert "significant" not in report.replace("nothing is called significant", "").replace(
        '"significant" means', "")  # nothing is called significant without a corrected test
    assert "| LV endo | HD | " in report and "mm |" in report


def test_gan_saw_only_its_training_subset(tiny_study):
    study = tiny_study
    data = study / "data" / "phantom.h5"
    splits = h5layout.list_patients(data)
    subset = subset_patients(splits["train"], 0.5, seed=0)
    assert len(subset) == 4
    gan_dir = study / "gans" / "gan-f0.5-seed0"
    assert yaml.safe_load((gan_dir / "config.yaml").read_text())["data"]["train_patients"] == subset
    seen = gan_train_patients(gan_dir)
    assert seen == subset
    assert not set(seen) & (set(splits["valid"]) | set(splits["test"]))
    prov = h5layout.read_root_attrs(study / "synthetic" / "synth-f0.5-seed0.h5")["provenance"]
    assert prov["source_patients"] == subset
    cell = json.loads((study / "cells" / "seg-f0.5-s0.5-add-seed0" / "result.json").read_text())
    assert cell["n_train_patients"] == 4
    # the synthetic set is drawn by the checkpoint chosen on validation masks with the fraction-0 U-Net
    selection = json.loads((gan_dir / "selection.json").read_text())
    assert selection["scorer"].endswith("seg-f0.5-s0-seed0") and selection["split"] == "valid"
    assert prov["weights"] == "selected" and (gan_dir / "generator_selected.keras").is_file()
    assert "## GAN checkpoint and like-for-like quality" in (study / "report.md").read_text()


def test_exposure_arms_hold_real_samples_or_steps_fixed(tiny_study):
    """add: the same real samples as the cell without synthetic data, synthetic ones on top;
    replace: the same steps, synthetic samples in real ones' places (STUDY_TINY: 2 steps of 4)."""
    cells = {r["exposure"]: r for r in _rows(tiny_study / "cells.csv")}
    base, add, replace = cells[""], cells["add"], cells["replace"]
    assert int(base["real_samples_seen"]) == 8 and int(base["synthetic_samples_seen"]) == 0
    assert int(add["real_samples_seen"]) == int(base["real_samples_seen"])
    assert int(add["synthetic_samples_seen"]) == 8 and int(add["steps"]) == 2 * int(base["steps"]) == 4
    assert int(replace["steps"]) == int(base["steps"])
    assert int(replace["real_samples_seen"]) == int(replace["synthetic_samples_seen"]) == 4
    metrics = json.loads((tiny_study / "cells" / "seg-f0.5-s0.5-add-seed0" / "metrics.json").read_text())
    assert metrics["exposure"] == "add" and metrics["synthetic_share"] == 0.5
    assert metrics["samples_seen"] == {"real": 8, "synthetic": 8}
    primary = _rows(tiny_study / "primary.csv")
    assert sorted(r["exposure"] for r in primary) == ["add", "replace"]
    assert {r["real_seen_none"] for r in primary} == {"8.0"}


def test_gan_quality_report(tiny_study):
    study = tiny_study
    qdir = study / "gans" / "gan-f0.5-seed0" / "quality"
    q = json.loads((qdir / "quality.json").read_text())
    assert q["feature_network"] == "unet_encoder" and q["seg_run"].endswith("seg-f0.5-s0-seed0")
    for s in ("lv_endo", "lv_epi", "la"):
        assert set(q["segmentation_consistency"][s]) == {"synthetic", "real_test"}
    gen = q["distances"]["synthetic_vs_real_train"]
    assert gen["n_other"] == q["n_synthetic"] == 16 and gen["n_real"] == q["n_real_train"] == 16
    # FID recomputed here: bottleneck features of the real-trained U-Net, globally average pooled,
    # of the real training images of the GAN's patients and of the synthetic images
    synth, seg = study / "synthetic" / "synth-f0.5-seed0.h5", study / "cells" / "seg-f0.5-s0-seed0"
    unet = keras.saving.load_model(seg / "best.keras", compile=False)
    encoder = keras.Model(unet.inputs[0], bottleneck_layer(unet).output)

    def features(images):
        return np.asarray(encoder(images, training=False)).mean(axis=(1, 2)).astype(np.float64)

    patients = h5layout.read_root_attrs(synth)["provenance"]["source_patients"]
    real = features(h5layout.load_arrays(study / "data" / "phantom.h5", "train", patients=patients)["image"])
    fake = features(h5layout.load_arrays(synth, "train")["image"])
    assert gen["dim"] == real.shape[1]
    test = features(h5layout.load_arrays(study / "data" / "phantom.h5", "test")["image"])
    assert gen["fid"] == pytest.approx(fid(real, fake), rel=1e-3)
    assert q["distances"]["real_test_vs_real_train"]["fid"] == pytest.approx(fid(real, test), rel=1e-3)
    assert fid(real, real) < 1e-3 * gen["fid"]  # identical sets: ~0; a 2-step GAN's images are far from real
    assert "U-Net encoder" in (qdir / "quality.md").read_text()
    assert (qdir / "consistency.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(OverwriteError):
        gan_quality_report(synth, seg, out_dir=qdir)
    with pytest.raises(FileNotFoundError, match="InceptionV3"):
        gan_quality_report(synth, seg, out_dir=study / "q-inception", inception_weights=study / "none.h5")
    assert not (study / "q-inception").exists()


def test_resume_trains_nothing_new(tiny_study):
    study = tiny_study
    outputs = [*study.glob("cells/*/best.keras"), *study.glob("cells/*/result.json"),
               *study.glob("gans/*/generator_ema.keras"), *study.glob("synthetic/*.h5"),
               *study.glob("gans/*/quality/quality.json")]
    assert len(outputs) == 9
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert main(["study", "--resume", str(tiny_study)]) == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert sorted(p.name for p in study.glob("cells/*")) == ["seg-f0.5-s0-seed0", "seg-f0.5-s0.5-add-seed0",
                                                             "seg-f0.5-s0.5-replace-seed0"]
    assert len(_rows(study / "cells.csv")) == 3
