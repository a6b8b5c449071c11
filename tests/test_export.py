"""Export for TF-Serving and ONNX (cardigan_tf.export, cardigan_tf.serving.export) of the session's
tiny seg run (``seg_run``) and style-z GAN run (``gan_z_run``), exported once (``exported``, conftest)."""

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf
import yaml

from cardigan_tf import resize
from cardigan_tf.export import main
from cardigan_tf.files import sha256_file
from cardigan_tf.metrics.anatomy import QC_FLAGS
from cardigan_tf.predict import main as predict
from cardigan_tf.serving import batching as bt
from cardigan_tf.serving import export as ex
from cardigan_tf.serving import export_check as chk
from cardigan_tf.serving import signatures as sg
from cardigan_tf.serving.client_grpc import GrpcClient
from cardigan_tf.serving.client_rest import RestClient
from cardigan_tf.serving.testing import GrpcTestServer, RestTestServer

from harness import onehot


#: the working size of the session's ``seg_run`` (preset tiny) and of ``gan_z_run``
SEG_SIZE, GAN_SIZE, Z_DIM = 64, 32, 8


def _load(folder):
    return tf.saved_model.load(str(folder))


def test_matrix_resize_equals_project_resize():
    rng = np.random.default_rng(0)
    for hw in [(64, 64), (100, 77), (37, 50), (13, 9), (300, 40)]:
        x = rng.random((2, *hw, 1)).astype(np.float32)
        for size in [(32, 32), (64, 64), (31, 45)]:
            ref = resize.resize_image(x, size).numpy()
            assert np.abs(sg.matrix_resize(x, size).numpy() - ref).max() < 1e-5
            got = tf.function(sg.resize_image_to)(x, (tf.constant(size[0]), tf.constant(size[1]))).numpy()
            assert np.array_equal(got, ref)
        p = rng.random((1, 9, 11, 4)).astype(np.float32)
        assert np.abs(sg.matrix_resize_bilinear(p, hw).numpy() - resize.resize_probabilities(p, hw).numpy()).max() < 1e-5


def test_layout_metadata_and_models_config(exported, seg_run):
    seg, gan = exported / "seg" / "1", exported / "gan" / "1"
    for folder in (seg, gan):
        assert (folder / "saved_model.pb").is_file() and (folder / "assets.extra" / ex.WARMUP_FILE).is_file()
    meta = json.loads((seg / "metadata.json").read_text())
    assert meta["kind"] == "seg" and meta["source"]["run"] == str(seg_run.resolve())
    assert [lab["id"] for lab in meta["labels"]] == [0, 1, 2, 3] and meta["working_size"] == SEG_SIZE
    assert set(meta["signatures"]) == {"serving_default", "serving_uint8", "serving_fixed"} and meta["batching"] is None
    batched = json.loads((exported / "seg_batched" / "1" / "metadata.json").read_text())
    assert set(batched["signatures"]) == {"serving_fixed"} and batched["source"] == meta["source"]
    assert (exported / "seg_batched" / "1" / bt.BATCHING_PARAMS_FILE).is_file()
    assert not (seg / bt.BATCHING_PARAMS_FILE).exists() and not (gan / bt.BATCHING_PARAMS_FILE).exists()
    assert {o["name"]: (o["dtype"], o["shape"]) for o in meta["signatures"]["serving_default"]["outputs"]} == {
        "probabilities": ("float32", [-1, -1, -1, 4]), "mask": ("uint8", [-1, -1, -1]),
        "uncertainty": ("float32", [-1]), "qc_flags": ("int32", [-1])}  # one model: no disagreement
    assert meta["outputs"]["qc_flags"]["bits"] == list(QC_FLAGS)
    assert meta["saved_model_sha256"] == sha256_file(seg / "saved_model.pb") and meta["versions"]["tensorflow"]
    gmeta = json.loads((gan / "metadata.json").read_text())
    assert set(gmeta["signatures"]) == {"serving_default", "serving_seeded"}
    cfg = ex.parse_models_config(exported / "models.config")
    assert {(c.name, c.base_path) for c in cfg.model_config_list.config} == {
        ("seg", "/models/seg"), ("seg_batched", "/models/seg_batched"), ("gan", "/models/gan")}
    shown = subprocess.run(["saved_model_cli", "show", "--dir", str(seg), "--all"], capture_output=True, text=True)
    assert "serving_uint8" in shown.stdout and "probabilities" in shown.stdout


def test_seg_matches_keras_through_inference_at_any_size(exported, seg_run):
    kind, model, _run, _path, extra = ex.load_source(seg_run)
    fn = _load(exported / "seg" / "1").signatures
    rng = np.random.default_rng(5)
    for h, w in [(32, 32), (67, 45), (20, 13), (100, 100)]:
        img = rng.random((2, h, w)).astype(np.float32)
        ref = chk.reference_outputs("seg", model, extra, {"image": img})
        out = {k: v.numpy() for k, v in fn["serving_default"](image=tf.constant(img)).items()}
        assert out["probabilities"].shape == (2, h, w, 4) and out["mask"].shape == (2, h, w)
        assert out["mask"].dtype == np.uint8
        assert chk.compare_outputs("seg", ref, out, "test") <= 1e-4
        u8 = np.round(img * 255).astype(np.uint8)
        out8 = {k: v.numpy() for k, v in fn["serving_uint8"](image=tf.constant(u8[..., None])).items()}
        chk.compare_outputs("seg", chk.reference_outputs("seg", model, extra, {"image": u8}), out8, "test uint8")


def test_gan_matches_keras_and_seeds(exported, gan_z_run):
    kind, gen, _run, _path, extra = ex.load_source(gan_z_run)
    fn = _load(exported / "gan" / "1").signatures
    mask = ex.sample_inputs("gan", GAN_SIZE)[1]["mask"]
    out = fn["serving_default"](mask=tf.constant(mask))["image"].numpy()
    assert out.shape == mask.shape and out.dtype == np.uint8
    chk.compare_outputs("gan", chk.reference_outputs("gan", gen, extra, {"mask": mask}, z_dim=Z_DIM), {"image": out},
                        "t")
    zero = fn["serving_seeded"](mask=tf.constant(mask), seed=tf.constant([0, 0], tf.int64))["image"].numpy()
    assert np.array_equal(zero, out)
    seeded = fn["serving_seeded"](mask=tf.constant(mask), seed=tf.constant([3, 4], tf.int64))["image"].numpy()
    chk.compare_outputs("gan", chk.reference_outputs("gan", gen, extra, {"mask": mask, "seed": np.array([3, 4])},
                                                     z_dim=Z_DIM), {"image": seeded}, "t")


def test_gan_seeded_signature_equals_the_keras_generator_on_independently_drawn_z(exported, gan_z_run):
    """serving_seeded against a reference that shares none of the export's code: z drawn here by
    the documented rule (row i: ``tf.random.stateless_normal([z_dim], seed=[seed_i, 0])``), the
    run's EMA generator called on the one-hot mask at its own size, mapped [-1, 1] -> 0..255."""
    gen = ex.load_source(gan_z_run)[1]
    fn = _load(exported / "gan" / "1").signatures["serving_seeded"]
    mask = ex.sample_inputs("gan", GAN_SIZE)[0]["mask"]
    assert mask.shape == (2, GAN_SIZE, GAN_SIZE)  # the generator's size: no resize on either side

    def served(seeds):
        return fn(mask=tf.constant(mask), seed=tf.constant(seeds, tf.int64))["image"].numpy()

    z = np.stack([tf.random.stateless_normal([Z_DIM], seed=[s, 0]).numpy() for s in (3, 4)])
    y = np.asarray(gen([onehot(mask), z], training=False))[..., 0]
    want = np.round((np.clip(y, -1.0, 1.0) + 1.0) / 2.0 * 255.0)
    got = served([3, 4])
    assert got.dtype == np.uint8 and got.shape == mask.shape
    assert np.abs(got.astype(int) - want).max() <= 1  # rounding of float32 grey levels
    np.testing.assert_array_equal(served([3, 4]), got)  # same seeds, same images
    other = served([3, 9])  # a row depends on its own seed only
    np.testing.assert_array_equal(other[0], got[0])
    assert np.abs(other[1].astype(int) - got[1].astype(int)).max() > 1


@pytest.mark.parametrize("sig,value,message", [
    ("serving_default", np.zeros((2, 8), np.float32), "must have rank 3"),
    ("serving_default", np.zeros((1, 8, 8, 3), np.float32), "last dimension of 1"),
    ("serving_default", np.zeros((0, 8, 8), np.float32), "empty batch"),
    ("serving_default", np.zeros((1, 0, 8), np.float32), "between 1 and 4096"),
    ("serving_default", np.zeros((1, 4097, 2), np.float32), "between 1 and 4096"),
    ("serving_default", np.full((1, 8, 8), 255.0, np.float32), "serving_uint8"),
    ("serving_default", np.full((1, 8, 8), np.nan, np.float32), "finite"),
    ("serving_uint8", np.zeros((1, 8, 8, 2), np.uint8), "last dimension of 1"),
])
def test_seg_bad_input_raises_invalid_argument(exported, sig, value, message):
    fn = _load(exported / "seg" / "1").signatures[sig]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(image=tf.constant(value))


def test_gan_bad_input_raises_invalid_argument(exported):
    fn = _load(exported / "gan" / "1").signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be in 0..3"):
        fn["serving_default"](mask=tf.constant(np.full((1, 8, 8), 4, np.uint8)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have rank 3"):
        fn["serving_default"](mask=tf.constant(np.zeros((8, 8), np.uint8)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one seed per mask"):
        fn["serving_seeded"](mask=tf.constant(np.zeros((2, 8, 8), np.uint8)), seed=tf.constant([1], tf.int64))


def test_warmup_records_parse_and_run(exported):
    for name, expected in (("seg", 5), ("seg_batched", 2), ("gan", 3)):
        folder = exported / name / "1"
        records = ex.read_warmup(folder / "assets.extra" / ex.WARMUP_FILE)
        assert len(records) == expected
        sigs = _load(folder).signatures
        assert {sig for sig, _ in records} == set(sigs)  # every signature warmed up, none unknown
        for sig, inputs in records:
            sigs[sig](**{k: tf.constant(v) for k, v in inputs.items()})


def test_onnx_parity(exported):
    meta = json.loads((exported / "seg" / "1" / "metadata.json").read_text())
    assert meta["onnx"]["max_abs_diff_vs_tensorflow"] <= 1e-4
    assert ex.onnx_parity(exported / "seg" / "1", ex.sample_inputs("seg", SEG_SIZE, seed=7)) <= 1e-4


@pytest.fixture(scope="module")
def checked(exported):
    """``python -m cardigan_tf.export --check BASE`` once: (exit status, stdout, and every call of
    the fresh-process run it makes: [(version folder, requests, outputs)])."""
    calls = []
    fresh = chk.fresh_process_outputs

    def recorded(folder, requests):
        outputs = fresh(folder, requests)
        calls.append((Path(folder), requests, outputs))
        return outputs

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(chk, "fresh_process_outputs", recorded)
        rc = main(["--check", str(exported)])
    return rc, out.getvalue(), calls


def test_fresh_process_imports_nothing_of_the_project(exported, checked):
    """The check loads each version in a fresh Python process that may import no project module
    (it fails otherwise); its outputs equal this process's for every request."""
    rc, _, calls = checked
    assert rc == 0
    assert sorted(folder for folder, _, _ in calls) == [exported / "gan" / "1", exported / "seg" / "1",
                                                        exported / "seg_batched" / "1"]
    for folder, requests, outputs in calls:
        sigs = _load(folder).signatures
        sigs_sent = {key.split("@")[0] for key in requests}
        if folder.parent.name == "seg_batched":
            assert sigs_sent == {"serving_fixed"}  # the batched twin has that signature alone
        else:
            assert sigs_sent >= {"serving_default"} | ({"serving_fixed"} if folder.parent.name == "seg" else set())
        for key, inputs in requests.items():
            ref = sigs[key.split("@")[0]](**{k: tf.constant(v) for k, v in inputs.items()})
            for name, value in ref.items():
                assert np.allclose(outputs[f"{key}/{name}"], value.numpy(), atol=1e-6), (folder, key, name)


def test_refuses_overwrite_and_check(exported, checked, seg_run, tmp_path, capsys):
    assert main([str(seg_run), "--out", str(exported), "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    rc, out, _ = checked  # main(["--check", exported])
    assert rc == 0
    assert "matches the Keras model" in out and "ONNX Runtime matches" in out
    broken = tmp_path / "models"
    shutil.copytree(exported, broken)
    (broken / "gan" / "1" / "assets.extra" / ex.WARMUP_FILE).unlink()
    assert main(["--check", str(broken), "--no-source"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "warm-up" in err and len(err.splitlines()) == 1
    shutil.rmtree(broken)
    shutil.copytree(exported, broken)
    (broken / "models.config").write_text("model_config_list { config { nam: 'seg' } }")
    assert main(["--check", str(broken / "seg"), "--no-source"]) == 2
    assert "ModelServerConfig" in capsys.readouterr().err


def test_cli_new_version_and_overwrite(exported, gan_z_run, tmp_path):
    base = tmp_path / "models"  # a copy: the session's export stays as it is
    shutil.copytree(exported, base)
    assert main([str(gan_z_run), "--out", str(base), "--name", "gan2"]) == 0
    assert main([str(gan_z_run), "--out", str(base), "--name", "gan2", "--version", "1", "--overwrite"]) == 0
    assert main([str(gan_z_run), "--out", str(base), "--name", "gan2"]) == 0
    assert ex.version_dirs(base / "gan2") == [1, 2]
    assert not [p for p in (base / "gan2").iterdir() if p.name.startswith(".")]
    names = {c.name for c in ex.parse_models_config(base / "models.config").model_config_list.config}
    assert names == {"seg", "seg_batched", "gan", "gan2"}


def test_deployment_kit_files():
    kit = Path(__file__).resolve().parent.parent / "export"
    cfg = ex.parse_models_config(kit / "models.config.example")
    assert [c.name for c in cfg.model_config_list.config] == ["seg", "seg_batched", "gan"]
    assert bt.parse_params((kit / "batching_parameters.txt").read_text()) == {"num_batch_threads": 4}
    compose = yaml.safe_load((kit / "docker-compose.yml").read_text())
    svc = compose["services"]["tfserving"]
    assert svc["image"].startswith("tensorflow/serving:") and {"8500:8500", "8501:8501"} <= set(svc["ports"])
    flags = " ".join(svc["command"])
    for flag in ("--model_config_file=/models/models.config", "--enable_batching=true",
                 "--enable_per_model_batching_parameters=true", "--batching_parameters_file="):
        assert flag in flags


def test_real_export_served_to_the_project_clients_and_predict(exported, seg_run, tmp_path):
    """The real exports (not a stand-in) behind the in-process gRPC and REST servers: the
    project's clients get what the SavedModel gives, and predict gives the same masks from the
    export, the run folder, both servers and the batched twin (its fixed-size signature)."""
    rng = np.random.default_rng(11)
    img = rng.random((1, 57, 41)).astype(np.float32)
    direct = _load(exported / "seg" / "1").signatures["serving_default"](image=tf.constant(img))
    mask = rng.integers(0, 4, (1, 50, 70)).astype(np.uint8)
    gan_direct = _load(exported / "gan" / "1").signatures["serving_default"](mask=tf.constant(mask))
    with GrpcTestServer(exported) as g, RestTestServer(exported) as r:
        with GrpcClient(g.target, "seg") as client:
            out = client.predict({"image": img})
            np.testing.assert_array_equal(out["mask"], direct["mask"].numpy())
            np.testing.assert_allclose(out["probabilities"], direct["probabilities"].numpy(), atol=1e-6)
        with GrpcClient(g.target, "gan") as client:
            np.testing.assert_array_equal(client.predict({"mask": mask})["image"], gan_direct["image"].numpy())
        rest = RestClient(r.url, "seg")
        for fmt in ("columns", "rows"):
            np.testing.assert_array_equal(rest.predict({"image": img}, fmt=fmt)["mask"], direct["mask"].numpy())
        # an anisotropic MetaImage predicted five ways gives one mask
        src = sitk.GetImageFromArray((img[0] * 255).astype(np.uint8))
        src.SetSpacing((0.6, 0.3))
        sitk.WriteImage(src, str(tmp_path / "frame.mhd"))
        masks = []
        for i, model in enumerate([exported / "seg", seg_run, f"grpc://{g.target}/seg", f"{r.url}/seg",
                                   f"grpc://{g.target}/seg_batched"]):  # the last through serving_fixed
            out_dir = tmp_path / f"out{i}"
            assert predict(["--model", str(model), str(tmp_path / "frame.mhd"), "--out", str(out_dir),
                            "--no-progress"]) == 0
            written = sitk.ReadImage(str(out_dir / "frame_mask.mhd"))
            assert written.GetSpacing() == (0.6, 0.3) and written.GetSize() == (41, 57)
            masks.append(sitk.GetArrayFromImage(written))
    for m in masks[1:]:
        assert (m != masks[0]).mean() < 1e-3  # equal up to near-ties of the probabilities
    quantised = (img * 255).astype(np.uint8).astype(np.float32) / 255.0  # what the .mhd holds
    again = _load(exported / "seg" / "1").signatures["serving_default"](image=tf.constant(quantised))
    np.testing.assert_array_equal(masks[0], again["mask"].numpy()[0])
