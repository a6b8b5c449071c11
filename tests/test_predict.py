"""The predict command: every input format keeps its geometry, CAMUS patient folders give
clinical indices, bad files are skipped, and all model backends give the same masks."""

import csv
import json
import socket

import keras
import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf
from PIL import Image

from cardigan_tf.configs.seg import SegConfig, SegDataConfig
from cardigan_tf.metrics.clinical import patient_indices
from cardigan_tf.models.unet import UNetConfig
from cardigan_tf.predict import build_parser, main
from cardigan_tf.run_data import record_data
from cardigan_tf.runs import create_run, open_run
from cardigan_tf.serving.testing import GrpcTestServer, RestTestServer, make_test_export, tiny_test_unet

from tests._heart_masks import draw_heart
from tests.camus_fixtures import write_creatis_h5, write_image


#: band intensities (uint8) per label: a 1x1-conv "segmenter" recovers the labels from them
LEVELS = np.array([0, 85, 170, 255], np.uint8)


def _band_model(size: int):
    """Softmax of -K (x - c_k)^2 (the x^2 term cancels): class k wins where x is nearest c_k."""
    centres = LEVELS / 255.0
    k = 60.0
    inp = keras.Input((size, size, 1), name="image")
    conv = keras.layers.Conv2D(4, 1, name="logits")
    out = keras.layers.Activation("softmax", dtype="float32", name="seg")(conv(inp))
    model = keras.Model(inp, out, name="band")
    conv.set_weights([(2 * k * centres).reshape(1, 1, 1, 4).astype(np.float32),
                      (-k * centres ** 2).astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A seg run folder (tiny U-Net, data prepared at 48, trained size 32), its export
    (stand-in exporter), and a 'band' export for the clinical tests."""
    root = tmp_path_factory.mktemp("models")
    data = root / "prepared.h5"
    write_creatis_h5(data, size=48)
    cfg = SegConfig(name="test", model=UNetConfig(size=32, depth=4, base_filters=4), data=SegDataConfig(size=32))
    run_dir = create_run("seg", cfg, run_dir=root / "seg-run")
    record_data(run_dir, data)
    keras.saving.save_model(tiny_test_unet(32, seed=1), run_dir / "best.keras")
    trained = open_run(run_dir).load()
    model, pre = trained.model, trained.preprocessing
    assert pre.sizes == (48, 32)
    base = root / "export"
    make_test_export(base, "seg", 1, model=model, preprocessing=pre)
    make_test_export(base, "band", 3, model=_band_model(64))
    return {"run": run_dir, "base": base, "seg": base / "seg", "band": base / "band"}


def _main(argv, capsys=None):
    return main([*map(str, argv), "--no-progress"])


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_sitk(path, arr, spacing_xy, origin=None, direction=None, one_slice=True):
    img = sitk.GetImageFromArray(arr[None] if one_slice else arr)
    img.SetSpacing((*spacing_xy, 1.0) if one_slice else spacing_xy)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _saved_model_masks(version_dir, images):
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return [fn(image=tf.constant(im[None].astype(np.float32)))["mask"].numpy()[0] for im in images]


def _loose_inputs(tmp_path, rng):
    """.mhd (3-D one slice, flipped direction, origin), .nii.gz (2-D), .png, .npy: 120 x 90,
    spacing 0.3 (rows) x 0.6 (cols) mm."""
    img = rng.integers(0, 256, (120, 90), dtype=np.uint8)
    d = tmp_path / "in"
    _write_sitk(d / "a.mhd", img, (0.6, 0.3), origin=(1.5, -2.0, 3.0),
                direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    img2 = img[::-1].copy()
    _write_sitk(d / "b.nii.gz", img2, (0.6, 0.3), origin=(4.0, 5.0), one_slice=False)

    Image.fromarray(img.T.copy()).save(d / "c.png")
    np.save(d / "d.npy", (img[:, :80] / 255.0).astype(np.float32))
    return d, {"a": img, "b": img2, "c": img.T.copy(), "d": (img[:, :80] / 255.0).astype(np.float32)}


def test_predict_keeps_each_formats_size_and_geometry(models, tmp_path, rng):
    d, images = _loose_inputs(tmp_path, rng)
    out = tmp_path / "out"
    inputs = [d / "a.mhd", d / "b.nii.gz", d / "c.png", d / "d.npy"]
    assert _main(["--model", models["seg"], *inputs, "--out", out]) == 0
    expected = _saved_model_masks(models["seg"] / "1", [images[k].astype(np.float32) / (255 if images[k].dtype == np.uint8 else 1)
                                                        for k in "abcd"])
    for name, ref_path, mask_ref in zip("ab", ("a.mhd", "b.nii.gz"), expected):
        src = sitk.ReadImage(str(d / ref_path))
        ext = ".mhd" if name == "a" else ".nii.gz"
        got = sitk.ReadImage(str(out / f"{name}_mask{ext}"))
        assert got.GetSize() == src.GetSize()
        np.testing.assert_allclose(got.GetSpacing(), src.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(got.GetOrigin(), src.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(got.GetDirection(), src.GetDirection(), atol=1e-6)
        arr = sitk.GetArrayFromImage(got)
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr.reshape(120, 90), mask_ref)
    assert (out / "a_mask.raw").is_file()
    png = np.asarray(Image.open(out / "c_mask.png"))
    assert png.dtype == np.uint8 and png.shape == (90, 120)
    np.testing.assert_array_equal(png, expected[2])
    npy = np.load(out / "d_mask.npy")
    assert npy.dtype == np.uint8 and npy.shape == (120, 80)
    np.testing.assert_array_equal(npy, expected[3])
    for stem, shape in (("a", (120, 90)), ("c", (90, 120)), ("d", (120, 80))):
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (*shape, 3)
    rows = _csv(out / "predictions.csv")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert rows[0]["spacing_row_mm"] == "0.3000" and rows[0]["spacing_col_mm"] == "0.6000"
    assert rows[2]["spacing_row_mm"] == ""  # PNG: no spacing
    assert not (out / "clinical.csv").exists()  # no CAMUS-named frames


def _heart_images(rng, shape):
    """uint8 band image and its label mask: a heart drawn at max(shape), cropped to shape."""
    size = max(shape)
    mask = draw_heart(rng, size)
    r0, c0 = (size - shape[0]) // 2, (size - shape[1]) // 2
    mask = mask[r0:r0 + shape[0], c0:c0 + shape[1]]
    return LEVELS[mask], mask


def _write_patient(root, pid, layout, rng, shape=(96, 72), spacing_xy=(0.6, 0.3)):
    pdir = root / pid
    truth = {}
    ext = ".mhd" if layout == 2019 else ".nii.gz"
    for view in ("2CH", "4CH"):
        for phase in ("ED", "ES"):
            img, mask = _heart_images(rng, shape)
            truth[(view, phase)] = mask
            write_image(pdir / f"{pid}_{view}_{phase}{ext}", img, spacing_xy=spacing_xy, one_slice=layout == 2019)
            write_image(pdir / f"{pid}_{view}_{phase}_gt{ext}", mask, spacing_xy=spacing_xy, one_slice=layout == 2019)
        seq = np.stack([img, img, img])
        name = f"{pid}_{view}_sequence{ext}" if layout == 2019 else f"{pid}_{view}_half_sequence{ext}"
        write_image(pdir / name, seq, spacing_xy=spacing_xy)
        (pdir / f"Info_{view}.cfg").write_text("ED: 1\nES: 3\nNbFrame: 3\n")
    return pdir, truth


def test_patient_folders_give_clinical_indices(models, tmp_path, rng):
    p19, truth19 = _write_patient(tmp_path / "camus2019" / "training", "patient0001", 2019, rng)
    p23, truth23 = _write_patient(tmp_path / "camus2023" / "database_nifti", "patient0501", 2023, rng,
                                  spacing_xy=(0.35, 0.25))
    out = tmp_path / "out"
    # the band model labels speckle too: without clean-up the LV is in pieces and EF is refused
    raw = tmp_path / "raw"
    assert _main(["--model", models["band"], p19, "--out", raw]) == 0
    assert "separate pieces" in _csv(raw / "clinical.csv")[0]["reason"]
    assert _main(["--model", models["band"], p19, p23, "--out", out, "--postprocess"]) == 0
    rows = _csv(out / "predictions.csv")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert not any("_gt" in r["input"] or "sequence" in r["input"] for r in rows)
    clinical = {r["patient"]: r for r in _csv(out / "clinical.csv")}
    assert set(clinical) == {"patient0001", "patient0501"}
    for pid, ext, truth in (("patient0001", ".mhd", truth19), ("patient0501", ".nii.gz", truth23)):
        masks, spacings = {}, {}
        for key in truth:
            f = out / pid / f"{pid}_{key[0]}_{key[1]}_mask{ext}"
            img = sitk.ReadImage(str(f))
            arr = sitk.GetArrayFromImage(img).reshape(96, 72)
            # the band model recovers the drawn labels (up to the 64 px working grid)
            lv, ref = arr == 1, truth[key] == 1
            assert 2 * (lv & ref).sum() / (lv.sum() + ref.sum()) > 0.85
            masks[key] = lv
            spacings[key] = (img.GetSpacing()[1], img.GetSpacing()[0])
        expected = patient_indices(masks, spacings)
        row = clinical[pid]
        assert np.isfinite(expected["ef"]) and row["reason"] == "", (expected["reason"], row["reason"])
        assert float(row["edv_ml"]) == pytest.approx(expected["edv"], abs=1e-4)
        assert float(row["esv_ml"]) == pytest.approx(expected["esv"], abs=1e-4)
        assert float(row["ef_percent"]) == pytest.approx(expected["ef"], abs=1e-4)
        assert (out / pid / f"{pid}_2CH_ED_overlay.png").is_file()
    assert spacings[("2CH", "ED")] == pytest.approx((0.25, 0.35))


def test_incomplete_patient_and_lv_free_frames_get_a_reason(models, tmp_path, rng):
    pdir, _ = _write_patient(tmp_path, "patient0002", 2019, rng)
    out = tmp_path / "out"
    frames = sorted(pdir.glob("patient0002_*_E[DS].mhd"))
    assert _main(["--model", models["band"], *frames[:3], "--out", out]) == 0
    row = _csv(out / "clinical.csv")[0]
    assert row["ef_percent"] == "nan" and "missing 4CH/ES" in row["reason"]
    # all four frames, but one has no LV (all background): NaN and the reason
    blank = tmp_path / "blank" / "patient0003"
    for f in frames:
        img = np.zeros((96, 72), np.uint8) if "4CH_ES" in f.name else None
        if img is None:
            import SimpleITK as sitk

            img = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))[0]
        write_image(blank / f.name.replace("patient0002", "patient0003"), img, spacing_xy=(0.6, 0.3))
    out2 = tmp_path / "out2"
    assert _main(["--model", models["band"], blank, "--out", out2]) == 0
    row = _csv(out2 / "clinical.csv")[0]
    assert row["patient"] == "patient0003" and row["ef_percent"] == "nan" and "4CH/ES" in row["reason"]


def test_bad_files_are_reported_and_skipped(models, tmp_path, rng, capsys):
    d, _ = _loose_inputs(tmp_path, rng)
    (d / "trunc.mhd").write_text((d / "a.mhd").read_text().replace("a.raw", "trunc.raw"))
    (d / "trunc.raw").write_bytes((d / "a.raw").read_bytes()[:100])
    write_image(d / "volume.mhd", rng.integers(0, 256, (3, 20, 16), dtype=np.uint8))  # 3 slices: wrong rank
    (d / "junk.png").write_bytes(b"not a png")
    np.save(d / "rgb.npy", np.zeros((4, 20, 16), np.float32))
    out = tmp_path / "out"
    bad = [d / "trunc.mhd", d / "volume.mhd", d / "junk.png", d / "rgb.npy"]
    capsys.readouterr()
    assert _main(["--model", models["seg"], d / "a.mhd", *bad, d / "b.nii.gz", "--out", out]) == 0
    err = capsys.readouterr().err
    rows = {r["input"]: r for r in _csv(out / "predictions.csv")}
    assert [rows[str(p)]["status"] for p in (d / "a.mhd", d / "b.nii.gz")] == ["ok", "ok"]
    for p in bad:
        assert rows[str(p)]["status"] == "error" and str(p) in rows[str(p)]["error"]
        assert sum(str(p) in line for line in err.splitlines()) == 1, err
    assert "truncated" in rows[str(d / "trunc.mhd")]["error"]
    assert "single slice" in rows[str(d / "volume.mhd")]["error"]
    assert (out / "a_mask.mhd").is_file() and not (out / "volume_mask.mhd").exists()
    assert "predicted 2 of 6 files (4 skipped" in err
    # nothing predictable: exit 2 with an error line
    out2 = tmp_path / "out2"
    assert _main(["--model", models["seg"], *bad, "--out", out2]) == 2
    assert "error: no input could be predicted (4 failed" in capsys.readouterr().err


def test_output_folder_is_refused_without_overwrite(models, tmp_path, rng, capsys):
    d, _ = _loose_inputs(tmp_path, rng)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert _main(["--model", models["seg"], d / "c.png", "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "old.txt").exists()
    assert _main(["--model", models["seg"], d / "c.png", "--out", out, "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "c_mask.png").is_file()
    assert _main(["--model", models["seg"], d / "c.png", "--out", d, "--overwrite"]) == 2  # would delete the input
    assert "would contain or replace the input" in capsys.readouterr().err and (d / "c.png").exists()
    assert _main(["--model", models["seg"], tmp_path / "missing.mhd", "--out", tmp_path / "o3"]) == 2
    assert _main(["--model", models["seg"], d / "a.raw", "--out", tmp_path / "o3"]) == 2
    assert "unsupported file type" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def _masks(folder, names):
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / n))) for n in names]


def test_run_dir_export_dir_and_servers_give_the_same_masks(models, tmp_path, rng):
    d, _ = _loose_inputs(tmp_path, rng)
    pdir, _ = _write_patient(tmp_path, "patient0007", 2019, rng, shape=(70, 101))
    inputs = [d / "a.mhd", d / "b.nii.gz", pdir]
    names = ["a_mask.mhd", "b_mask.nii.gz", *(f"patient0007/patient0007_{v}_{p}_mask.mhd"
                                             for v in ("2CH", "4CH") for p in ("ED", "ES"))]
    results = {}
    for key, model in (("export", models["seg"]), ("version", models["seg"] / "1"), ("run", models["run"])):
        assert _main(["--model", model, *inputs, "--out", tmp_path / key]) == 0
        results[key] = _masks(tmp_path / key, names)
    with GrpcTestServer(models["base"]) as g, RestTestServer(models["base"]) as r:
        for key, url in (("grpc", f"grpc://{g.target}/seg"), ("rest", f"{r.url}/seg"),
                         ("rest-rows", f"{r.url}/seg/versions/1")):
            extra = ["--rest-format", "rows"] if key == "rest-rows" else []
            assert _main(["--model", url, *inputs, "--out", tmp_path / key, *extra]) == 0
            results[key] = _masks(tmp_path / key, names)
    ref = results["export"]
    assert len({int(v) for m in ref for v in np.unique(m)}) >= 3  # the U-Net's masks mix labels
    for key, masks in results.items():
        for name, a, b in zip(names, masks, ref):
            np.testing.assert_array_equal(a, b, err_msg=f"{key}: {name}")


def test_gan_exports_and_unreachable_servers_are_refused(models, tmp_path, rng, capsys):
    assert "GAN export" in build_parser().format_help()
    d, _ = _loose_inputs(tmp_path, rng)

    class Gan(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8, name="mask")])
        def serve(self, mask):
            return {"image": mask * 60}

    gan = tmp_path / "export" / "gan" / "1"
    m = Gan()
    tf.saved_model.save(m, str(gan), signatures={"serving_default": m.serve.get_concrete_function()})
    assert _main(["--model", gan.parent, d / "c.png", "--out", tmp_path / "o"]) == 2
    assert "predict needs a segmentation model" in capsys.readouterr().err  # no metadata.json: by signature
    (gan / "metadata.json").write_text(json.dumps({"kind": "gan"}))
    assert _main(["--model", gan.parent, d / "c.png", "--out", tmp_path / "o"]) == 2
    assert "a 'gan' export" in capsys.readouterr().err
    assert _main(["--model", models["base"], d / "c.png", "--out", tmp_path / "o"]) == 2
    assert "name one" in capsys.readouterr().err
    port = _free_port()
    assert _main(["--model", f"grpc://127.0.0.1:{port}/seg", d / "c.png", "--out", tmp_path / "o",
                  "--retries", "0"]) == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    assert _main(["--model", f"http://127.0.0.1:{port}/seg", d / "c.png", "--out", tmp_path / "o",
                  "--retries", "1", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "connection refused" in err
    assert not (tmp_path / "o").exists()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
