"""Local backends with the clients' ``predict`` interface (no server involved).

- :class:`SavedModelBackend`: an exported segmentation SavedModel (``BASE/NAME`` -> its latest
  version, or ``BASE/NAME/VERSION``) loaded with ``tf.saved_model.load``; its signatures are
  called directly.
- :class:`RunBackend`: a segmentation run folder (a cv run or a list of runs: their
  ensemble); the Keras model goes through
  :mod:`cardigan_tf.inference` with the run's :class:`~cardigan_tf.inference.Preprocessing`
  and answers as the export's signatures do (``probabilities`` float32 [B, H, W, 4] resized
  bilinearly to the input size, ``mask`` uint8 its argmax; ``uncertainty``, ``qc_flags`` and,
  for an ensemble of more than one member, ``disagreement`` per image, from
  :func:`cardigan_tf.inference.combine_members` and :mod:`cardigan_tf.metrics.anatomy` on the
  working-size label map).

Both, like :class:`~cardigan_tf.serving.client_rest.RestClient` and
:class:`~cardigan_tf.serving.client_grpc.GrpcClient`, offer ``predict(inputs,
signature_name="serving_default") -> {output name: NumPy array}`` where ``inputs`` is
``{"image": array}`` or the array itself, and raise
:class:`~cardigan_tf.serving.errors.ServingRequestError` (status ``INVALID_ARGUMENT``) for a bad
input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2

from cardigan_tf import resize
from cardigan_tf.inference import combine_members, member_probabilities, model_input
from cardigan_tf.metrics.anatomy import qc_flags_batch
from cardigan_tf.runs import RunError, load_ensemble, open_run
from cardigan_tf.serving.errors import ServingRequestError
from cardigan_tf.serving.signatures import member_count

__all__ = ["SavedModelBackend", "RunBackend", "resolve_export", "export_metadata", "tf_error_message"]


def tf_error_message(exc) -> str:
    """The useful part of a TensorFlow error message (the failed assertion, without the
    'Detected at node' trace)."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    asserted = [ln for ln in lines if "assertion failed" in ln]
    if asserted:
        return asserted[0]
    keep = [ln for ln in lines if not re.match(r"(Detected at node|File |Graph execution error|\[\[)", ln)]
    return " ".join(keep) or text.strip()


def _versions(folder: Path) -> list[int]:
    return sorted(int(v.name) for v in folder.iterdir()
                  if v.is_dir() and v.name.isdigit() and (v / "saved_model.pb").is_file())


def resolve_export(path: str | Path) -> Path:
    """The SavedModel version folder of ``path``: ``BASE/NAME/VERSION`` itself, or the latest
    version of ``BASE/NAME``. FileNotFoundError / ValueError with a clear message otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such export folder")
    if (path / "saved_model.pb").is_file():
        return path
    versions = _versions(path)
    if versions:
        return path / str(versions[-1])
    names = [d.name for d in sorted(path.iterdir()) if d.is_dir() and _versions(d)]
    if names:
        raise ValueError(f"{path}: an export base holding models {names}; name one, e.g. {path / names[0]}")
    raise ValueError(f"{path}: not a SavedModel export (expected BASE/NAME/VERSION/saved_model.pb)")


def export_metadata(version_dir: str | Path) -> dict:
    """``metadata.json`` of an export version ({} when absent)."""
    f = Path(version_dir) / "metadata.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _named(inputs, default: str = "image") -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {k: np.asarray(v) for k, v in inputs.items()}
    return {default: np.asarray(inputs)}


class SavedModelBackend:
    """An exported SavedModel called in-process. ``path``: ``BASE/NAME[/VERSION]``."""

    def __init__(self, path: str | Path):
        self.path = resolve_export(path)
        self.meta = export_metadata(self.path)
        self.model = tf.saved_model.load(str(self.path))
        self.where = str(self.path)

    def __repr__(self) -> str:
        return f"SavedModelBackend({self.where!r})"

    @property
    def kind(self) -> str | None:
        return self.meta.get("kind")

    def signature(self, signature_name: str = "serving_default") -> dict[str, dict[str, Any]]:
        fn = self._fn(signature_name)
        return {"inputs": {k: s.dtype.as_numpy_dtype for k, s in fn.structured_input_signature[1].items()},
                "outputs": {k: s.dtype.as_numpy_dtype for k, s in fn.structured_outputs.items()}}

    def _fn(self, signature_name: str):
        if signature_name not in self.model.signatures:
            raise ServingRequestError(self.where, f"signature {signature_name!r} not found (the model has "
                                                  f"{sorted(self.model.signatures)})", status="FAILED_PRECONDITION")
        return self.model.signatures[signature_name]

    def predict(self, inputs, signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        fn = self._fn(signature_name)
        specs = fn.structured_input_signature[1]
        if not isinstance(inputs, dict) and len(specs) == 1:
            inputs = {next(iter(specs)): inputs}
        arrays = _named(inputs)
        if set(arrays) != set(specs):
            raise ServingRequestError(self.where, f"input names {sorted(arrays)} do not match the signature's "
                                                  f"inputs {sorted(specs)}", status="INVALID_ARGUMENT")
        feed = {}
        for k, spec in specs.items():
            a = arrays[k]
            if a.dtype != spec.dtype.as_numpy_dtype:
                raise ServingRequestError(self.where, f"input {k}: expected {spec.dtype.name}, got {a.dtype}",
                                          status="INVALID_ARGUMENT")
            feed[k] = tf.constant(a)
        try:
            out = fn(**feed)
        except tf.errors.OpError as exc:
            raise ServingRequestError(self.where, tf_error_message(exc),
                                      status=error_codes_pb2.Code.Name(exc.error_code)) from None
        except (TypeError, ValueError) as exc:
            raise ServingRequestError(self.where, str(exc), status="INVALID_ARGUMENT") from None
        return {k: v.numpy() for k, v in out.items()}


class RunBackend:
    """A segmentation run folder (or an ensemble of them) answering like the export's signatures.

    Args:
        run_dir: a seg run folder (``runs/seg-...``), a cv run (its fold ensemble), or a list
            of seg / cv runs (one ensemble, ``cardigan_tf.runs.load_ensemble``).
        which: "best" (``best.keras``, else ``final.keras``) or "final".
        data: dataset whose prepared size defines the resize chain (default: the run's own).
        batch_size: images per model call.
        tta: the ensemble's test-time views (default: a cv run's recorded ones).
    """

    SIGNATURES = {"serving_default": np.float32, "serving_uint8": np.uint8}

    def __init__(self, run_dir, which: str = "best", data: str | None = None, batch_size: int = 16,
                 tta: list[str] | None = None):
        sources = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
        self.run = open_run(sources[0])
        if self.run.kind not in ("seg", "cv"):
            raise RunError(f"{self.run.path}: expected a seg or cv run folder, found a {self.run.kind} run")
        single = len(sources) == 1 and tta is None
        trained = self.run.load(which, data=data) if single else load_ensemble(sources, which, data, tta)
        self.model, self.model_path, self.pre = trained.model, trained.path, trained.preprocessing
        self.batch_size = int(batch_size)
        self.where = str(self.model_path)
        self.kind = "seg"

    def __repr__(self) -> str:
        return f"RunBackend({self.where!r})"

    def signature(self, signature_name: str = "serving_default") -> dict[str, dict[str, Any]]:
        self._check_signature(signature_name)
        scores = {"uncertainty": np.float32, "qc_flags": np.int32}
        if member_count(self.model) > 1:
            scores["disagreement"] = np.float32
        return {"inputs": {"image": self.SIGNATURES[signature_name]},
                "outputs": {"probabilities": np.float32, "mask": np.uint8, **scores}}

    def _check_signature(self, signature_name: str) -> None:
        if signature_name not in self.SIGNATURES:
            raise ServingRequestError(self.where, f"signature {signature_name!r} not found (a run answers "
                                                  f"{sorted(self.SIGNATURES)})", status="FAILED_PRECONDITION")

    def _bad(self, message: str):
        return ServingRequestError(self.where, message, status="INVALID_ARGUMENT")

    def predict(self, inputs, signature_name: str = "serving_default") -> dict[str, np.ndarray]:
        self._check_signature(signature_name)
        arrays = _named(inputs)
        if set(arrays) != {"image"}:
            raise self._bad(f"input names {sorted(arrays)} do not match the signature's inputs ['image']")
        x = arrays["image"]
        if x.dtype != self.SIGNATURES[signature_name]:
            raise self._bad(f"input image: expected {np.dtype(self.SIGNATURES[signature_name]).name}, got {x.dtype}")
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3 or 0 in x.shape[1:]:
            raise self._bad(f"image: expected [B, H, W] or [B, H, W, 1], got shape {list(arrays['image'].shape)}")
        if x.dtype == np.float32 and x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise self._bad("image: expected finite float values in [0, 1]")
        if not len(x):
            raise self._bad(f"image: empty batch: at least one row is needed, got shape {list(arrays['image'].shape)}")
        members = member_probabilities(self.model, model_input(list(x), self.pre), self.batch_size)
        working, scores = combine_members(members)
        scores["qc_flags"] = qc_flags_batch(working.argmax(-1))
        probs = resize.resize_probabilities(working, x.shape[1:3]).numpy()
        return {"probabilities": probs, "mask": resize.probs_to_mask(probs).numpy(),
                **{k: np.asarray(v, np.int32 if k == "qc_flags" else np.float32) for k, v in scores.items()}}
