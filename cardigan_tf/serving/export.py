"""Export of a run for TensorFlow Serving (and ONNX). The check of an export (``--check``) is
:mod:`cardigan_tf.serving.export_check`.

Layout (``BASE`` = ``--out``, default ``export/models``)::

    BASE/models.config                      ModelServerConfig (text format), every model under BASE
    BASE/NAME/VERSION/saved_model.pb        SavedModel (signatures: cardigan_tf.serving.signatures)
    BASE/NAME/VERSION/variables/
    BASE/NAME/VERSION/assets.extra/tf_serving_warmup_requests   PredictionLog TFRecords
    BASE/NAME/VERSION/metadata.json         source run, labels, sizes, interpolation, signatures, ...
    BASE/NAME/VERSION/model.onnx            with --onnx (seg: serving_default, rank-3 input)
    BASE/NAME_batched/VERSION/              seg: the same model with serving_fixed only, and
                                            batching_params.pbtxt (the servable the server batches)

A cv run, or a list of seg / cv runs, is exported as ONE segmentation model: the ensemble
(``runs.load_ensemble``: every member and test-time view in one graph, mean probabilities)
behind the same signatures, resize chain and checks; ``metadata.json`` names its members and
views (``ensemble``) and ``source.runs`` / ``source.tta`` rebuild it for ``--check``.

A segmentation run gives two servables (:mod:`cardigan_tf.serving.batching` says why):
``NAME`` with the any-size signatures (and ``serving_fixed``), never batched, and
``NAME_batched`` with the fixed-size ``serving_fixed`` alone and TF-Serving's per-model
batching file. A version folder is written beside its target under a temporary name and renamed when complete
(TF-Serving ignores non-integer folder names); an existing version is replaced only with
``overwrite=True``.

ONNX: tf2onnx converts ``ResizeArea`` to a nearest resize, so the ONNX model is converted
from the same serving graph built with matrix-product resizes (area/bilinear weights computed
in the graph; equal to :func:`cardigan_tf.resize.resize_image` within 1e-5) and without the
input assertions (ONNX Runtime checks dtype and rank only). Its parity with the SavedModel is
checked on sample inputs at export time (max abs difference of probabilities <= 1e-4; the
per-image ``uncertainty``, ``qc_flags`` and ``disagreement``: :mod:`cardigan_tf.serving.output_check`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from cardigan_tf import resize
from cardigan_tf.config import to_dict
from cardigan_tf.files import OverwriteError, atomic_path, atomic_write_text, sha256_file, write_json
from cardigan_tf.labels import LABEL_DESCRIPTIONS, LABEL_NAMES, NUM_CLASSES
from cardigan_tf.run_provenance import code_revision, library_versions
from cardigan_tf.runs import RunError, load_ensemble, open_run
from cardigan_tf.serving.batching import BATCHED_SUFFIX, BATCHING_PARAMETERS, BATCHING_PARAMS_FILE, params_text
from cardigan_tf.serving.contract import (
    ANY_SIZE_SIGNATURES,
    FIXED_SIGNATURE,
    MAX_SIDE,
    RANGE_TOLERANCE,
    fixed_input,
    qc_record,
)
from cardigan_tf.serving.output_check import compare_scores
from cardigan_tf.serving.signatures import GanServing, SegServing

log = logging.getLogger(__name__)

DEFAULT_NAMES = {"seg": "seg", "cv": "seg", "gan": "gan"}
WARMUP_FILE = "tf_serving_warmup_requests"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
PROB_TOLERANCE = 1e-4
TIE_MARGIN = 1e-3


class ExportError(RunError):
    """An export that cannot be written or does not pass its check."""


# ----------------------------------------------------------------------------- sources
def load_source(run_dir, tta: list[str] | None = None):
    """(kind, keras model, Run, model path, extra) of a seg or GAN run (GAN: the EMA generator;
    seg: ``extra["pre"]``, the run's resize chain), or of an ensemble (kind "seg"): a cv run, a
    list of seg / cv runs, or a seg run with test-time views ``tta`` (``runs.load_ensemble``;
    ``extra["ensemble"]``: its member model files, runs and views)."""
    sources = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
    run = open_run(sources[0])
    if run.kind not in DEFAULT_NAMES:
        raise ExportError(f"{run.path}: a {run.kind} run cannot be exported (expected a seg, cv or gan run)")
    if run.kind == "cv" or len(sources) > 1 or tta is not None:
        if run.kind == "gan":
            raise ExportError(f"{run.path}: a GAN is exported on its own (an ensemble takes seg or cv runs)")
        trained = load_ensemble(sources, tta=tta)
        ensemble = {"runs": [str(Path(p).resolve()) for p in sources], "tta": trained.tta,
                    "members": [str(Path(p).resolve()) for p in trained.members]}
        return "seg", trained.model, run, trained.path, {"pre": trained.preprocessing, "ensemble": ensemble}
    trained = run.load()
    extra = {"pre": trained.preprocessing} if run.kind == "seg" else {}
    return run.kind, trained.model, run, trained.path, extra


def build_module(kind: str, model, extra: dict, resize_impl: str = "tf", onnx: bool = False):
    if kind == "seg":
        return SegServing.build(model, extra["pre"].sizes, resize_impl=resize_impl, checks=not onnx,
                                rank=3 if onnx else None)
    return GanServing.build(model, resize_impl=resize_impl, checks=not onnx)


# ----------------------------------------------------------------------------- sample inputs
def sample_inputs(kind: str, working_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Deterministic sample requests: several sizes (square, non-square, larger and smaller than
    the working size). Seg: smooth float images in [0, 1]; GAN: blocky label masks."""
    rng = np.random.default_rng(seed)
    s = int(working_size)
    sizes = [(s, s), (2 * s + 3, s + 5), (max(s // 2 + 1, 3), max(s // 2 - 3, 3))]
    out = []
    for i, (h, w) in enumerate(sizes):
        if kind == "seg":
            coarse = rng.random((2, 5, 7, 1)).astype(np.float32)

            img = tf.image.resize(coarse, [h, w], method="bicubic").numpy()[..., 0]
            img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)
            out.append({"image": img})
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            m = ((yy * 4 // h) + (xx * 3 // w) + i) % 4
            out.append({"mask": np.stack([m, (m + 1) % 4]).astype(np.uint8)})
    return out


# ----------------------------------------------------------------------------- layout
def version_dirs(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name))


def next_version(model_dir: Path) -> int:
    versions = version_dirs(model_dir)
    return (versions[-1] + 1) if versions else 1


def model_folders(base: Path) -> list[str]:
    """Names of the model folders under ``base`` (folders holding an integer version folder)."""
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and version_dirs(p))


def models_config_text(base: Path, absolute: bool = False) -> str:
    cfg = model_server_config_pb2.ModelServerConfig()
    for name in model_folders(base):
        c = cfg.model_config_list.config.add()
        c.name = name
        c.base_path = str((base / name).resolve()) if absolute else f"/models/{name}"
        c.model_platform = "tensorflow"
    return text_format.MessageToString(cfg)


def parse_models_config(path: Path):
    try:
        return text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"{path}: not a ModelServerConfig in text format: {exc}") from None


def write_warmup(path: Path, model_name: str, requests: list[tuple[str, dict[str, np.ndarray]]]) -> None:
    """PredictionLog records (TFRecord) that TF-Serving replays at load time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for key, value in inputs.items():
                req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log_ = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
            writer.write(log_.SerializeToString())


def read_warmup(path: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    if not path.is_file():
        raise ExportError(f"{path}: warm-up file missing")
    out = []
    try:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            rec = prediction_log_pb2.PredictionLog.FromString(raw)
            req = rec.predict_log.request
            out.append((req.model_spec.signature_name or "serving_default",
                        {k: tf.make_ndarray(v) for k, v in req.inputs.items()}))
    except Exception as exc:  # noqa: BLE001 (corrupt record / bad proto)
        raise ExportError(f"{path}: not PredictionLog TFRecords: {exc}") from None
    if not out:
        raise ExportError(f"{path}: no warm-up records")
    return out


def signature_info(saved_dir: Path) -> dict[str, Any]:
    """{signature: {inputs: [{name, dtype, shape}], outputs: [...]}} of a SavedModel."""
    loaded = tf.saved_model.load(str(saved_dir))
    info = {}
    for name, fn in loaded.signatures.items():
        def spec(d):
            return [{"name": k, "dtype": v.dtype.name,
                     "shape": None if v.shape.rank is None else [d if d is not None else -1 for d in v.shape.as_list()]}
                    for k, v in sorted(d.items())]
        info[name] = {"inputs": spec(fn.structured_input_signature[1]), "outputs": spec(fn.structured_outputs)}
    return info


# ----------------------------------------------------------------------------- export
def export_run(run_dir, out="export/models", name: str | None = None, version: int | None = None,
               onnx: bool = False, overwrite: bool = False, absolute_paths: bool = False,
               tta: list[str] | None = None) -> Path:
    """Export a seg, cv or GAN run (or a list of seg / cv runs: one ensemble; ``tta``: its
    test-time views, see :func:`load_source`) to ``out/NAME/VERSION`` (a segmentation model: also
    ``out/NAME_batched/VERSION``) and rewrite ``out/models.config``. Returns ``out/NAME/VERSION``."""
    if version is not None and version < 1:
        raise ExportError(f"--version: expected an integer >= 1, got {version}")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise ExportError(f"--name: expected letters, digits, '_', '-' or '.', got {name!r}")
    run = open_run(run_dir[0] if isinstance(run_dir, (list, tuple)) else run_dir)  # validate before writing anything
    if run.kind not in DEFAULT_NAMES:
        raise ExportError(f"{run.path}: a {run.kind} run cannot be exported (expected a seg, cv or gan run)")
    base = Path(out)
    name = name or DEFAULT_NAMES[run.kind]
    names = [name, name + BATCHED_SUFFIX] if run.kind in ("seg", "cv") else [name]
    version = version or max(next_version(base / n) for n in names)
    for n in names:
        if (base / n / str(version)).exists() and not overwrite:
            raise OverwriteError(f"{base / n / str(version)}: version {version} of model {n!r} already exists; "
                                 "pass --overwrite to replace it (or omit --version for the next free one)")
    kind, model, run, model_path, extra = load_source(run_dir, tta)
    source = {"run": str(Path(run.path).resolve()), "kind": kind, "model": str(Path(model_path).resolve()),
              "config": _config_dict(run)}
    if "ensemble" in extra:
        source.update(runs=extra["ensemble"]["runs"], tta=extra["ensemble"]["tta"])
    if kind == "seg":
        target = write_seg_versions(base, name, version, model, extra, source, onnx=onnx)[0]
    else:
        target = base / name / str(version)
        with atomic_path(target, overwrite=True) as tmp:
            write_version(tmp, kind, model, extra, name, source=source, onnx=onnx)
    atomic_write_text(base / "models.config", models_config_text(base, absolute_paths))
    return target


def _config_dict(run) -> dict:
    return to_dict(run.config)


def write_seg_versions(base: Path, name: str, version: int, model, extra: dict, source: dict, onnx: bool = False,
                       batched: bool = True) -> list[Path]:
    """``BASE/NAME/VERSION`` and (``batched``) ``BASE/NAME_batched/VERSION`` of a segmentation
    model, replacing existing ones; both appear only when both are complete."""
    targets = [Path(base) / name / str(version)]
    if batched:
        targets.append(Path(base) / (name + BATCHED_SUFFIX) / str(version))
    with atomic_path(targets[0], overwrite=True) as tmp:
        write_version(tmp, "seg", model, extra, name, source=source, onnx=onnx)
        if batched:
            with atomic_path(targets[1], overwrite=True) as tmp_batched:
                write_version(tmp_batched, "seg", model, extra, name + BATCHED_SUFFIX, source=source, batched=True)
    return targets


def fixed_samples(samples: list[dict], size: int) -> list[dict[str, np.ndarray]]:
    """``serving_fixed`` requests of the sample images: each brought to the chain's first size
    as a client does (:func:`cardigan_tf.serving.contract.fixed_input`)."""
    return [{"image": fixed_input(s["image"], size)[0]} for s in samples]


def write_version(folder: Path, kind: str, model, extra: dict, name: str, source: dict, onnx: bool = False,
                  batched: bool = False) -> dict:
    """Write one complete version folder (SavedModel, warm-up, metadata, optional ONNX).

    ``batched`` (seg): the servable the server batches: ``serving_fixed`` alone, and
    ``batching_params.pbtxt`` (:data:`~cardigan_tf.serving.batching.BATCHING_PARAMETERS`)."""
    module = build_module(kind, model, extra)
    names = [FIXED_SIGNATURE] if batched else [*ANY_SIZE_SIGNATURES, FIXED_SIGNATURE] if kind == "seg" else None
    tf.saved_model.save(module, str(folder), signatures=module.signatures() if names is None
                        else module.signatures(names))
    working = int(extra["pre"].working_size) if kind == "seg" else int(model.inputs[0].shape[1])
    samples = sample_inputs(kind, working)
    if kind == "seg":
        fixed = fixed_samples(samples, extra["pre"].sizes[0])
        requests = [] if batched else [("serving_default", samples[0]), ("serving_default", samples[1]),
                                       ("serving_uint8", {"image": np.round(samples[2]["image"] * 255).astype(np.uint8)})]
        requests += [(FIXED_SIGNATURE, fixed[0]), (FIXED_SIGNATURE, fixed[1])]
    else:
        requests = [("serving_default", samples[0]), ("serving_default", samples[1])]
        if getattr(module, "z_dim", None):
            requests.append(("serving_seeded", {**samples[2], "seed": np.arange(len(samples[2]["mask"]),
                                                                                   dtype=np.int64)}))
    write_warmup(folder / "assets.extra" / WARMUP_FILE, name, requests)
    if batched:
        (folder / BATCHING_PARAMS_FILE).write_text(params_text(BATCHING_PARAMETERS))
    sigs = signature_info(folder)
    meta: dict[str, Any] = {
        "format": "cardigan_tf export 1",
        "name": name,
        "kind": kind,
        "source": source,
        "labels": [{"id": k, "name": LABEL_NAMES[k], "description": LABEL_DESCRIPTIONS[k]} for k in sorted(LABEL_NAMES)],
        "working_size": working,
        "prepared_size": extra["pre"].prepared_size if kind == "seg" else None,
        "resize_chain": list(extra["pre"].sizes) if kind == "seg" else [working],
        "interpolation": {"image": resize.IMAGE_INTERPOLATION, "mask": resize.MASK_INTERPOLATION,
                          "probabilities": resize.PROBABILITY_INTERPOLATION},
        "signatures": sigs,
        "input_rules": _input_rules(kind, getattr(module, "z_dim", None),
                                    extra["pre"].sizes if kind == "seg" else None, batched),
        "batching": {"file": BATCHING_PARAMS_FILE, "parameters": BATCHING_PARAMETERS} if batched else None,
        "versions": library_versions(),
        "code": code_revision(),
        "exported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ensemble": extra.get("ensemble"),
        "outputs": qc_record() if kind == "seg" else None,
        "saved_model_sha256": sha256_file(folder / "saved_model.pb"),
        "onnx": None,
    }
    if onnx:
        meta["onnx"] = export_onnx(folder, kind, model, extra, samples)
    write_json(folder / "metadata.json", meta)
    return meta


def _input_rules(kind: str, z_dim, sizes=None, batched: bool = False) -> dict:
    if kind == "seg":
        fixed = (f"image float32 in [0, 1], (B, {sizes[0]}, {sizes[0]}, 1): each frame resized to the chain's first "
                 f"size by cardigan_tf.resize; outputs at the working size {sizes[-1]}, resized back to the frame by "
                 "the client (cardigan_tf.serving.contract.segment_frames)")
        rules = {"serving_default": f"image float32 in [0, 1] (tolerance {RANGE_TOLERANCE}), (B, H, W) or (B, H, W, 1)",
                 "serving_uint8": "image uint8 in [0, 255], (B, H, W) or (B, H, W, 1)",
                 FIXED_SIGNATURE: fixed, "max_side": MAX_SIDE}
        return {FIXED_SIGNATURE: fixed} if batched else rules
    rules = {"serving_default": f"mask uint8 (B, H, W), labels 0..{NUM_CLASSES - 1}" + (
        "; z = stateless_normal([z_dim], seed=[0, 0]) for every row (== serving_seeded with seed 0)" if z_dim else ""),
        "max_side": MAX_SIDE, "z_dim": z_dim}
    if z_dim:
        rules["serving_seeded"] = "mask uint8 (B, H, W) + seed int64 (B,): z_i = stateless_normal([z_dim], seed=[seed_i, 0])"
    return rules


# ----------------------------------------------------------------------------- ONNX
def export_onnx(folder: Path, kind: str, model, extra: dict, samples) -> dict:
    """Convert the matrix-resize variant of the serving graph with tf2onnx and check ONNX Runtime
    against the SavedModel in ``folder`` on ``samples`` (ExportError above 1e-4)."""
    module = build_module(kind, model, extra, resize_impl="matrix", onnx=True)
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=folder.parent) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serving_default})
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", tmp, "--signature_def", "serving_default",
               "--opset", str(ONNX_OPSET), "--output", str(folder / ONNX_FILE)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = res.stderr.strip().splitlines()[-3:]
            raise ExportError(f"tf2onnx failed on the {kind} model: {' | '.join(tail)}")
    diff = onnx_parity(folder, samples)
    if diff > PROB_TOLERANCE if kind == "seg" else diff > 1:
        raise ExportError(f"{folder / ONNX_FILE}: ONNX Runtime differs from TensorFlow by {diff:.3g} "
                          f"(tolerance {PROB_TOLERANCE if kind == 'seg' else '1 grey level'})")
    return {"file": ONNX_FILE, "opset": ONNX_OPSET, "signature": "serving_default",
            "input": "rank 3 only ((B, H, W)); no in-graph input checks (ONNX Runtime checks dtype and rank)",
            "resize": "matrix products equal to cardigan_tf.resize within 1e-5 (ONNX has no area resize)",
            "max_abs_diff_vs_tensorflow": diff}


def onnx_parity(folder: Path, samples) -> float:
    """Max abs difference between ONNX Runtime and the SavedModel's serving_default on
    ``samples``: GAN image grey levels; seg probabilities and per-image scores, and the ONNX
    ``qc_flags`` must be the NumPy checks of the SavedModel's working-size label map
    (``serving_fixed`` on the same frames; :func:`cardigan_tf.serving.output_check.compare_scores`)."""
    sess = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    loaded = tf.saved_model.load(str(folder))
    fn = loaded.signatures["serving_default"]
    out_names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for inputs in samples:
        ref = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
        raw = dict(zip(out_names, sess.run(None, {i.name: inputs[i.name.split(":")[0]] for i in sess.get_inputs()})))
        got = {k: raw[k] if k in raw else raw[[n for n in raw if k in n][0]] for k in ref}
        key = "probabilities" if "probabilities" in ref else "image"
        worst = max(worst, float(np.abs(got[key].astype(np.float64) - ref[key].astype(np.float64)).max()))
        if key == "probabilities":
            fixed = loaded.signatures[FIXED_SIGNATURE]
            x = fixed_input(inputs["image"], fixed.structured_input_signature[1]["image"].shape[1])[0]
            ref["working_probabilities"] = fixed(image=tf.constant(x))["probabilities"].numpy()
            worst = max(worst, compare_scores(ref, got, f"{folder / ONNX_FILE}", ExportError))
    return worst
