"""The key test (tiny U-Net on the phantom reaches Dice LV endo >= 0.80 on held-out patients)
and the evaluate CLI's outputs, on the session's ``key_seg_run`` and its ``key_seg_evaluation``."""

import csv
import json
import math
import shutil

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from cardigan_tf.data.h5layout import H5Writer, iter_samples, list_patients
from cardigan_tf.evaluate import main
from cardigan_tf.files import OverwriteError
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.metrics.segmentation import resize_to_original
from cardigan_tf.runs import open_run


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_unet_reaches_dice_on_held_out_phantom_patients(key_seg_run, key_seg_evaluation):
    summary, out = key_seg_evaluation
    data = json.loads((key_seg_run / "data.json").read_text())["path"]
    splits = list_patients(data)
    rows = _read_csv(out / "per_image.csv")
    assert {r["patient"] for r in rows} == set(splits["test"])
    assert not set(splits["test"]) & set(splits["train"])
    dice = summary["by_phase"]["all"]["lv_endo"]["dice"]
    assert dice["n"] == len(rows) == 4 * len(splits["test"])
    assert dice["mean"] >= 0.80, summary["by_phase"]["all"]


def test_evaluate_writes_report_files(key_seg_evaluation):
    summary, out = key_seg_evaluation
    for name in ("per_image.csv", "clinical.csv", "summary.json", "report.md", "bland_altman_ef.png"):
        assert (out / name).is_file(), name
    worst = sorted((out / "worst").glob("*.png"))
    assert len(worst) == 6

    assert Image.open(worst[0]).size[0] > 3 * 64
    clin = _read_csv(out / "clinical.csv")
    assert len(clin) == summary["n_patients"]
    assert set(summary["clinical_agreement"]) >= {"ef_vs_gt", "edv_vs_gt", "esv_vs_gt", "ef_vs_cfg"}
    # a patient whose volume could not be measured (a reason recorded) leaves the agreement, counted
    measured = [r for r in clin if not r["reason_pred"] and not r["reason_gt"]]
    assert summary["clinical_agreement"]["edv_vs_gt"]["n"] == len(measured) >= len(clin) - 1
    assert summary["clinical_not_measured"] == len(clin) - len(measured)
    # the worst case is the lowest LV endo Dice of the CSV
    rows = _read_csv(out / "per_image.csv")
    lowest = min(rows, key=lambda r: float(r["lv_endo_dice"]))
    assert worst[0].name == f"01_{lowest['patient']}_{lowest['view']}_{lowest['phase']}.png"


def test_csv_json_markdown_are_consistent(key_seg_evaluation):
    summary, out = key_seg_evaluation
    rows = _read_csv(out / "per_image.csv")
    assert set(rows[0]) >= {"patient", "view", "phase", "quality", "lv_endo_dice", "lv_endo_hd", "lv_endo_mad",
                            "lv_endo_missing", "lv_epi_dice", "la_hd", "la_missing"}
    saved = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    for phase in ("ED", "ES"):
        for s in ("lv_endo", "lv_epi", "la"):
            for metric in ("dice", "hd", "mad"):
                v = np.array([float(r[f"{s}_{metric}"]) for r in rows if r["phase"] == phase])
                v = v[np.isfinite(v)]
                stat = saved["by_phase"][phase][s][metric]
                assert stat["mean"] == pytest.approx(v.mean(), rel=1e-6)
                assert stat["sd"] == pytest.approx(v.std(ddof=1), rel=1e-6)
        st = saved["by_phase"][phase]["lv_endo"]
        line = f"| LV endo | {phase} | {st['dice']['mean']:.3f} ± {st['dice']['sd']:.3f} | {st['hd']['mean']:.2f} ± "
        assert line in report
    assert "EF (%)" in report and "Bland-Altman" in report


def test_results_broken_down_by_image_quality_and_style(key_seg_evaluation):
    """Per quality level (and acquisition style): Dice, HD, MAD per structure with the images and
    patients of each, equal to the per-image CSV regrouped here."""
    summary, out = key_seg_evaluation
    rows = _read_csv(out / "per_image.csv")
    report = (out / "report.md").read_text()
    assert {r["style"] for r in rows} == {"A"}  # the phantom records its acquisition style
    assert "## By image quality" in report and "## By acquisition style" in report
    for key, groups, patients in (("quality", summary["by_quality"], summary["patients_by_quality"]),
                                  ("style", summary["by_style"], summary["patients_by_style"])):
        assert set(groups) - {"all"} == {r[key] for r in rows}
        for g in {r[key] for r in rows}:
            mine = [r for r in rows if r[key] == g]
            assert patients[g] == len({r["patient"] for r in mine})
            for s in ("lv_endo", "lv_epi", "la"):
                dice = np.array([float(r[f"{s}_dice"]) for r in mine])
                st = groups[g][s]["dice"]
                assert st["n"] + st["nan"] == len(mine)
                assert st["mean"] == pytest.approx(np.nanmean(dice), rel=1e-9)
            st = groups[g]["lv_endo"]
            assert (f"| {g} | {len(mine)} | {patients[g]} | LV endo | {st['dice']['mean']:.3f} ± {st['dice']['sd']:.3f} | "
                    f"{st['hd']['mean']:.2f} ± {st['hd']['sd']:.2f} |") in report
    # the quality levels come in CAMUS' order
    order = [q for q in ("Good", "Medium", "Poor") if q in summary["by_quality"]]
    at = [report.index(f"| {q} | ") for q in order]
    assert at == sorted(at)


def test_evaluate_refuses_overwrite_and_cli(key_seg_run, key_seg_evaluation, tmp_path, capsys):
    with pytest.raises(OverwriteError):
        evaluate_run(key_seg_run, split="test")
    out = tmp_path / "ev"
    assert main([str(key_seg_run), "--postprocess", "--out", str(out), "--split", "valid"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["postprocess"] is True and summary["split"] == "valid"
    capsys.readouterr()
    assert main([str(key_seg_run), "--out", str(out)]) == 2  # one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "--overwrite" in err[-1] and "Traceback" not in "".join(err)
    assert main([str(key_seg_run), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["postprocess"] is False


def test_original_resolution_reference_uses_original_spacing(key_seg_run, key_seg_evaluation, tmp_path):
    """Data with gt_ref at another resolution: the prediction is resized back and metrics use the
    original spacing; the figures agree with the working-size evaluation of the same masks."""
    summary_work, _ = key_seg_evaluation
    data = json.loads((key_seg_run / "data.json").read_text())["path"]
    ref_shape = (128, 96)
    groups = {}
    for _, s in iter_samples(data, ["test"]):
        groups.setdefault((s.patient, s.view), []).append(s)
    path = tmp_path / "ref.h5"
    with H5Writer(path, attrs={"source_layout": "test"}) as w:
        for (patient, view), ss in groups.items():
            work_spacing = ss[0].spacing  # phantom: original == working grid
            w.write_view("test", patient, view, np.stack([s.image[..., 0] for s in ss]), np.stack([s.mask for s in ss]),
                         phases=[s.phase for s in ss],
                         gt_ref=np.stack([resize_to_original(s.mask, ref_shape) for s in ss]),
                         spacing=(work_spacing[0] * 64 / ref_shape[0], work_spacing[1] * 64 / ref_shape[1]),
                         original_shape=ref_shape, quality=ss[0].quality, cfg=ss[0].meta["cfg"])
    summary_ref = evaluate_run(key_seg_run, data=str(path), split="test", out=tmp_path / "ev_ref")
    assert summary_ref["gt_resolution"] == "original"
    rows = _read_csv(tmp_path / "ev_ref" / "per_image.csv")
    assert {r["gt_source"] for r in rows} == {"ref"}
    assert "style" not in rows[0] and "by_style" not in summary_ref  # a file without styles
    for s in ("lv_endo", "lv_epi"):
        a = summary_work["by_phase"]["all"][s]
        b = summary_ref["by_phase"]["all"][s]
        # the original-grid prediction is the smooth (bilinear) upsampling of the probabilities,
        # the reference the nearest-upsampled working mask: about one percent of Dice apart
        assert b["dice"]["mean"] == pytest.approx(a["dice"]["mean"], abs=0.02)
        # same physical contours: mean distances in mm agree within about one working pixel (~2.3 mm);
        # the original-grid prediction is the bilinear upsampling of the probabilities (smoother than
        # the working grid's blocks), so the maximum distance may move by up to ~2 working pixels
        assert math.isclose(b["mad"]["mean"], a["mad"]["mean"], abs_tol=1.5)
        assert math.isclose(b["hd"]["mean"], a["hd"]["mean"], abs_tol=6.0)


def test_renamed_and_old_run_folders_still_evaluate_and_resume(key_seg_run, key_seg_evaluation, tmp_path):
    """A run folder renamed, and one written before config.yaml recorded its kind: both are
    recognised (by the recorded kind, else by their files), key_seg_evaluation and resumed."""
    renamed = tmp_path / "my run"
    shutil.copytree(key_seg_run, renamed, ignore=shutil.ignore_patterns("eval-*"))
    cfg = yaml.safe_load((renamed / "config.yaml").read_text())
    assert cfg.pop("kind") == "seg"
    (renamed / "config.yaml").write_text(yaml.safe_dump(cfg))  # as written before the change
    run = open_run(renamed)
    assert run.kind == "seg" and run.legacy
    summary = evaluate_run(renamed, split="test")
    assert summary["n_images"] == key_seg_evaluation[0]["n_images"]
    assert summary["by_phase"]["all"]["lv_endo"]["dice"]["mean"] == pytest.approx(
        key_seg_evaluation[0]["by_phase"]["all"]["lv_endo"]["dice"]["mean"], abs=1e-6)
    epochs = run.config.train.epochs
    run.config.train.epochs = epochs + 1
    train_seg(run.config, resume=renamed)
    metrics = json.loads((renamed / "metrics.json").read_text())
    assert metrics["epochs_completed"] == epochs + 1
    assert open_run(renamed).kind == "seg" and not open_run(renamed).legacy  # the kind is recorded now


def test_seed_layout_without_spacing_reports_pixels_not_mm(key_seg_run, key_seg_evaluation, tmp_path):
    """CREATIS' camus05_256.hdf5 records no spacing: HD and MAD come in pixels of the original
    grid and say so, volumes are left out, EF is kept with a warning; --spacing gives mm and ml."""
    data = json.loads((key_seg_run / "data.json").read_text())["path"]
    path = tmp_path / "camus05_like.hdf5"
    with h5py.File(path, "w") as fh:  # the CREATIS layout: no attributes at all
        for _, s in iter_samples(data, ["test"]):
            grp = fh.require_group(f"test/{s.patient}/{s.view}")
            for key, arr in (("im", s.image[..., 0]), ("gt", s.mask)):
                if key not in grp:
                    grp.create_dataset(key, data=np.zeros((2, *arr.shape), arr.dtype))
                grp[key][0 if s.phase == "ED" else 1] = arr
            for key in ("im_ref", "gt_ref"):
                if key not in grp:
                    grp[key] = grp[key[:2]]
    px = evaluate_run(key_seg_run, data=str(path), split="test", out=tmp_path / "px")
    assert px["spacing_known"] is False and px["units"]["hd"] == "px" and px["units"]["edv"] is None
    assert px["warnings"] and "px" in (tmp_path / "px" / "report.md").read_text()
    assert "HD (px)" in (tmp_path / "px" / "report.md").read_text()
    rows = _read_csv(tmp_path / "px" / "per_image.csv")
    assert {r["distance_unit"] for r in rows} == {"px"}
    clin = _read_csv(tmp_path / "px" / "clinical.csv")
    assert clin and all(math.isnan(float(r["edv_pred"])) for r in clin)
    assert any(math.isfinite(float(r["ef_pred"])) for r in clin)
    # the same masks with a given isotropic spacing: every distance scales by it exactly
    assert main([str(key_seg_run), "--data", str(path), "--out", str(tmp_path / "mm"), "--spacing", "0.3,0.3"]) == 0
    mm = json.loads((tmp_path / "mm" / "summary.json").read_text())
    assert mm["units"]["hd"] == "mm" and mm["units"]["edv"] == "ml" and mm["spacing_given"] == [0.3, 0.3]
    rows_mm = _read_csv(tmp_path / "mm" / "per_image.csv")
    for a, b in zip(rows, rows_mm):
        if a["lv_endo_hd"] not in ("", "nan"):
            assert float(b["lv_endo_hd"]) == pytest.approx(0.3 * float(a["lv_endo_hd"]), rel=1e-9)
    assert any(math.isfinite(float(r["edv_pred"])) for r in _read_csv(tmp_path / "mm" / "clinical.csv"))
    assert main([str(key_seg_run), "--data", str(path), "--out", str(tmp_path / "bad"), "--spacing", "0.3"]) == 2
