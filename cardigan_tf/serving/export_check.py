"""The check of an export (``python -m cardigan_tf.export --check PATH``).

For BASE, BASE/NAME or BASE/NAME/VERSION: ``models.config`` lists every model folder; each version
has the complete layout, its ``saved_model.pb`` has the SHA-256 of ``metadata.json``, its
signatures are those recorded, its warm-up records run; the SavedModel loads and answers the
same in a fresh Python process that imports nothing of the project; with the source run still
there, its answers equal the Keras model's through :mod:`cardigan_tf.inference` (probabilities
within 1e-4, masks away from near-ties, ``uncertainty`` / ``disagreement`` within 1e-4 of
:func:`cardigan_tf.inference.combine_members`, ``qc_flags`` those of the NumPy checks
:mod:`cardigan_tf.metrics.anatomy` on the working-size label map:
:mod:`cardigan_tf.serving.output_check`; GAN images within one grey level); an ONNX model
matches TensorFlow, its ``qc_flags`` checked the same way. Batching: a version folder holding ``batching_params.pbtxt`` (the
servable TF-Serving batches under the shipped flags) must have only signatures whose inputs are
fixed past the batch axis and no padding; a segmentation version without it has the any-size
signatures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from cardigan_tf import inference, resize
from cardigan_tf.files import sha256_file
from cardigan_tf.serving.batching import BATCHING_PARAMS_FILE, BatchingError, parse_params, unbatchable_inputs
from cardigan_tf.serving.contract import ANY_SIZE_SIGNATURES, FIXED_SIGNATURE
from cardigan_tf.serving.export import (
    ONNX_FILE,
    PROB_TOLERANCE,
    TIE_MARGIN,
    WARMUP_FILE,
    ExportError,
    fixed_samples,
    load_source,
    model_folders,
    onnx_parity,
    parse_models_config,
    read_warmup,
    sample_inputs,
    signature_info,
    version_dirs,
)
from cardigan_tf.serving.output_check import compare_scores, reference_scores
from cardigan_tf.serving.signatures import default_z, seeded_z

__all__ = ["check_export", "check_batching", "fresh_process_outputs", "reference_outputs", "compare_outputs",
           "compare_with_source"]

FRESH_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
folder, inputs_file, out_file = sys.argv[1:4]
loaded = tf.saved_model.load(folder)
data = np.load(inputs_file)
out = {}
for key in sorted({k.split("/")[0] for k in data.files}):
    sig = key.split("@")[0]
    args = {k.split("/", 1)[1]: tf.constant(data[k]) for k in data.files if k.startswith(key + "/")}
    for name, value in loaded.signatures[sig](**args).items():
        out[key + "/" + name] = value.numpy()
np.savez(out_file, **out)
bad = sorted(m for m in sys.modules if m.split(".")[0] == "cardigan_tf")
print(json.dumps({"project_modules": bad}))
"""


def fresh_process_outputs(folder: Path, requests: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run ``requests`` ({"SIG@k": inputs}) through the SavedModel in a fresh Python process that
    imports only tensorflow and numpy (no cardigan_tf); returns {"SIG@k/output": array}."""
    with tempfile.TemporaryDirectory(prefix="cardigan-check-") as tmp:
        inp, outp = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **{f"{key}/{k}": v for key, inputs in requests.items() for k, v in inputs.items()})
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        res = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, str(folder.resolve()), str(inp), str(outp)],
                             capture_output=True, text=True, cwd=tmp, env=env)
        if res.returncode != 0:
            tail = " | ".join(res.stderr.strip().splitlines()[-2:])
            raise ExportError(f"{folder}: the SavedModel does not load/run in a fresh process: {tail}")
        report = json.loads(res.stdout.strip().splitlines()[-1])
        if report["project_modules"]:
            raise ExportError(f"{folder}: loading imported project modules {report['project_modules']}")
        with np.load(outp) as z:
            return {k: z[k] for k in z.files}


def _resolve_check_target(path: Path) -> tuple[Path, list[Path]]:
    """(BASE, version folders to check) for BASE, BASE/NAME or BASE/NAME/VERSION."""
    if not path.is_dir():
        raise ExportError(f"{path}: no such folder")
    if (path / "saved_model.pb").is_file() or re.fullmatch(r"\d+", path.name):
        return path.parent.parent, [path]
    if (path / "models.config").is_file() or not version_dirs(path):
        names = model_folders(path)
        if not names:
            raise ExportError(f"{path}: no exported model (expected NAME/VERSION/saved_model.pb)")
        return path, [path / n / str(v) for n in names for v in version_dirs(path / n)]
    return path.parent, [path / str(v) for v in version_dirs(path)]


def check_export(path, compare_source: bool = True) -> list[str]:
    """Verify an export (see module doc); return one line per checked item; ExportError on a fault."""
    base, versions = _resolve_check_target(Path(path))
    lines = []
    cfg_file = base / "models.config"
    if not cfg_file.is_file():
        raise ExportError(f"{cfg_file}: missing")
    cfg = parse_models_config(cfg_file)
    listed = {c.name: c for c in cfg.model_config_list.config}
    for name in model_folders(base):
        if name not in listed:
            raise ExportError(f"{cfg_file}: model {name!r} (folder {base / name}) is not listed")
        bp = listed[name].base_path
        if bp != f"/models/{name}" and Path(bp).resolve() != (base / name).resolve():
            raise ExportError(f"{cfg_file}: model {name!r} has base_path {bp!r}, expected /models/{name} or {base / name}")
    lines.append(f"ok {cfg_file}: {len(listed)} model(s) {sorted(listed)}")
    for folder in versions:
        for rel in ("saved_model.pb", "variables", "metadata.json", f"assets.extra/{WARMUP_FILE}"):
            if not (folder / rel).exists():
                raise ExportError(f"{folder / rel}: missing (a complete version has saved_model.pb, variables/, "
                                  f"metadata.json and the warm-up requests assets.extra/{WARMUP_FILE})")
        try:
            meta = json.loads((folder / "metadata.json").read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{folder / 'metadata.json'}: not JSON: {exc}") from None
        if meta.get("saved_model_sha256") != sha256_file(folder / "saved_model.pb"):
            raise ExportError(f"{folder / 'saved_model.pb'}: SHA-256 differs from metadata.json")
        sigs = signature_info(folder)
        if sigs != meta.get("signatures"):
            raise ExportError(f"{folder}: signatures {sorted(sigs)} differ from metadata.json")
        batched = check_batching(folder, sigs, meta)
        expected = {"seg": {*ANY_SIZE_SIGNATURES, FIXED_SIGNATURE}, "gan": {"serving_default"}}[meta["kind"]]
        if batched:
            expected = {FIXED_SIGNATURE}
        if not expected <= set(sigs):
            raise ExportError(f"{folder}: missing signatures {sorted(expected - set(sigs))}")
        loaded = tf.saved_model.load(str(folder))
        warm = read_warmup(folder / "assets.extra" / WARMUP_FILE)
        for sig, inputs in warm:
            if sig not in loaded.signatures:
                raise ExportError(f"{folder}: warm-up record for unknown signature {sig!r}")
            loaded.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})
        samples = sample_inputs(meta["kind"], meta["working_size"], seed=1)
        requests = {} if batched else {f"serving_default@{i}": s for i, s in enumerate(samples)}
        if meta["kind"] == "seg":
            if not batched:
                requests.update({f"serving_uint8@{i}": {"image": np.round(s["image"] * 255).astype(np.uint8)}
                                 for i, s in enumerate(samples)})
            requests.update({f"{FIXED_SIGNATURE}@{i}": s
                             for i, s in enumerate(fixed_samples(samples, meta["resize_chain"][0]))})
        fresh = fresh_process_outputs(folder, requests)
        for key, inputs in requests.items():
            sig = key.split("@")[0]
            here = loaded.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})
            for out_name, v in here.items():
                if not np.allclose(v.numpy(), fresh[f"{key}/{out_name}"], atol=1e-6):
                    raise ExportError(f"{folder}: fresh-process output {key}/{out_name} differs")
        lines.append(f"ok {folder}: layout, sha256, {len(sigs)} signature(s), {len(warm)} warm-up record(s), "
                     "fresh-process load" + (f", batched ({BATCHING_PARAMS_FILE}: fixed-size inputs only)"
                                             if batched else ", not batched"))
        if compare_source:
            srcs = [Path(p) for p in meta["source"].get("runs") or [meta["source"]["run"]]]
            missing = [p for p in srcs if not p.is_dir()]
            if missing:
                lines.append(f"skipped {folder}: source run {missing[0]} not found, no comparison with Keras")
            else:
                diff = compare_with_source(srcs if len(srcs) > 1 else srcs[0], meta, requests, fresh)
                lines.append(f"ok {folder}: matches the Keras model of {', '.join(map(str, srcs))} "
                             f"(max diff {diff:.2g})")
        if (folder / ONNX_FILE).is_file():
            diff = onnx_parity(folder, samples)
            tol = PROB_TOLERANCE if meta["kind"] == "seg" else 1
            if diff > tol:
                raise ExportError(f"{folder / ONNX_FILE}: ONNX Runtime differs from TensorFlow by {diff:.3g}")
            lines.append(f"ok {folder / ONNX_FILE}: ONNX Runtime matches TensorFlow (max diff {diff:.2g})")
    return lines


def check_batching(folder: Path, sigs: dict, meta: dict) -> bool:
    """Whether the version is a batched servable (holds the per-model batching file); ExportError
    when batching it could refuse concurrent requests or the metadata disagrees."""
    f = folder / BATCHING_PARAMS_FILE
    if not f.is_file():
        if meta.get("batching"):
            raise ExportError(f"{f}: missing (metadata.json records a batched servable)")
        return False
    try:
        params = parse_params(f.read_text(), str(f))
    except BatchingError as exc:
        raise ExportError(str(exc)) from None
    if params.get("pad_variable_length_inputs"):
        raise ExportError(f"{f}: pad_variable_length_inputs must be false (padding an image changes what the "
                          "graph's resize sees)")
    bad = unbatchable_inputs(sigs)
    if bad:
        raise ExportError(f"{f}: a batched servable must have inputs of fixed shape past the batch axis (TF-Serving "
                          f"refuses to batch requests whose other dimensions differ); these are not: {', '.join(bad)}")
    return True


def reference_outputs(kind: str, model, extra: dict, inputs: dict[str, np.ndarray],
                      z_dim: int | None = None, at_input_size: bool = True) -> dict[str, np.ndarray]:
    """What the Keras model gives through :mod:`cardigan_tf.inference` for one request
    (seg: at the input's size, or at the working size with ``at_input_size=False``, as
    ``serving_fixed`` answers; with the per-image scores and QC flags of
    :func:`cardigan_tf.serving.output_check.reference_scores`)."""
    if kind == "seg":
        images = inputs["image"]
        x = inference.model_input(images, extra["pre"])
        scores = reference_scores(inference.member_probabilities(model, x))
        probs = scores["working_probabilities"]
        if at_input_size:
            probs = resize.resize_probabilities(probs, images.shape[1:3]).numpy()
        return {"probabilities": probs, "mask": np.argmax(probs, -1).astype(np.uint8), **scores}

    masks = inputs["mask"]
    z = None
    if z_dim:
        z = seeded_z(inputs["seed"], z_dim).numpy() if "seed" in inputs else np.tile(default_z(z_dim), (len(masks), 1))
    img = inference.synthesize(model, masks, z=z)
    img = resize.resize_image(img[..., None], masks.shape[1:3]).numpy()[..., 0]
    return {"image": np.round(img * 255).astype(np.uint8)}


def compare_outputs(kind: str, ref: dict, got: dict, where: str) -> float:
    """Max difference (probabilities and per-image scores, or grey levels); ExportError when
    outside tolerance or when ``qc_flags`` differ from the NumPy checks
    (:func:`cardigan_tf.serving.output_check.compare_scores`)."""
    if kind == "seg":
        p, q = ref["probabilities"], got["probabilities"]
        if p.shape != q.shape:
            raise ExportError(f"{where}: probabilities shape {q.shape}, expected {p.shape}")
        diff = float(np.abs(p - q).max())
        if diff > PROB_TOLERANCE:
            raise ExportError(f"{where}: probabilities differ from the Keras model by {diff:.3g} (> {PROB_TOLERANCE})")
        top2 = np.sort(p, -1)[..., -2:]
        clear = (top2[..., 1] - top2[..., 0]) > TIE_MARGIN
        if got["mask"].shape != p.shape[:-1] or np.any((got["mask"] != ref["mask"]) & clear):
            raise ExportError(f"{where}: mask differs from the Keras model away from near-ties")
        return max(diff, compare_scores(ref, got, where, ExportError))
    a, b = ref["image"].astype(int), got["image"].astype(int)
    if a.shape != b.shape:
        raise ExportError(f"{where}: image shape {b.shape}, expected {a.shape}")
    diff = float(np.abs(a - b).max())
    if diff > 1:
        raise ExportError(f"{where}: image differs from the Keras generator by {diff} grey levels (> 1)")
    return diff


def compare_with_source(src, meta: dict, requests: dict, outputs: dict) -> float:
    """Max difference between ``outputs`` and the Keras model of ``src`` (a run folder, or a
    list of them: the ensemble, with the views ``meta["source"]["tta"]``)."""
    kind, model, _run, _path, extra = load_source(src, meta.get("source", {}).get("tta"))
    z_dim = meta.get("input_rules", {}).get("z_dim")
    worst = 0.0
    for key, inputs in requests.items():
        sig = key.split("@")[0]
        if kind == "seg" and sig == "serving_uint8":
            inputs = {"image": inputs["image"]}  # uint8: inference divides by 255 as the signature does
        ref = reference_outputs(kind, model, extra, inputs, z_dim, at_input_size=sig != FIXED_SIGNATURE)
        got = {k.split("/", 1)[1]: v for k, v in outputs.items() if k.startswith(key + "/")}
        worst = max(worst, compare_outputs(kind, ref, got, f"{meta.get('name')} {key}"))
    return worst
