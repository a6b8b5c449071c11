"""Segment image files with a local or served model (library of ``python -m cardigan_tf.predict``).

- :func:`open_backend`: ``EXPORT_DIR`` (``BASE/NAME`` or ``BASE/NAME/VERSION``), ``RUN_DIR`` (a
  seg run folder, a cv run; several: one ensemble), ``http://host:port/NAME[/versions/N]`` (REST) or
  ``grpc://host:port/NAME[/versions/N]`` -> an object with ``predict({"image": x})``
  (:mod:`cardigan_tf.serving.local`, :mod:`~cardigan_tf.serving.client_rest`,
  :mod:`~cardigan_tf.serving.client_grpc`). Segmentation models only: a GAN export is refused.
- :func:`collect_inputs` (:mod:`cardigan_tf.serving.predict_files`, with the readers and mask
  writers): image files (.mhd/.mha, .nii/.nii.gz, .png, .npy) and CAMUS patient folders
  (``patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}.{mhd,nii.gz}``; ``*_gt`` and sequences are
  skipped), or a folder of patient folders.
- :func:`predict_files`: one mask per image in the input's format, size and geometry
  (MetaImage / NIfTI keep ElementSpacing, origin and direction), ``<stem>_mask.<ext>`` plus
  ``<stem>_overlay.png`` (patient folders mirrored under the output), ``predictions.csv`` (every
  input: output, status, error) and ``clinical.csv`` (EDV, ESV, EF per patient whose four
  2CH/4CH ED/ES frames were given; Simpson biplane on the LV cavity, label 1, with each frame's
  spacing). A bad file is reported and skipped; the output folder appears only when complete.
  ``predictions.csv`` also carries the model's per-image ``uncertainty``, ``disagreement`` (an
  ensemble of more than one member), ``qc_flags`` and one 0/1 column ``qc_<flag>`` per flag
  (:func:`cardigan_tf.serving.contract.image_columns`; the checks of the model's own label map at
  the working size, before ``postprocess``); empty for a model that does not answer them.

Images are sent to the model as float32 in [0, 1] (8-bit data divided by 255) through the
``serving_default`` signature; the masks come back at the input's size. A served model without
``serving_default`` but with the fixed-size ``serving_fixed`` (``NAME_batched``, the servable
the server batches) is used through the clients' ``segment`` (the frame resized here by
:mod:`cardigan_tf.resize`, the probabilities resized back here).
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cardigan_tf import viz
from cardigan_tf.data.sample import DataError
from cardigan_tf.files import atomic_path, atomic_write_text, refuse_overwrite
from cardigan_tf.labels import LV, PHASES, VIEWS
from cardigan_tf.metrics.anatomy import QC_FLAGS
from cardigan_tf.metrics.clinical import patient_indices
from cardigan_tf.metrics.segmentation import postprocess as clean
from cardigan_tf.serving.client_grpc import GrpcClient
from cardigan_tf.serving.client_rest import RestClient, signature_names
from cardigan_tf.serving.contract import FIXED_SIGNATURE, IMAGE_OUTPUTS, image_columns
from cardigan_tf.serving.errors import ServingError
from cardigan_tf.serving.local import RunBackend, SavedModelBackend, export_metadata, resolve_export
from cardigan_tf.serving.predict_files import FORMATS, InputFile, collect_inputs, read_input, write_mask

__all__ = ["open_backend", "collect_inputs", "read_input", "write_mask", "predict_files", "InputFile",
           "PredictResult", "FORMATS"]

PREDICTION_FIELDS = ["input", "output", "overlay", "status", "error", "patient", "view", "phase", "rows", "cols",
                     "spacing_row_mm", "spacing_col_mm", *IMAGE_OUTPUTS, *(f"qc_{name}" for name in QC_FLAGS)]
CLINICAL_FIELDS = ["patient", "edv_ml", "esv_ml", "ef_percent", "reason"]


# ============================================================================ backends
def _remote_spec(spec: str) -> tuple[str, str, str, int | None]:
    """``scheme://host:port/NAME[/versions/N]`` -> (scheme, host:port, name, version)."""
    parsed = urllib.parse.urlparse(spec)
    parts = [p for p in parsed.path.split("/") if p]
    version = None
    if len(parts) == 3 and parts[1] == "versions" and parts[2].isdigit():
        version = int(parts[2])
        parts = parts[:1]
    if not parsed.netloc or len(parts) != 1 or parsed.port is None:
        raise ValueError(f"--model {spec}: expected {parsed.scheme}://host:port/NAME[/versions/N]")
    return parsed.scheme, parsed.netloc, parts[0], version


def open_backend(spec, timeout: float = 10.0, retries: int = 3, fmt: str = "columns", tta: list[str] | None = None):
    """A segmentation backend for ``spec`` (see the module doc), checked to be one. ``spec``
    may be a list of run folders (their ensemble); ``tta``: test-time views of a run folder's
    model (an export or a server holds its own).

    Raises ValueError (not a model / not a segmentation model), FileNotFoundError,
    :class:`~cardigan_tf.runs.RunError` or :class:`~cardigan_tf.serving.errors.ServingError`
    (a server unreachable or without the model)."""
    specs = [str(x) for x in spec] if isinstance(spec, (list, tuple)) else [str(spec)]
    if len(specs) > 1 or tta is not None:
        not_runs = [x for x in specs if not (Path(x) / "config.yaml").is_file()]
        if not_runs:
            raise ValueError(f"--model {not_runs[0]}: an ensemble (several --model) or --tta takes run folders only "
                             "(an export or a server answers with the model it holds)")
        return RunBackend(specs, tta=tta)
    spec = specs[0]
    if re.match(r"^[a-z]+://", spec):
        scheme, netloc, name, version = _remote_spec(spec)
        if scheme in ("http", "https"):
            client = RestClient(f"{scheme}://{netloc}", name, version, timeout=timeout, retries=retries)
            backend = _Remote(client, fmt, spec)
        elif scheme == "grpc":
            backend = _Remote(GrpcClient(netloc, name, version, timeout=timeout, retries=retries), None, spec)
        else:
            raise ValueError(f"--model {spec}: unknown scheme {scheme!r} (expected http://, https:// or grpc://)")
        _check_segmentation(backend.signature(backend.signature_name)["inputs"], spec)
        return backend
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model {spec}: no such export or run folder")
    if (path / "config.yaml").is_file():
        return RunBackend(path)

    version_dir = resolve_export(path)
    kind = export_metadata(version_dir).get("kind")
    if kind is not None and kind != "seg":
        raise ValueError(f"--model {spec}: a {kind!r} export; predict segments images and needs a segmentation "
                         "export (kind 'seg')")
    backend = SavedModelBackend(version_dir)
    _check_segmentation(backend.signature("serving_default")["inputs"], spec)
    return backend


def _check_segmentation(inputs: dict, spec: str) -> None:
    if set(inputs) != {"image"}:
        what = "a GAN (its input is a mask)" if "mask" in inputs else f"a model with inputs {sorted(inputs)}"
        raise ValueError(f"--model {spec}: {what}; predict needs a segmentation model (input 'image')")


class _Remote:
    """A client with the backends' ``predict(inputs)`` call: through ``serving_default`` when the
    model has it, else through the fixed-size ``serving_fixed`` and the client's ``segment``."""

    def __init__(self, client, fmt: str | None, where: str):
        self.client, self.fmt, self.where = client, fmt, where
        names = signature_names(client.metadata())
        fixed = "serving_default" not in names and FIXED_SIGNATURE in names
        self.signature_name = FIXED_SIGNATURE if fixed else "serving_default"

    def signature(self, signature_name: str = "serving_default"):
        return self.client.signature(signature_name)

    def predict(self, inputs, signature_name: str | None = None):
        signature_name = signature_name or self.signature_name
        if signature_name == FIXED_SIGNATURE:
            kw = {} if self.fmt is None else {"fmt": self.fmt}
            out = self.client.segment(list(np.asarray(inputs["image"])), signature_name, **kw)
            return {k: np.stack(v) for k, v in out.items()}
        if self.fmt is None:  # gRPC: the mask and the per-image outputs only (the probabilities are 16 bytes a pixel)
            outputs = self.client.signature(signature_name)["outputs"]
            wanted = ["mask", *(k for k in IMAGE_OUTPUTS if k in outputs)]
            return self.client.predict(inputs, signature_name, output_filter=wanted)
        return self.client.predict(inputs, signature_name, fmt=self.fmt)

    def __repr__(self) -> str:
        return repr(self.client)


def _csv_text(fields: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in fields})
    return buf.getvalue()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


# ============================================================================ clinical
def _clinical_rows(frames: dict[str, dict[tuple[str, str], dict]]) -> list[dict]:
    """One row per patient with any named frame: EDV/ESV/EF, or NaN and the reason."""
    rows = []
    nan = float("nan")
    for patient in sorted(frames):
        got = frames[patient]
        row = {"patient": patient, "edv_ml": nan, "esv_ml": nan, "ef_percent": nan, "reason": ""}
        keys = [(v, p) for v in VIEWS for p in PHASES]
        absent = [f"{v}/{p}" for v, p in keys if (v, p) not in got]
        failed = [f"{v}/{p}" for v, p in keys if (v, p) in got and got[(v, p)].get("mask") is None]
        no_spacing = [f"{v}/{p}" for v, p in keys if (v, p) in got and got[(v, p)].get("mask") is not None
                      and got[(v, p)].get("spacing") is None]
        if absent:
            row["reason"] = f"not all four frames given (missing {', '.join(absent)})"
        elif failed:
            row["reason"] = f"prediction failed for {', '.join(failed)}"
        elif no_spacing:
            row["reason"] = (f"no pixel spacing for {', '.join(no_spacing)} (PNG/NPY inputs and MetaImages "
                             "without ElementSpacing carry none): volumes and EF not measured")
        else:
            try:
                res = patient_indices({k: got[k]["mask"] == LV for k in keys}, {k: got[k]["spacing"] for k in keys})
            except ValueError as exc:
                res = {"edv": nan, "esv": nan, "ef": nan, "reason": str(exc)}
            row.update(edv_ml=float(res["edv"]), esv_ml=float(res["esv"]), ef_percent=float(res["ef"]))
            if not math.isfinite(row["ef_percent"]):
                reason = res.get("reason") or ""
                if not reason and res.get("missing"):
                    reason = f"no measurable LV cavity (label {LV}) in {', '.join(res['missing'])}"
                row["reason"] = reason or "EF undefined (EDV is 0)"
        rows.append(row)
    return rows


# ============================================================================ the run
@dataclass
class PredictResult:
    out: Path
    rows: list[dict]
    clinical: list[dict]

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def n_failed(self) -> int:
        return len(self.rows) - self.n_ok


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output(out: str | Path, inputs, overwrite: bool) -> Path:
    """Refuse an existing ``out`` without ``overwrite``, and an ``out`` holding an input."""
    out = Path(out)
    refuse_overwrite(out, overwrite, "output folder")
    for p in map(Path, inputs):
        if p.exists() and _is_within(p, out):
            raise DataError(out, f"the output folder would contain or replace the input {p}; choose another --out")
    return out


def predict_files(backend, inputs, out: str | Path, overwrite: bool = False, progress: bool | None = None,
                  stderr=None, postprocess: bool = False) -> PredictResult:
    """Segment ``inputs`` (see :func:`collect_inputs`) with ``backend`` into the folder ``out``.

    A file that cannot be read or predicted is reported on ``stderr`` (one line) and in
    ``predictions.csv``, and skipped. The folder is written under a temporary name and
    renamed when complete (replacing an old one only with ``overwrite``). ``postprocess``: keep
    the largest component of each label and fill holes (as ``evaluate --postprocess``) before
    writing and measuring. Returns the rows of both CSVs; the caller decides what no successful
    prediction means."""
    stderr = stderr or sys.stderr
    out = check_output(out, inputs, overwrite)
    items = collect_inputs(inputs)
    seen: dict[Path, InputFile] = {}
    rows: list[dict] = []
    frames: dict[str, dict[tuple[str, str], dict]] = {}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        bar = tqdm(items, desc="predict", unit="file", disable=(not progress) if progress is not None else None,
                   file=stderr)
        for item in bar:
            rel = Path(item.subdir) / item.mask_name
            row: dict[str, Any] = {"input": str(item.path), "output": "", "overlay": "", "status": "error", "error": "",
                                   "patient": item.patient or "", "view": item.view or "", "phase": item.phase or ""}
            record = None
            if item.patient:
                record = frames.setdefault(item.patient, {}).setdefault((item.view, item.phase), {"mask": None})
            try:
                if rel in seen:
                    raise DataError(item.path, f"its output {rel} is already written for {seen[rel].path} "
                                               "(two inputs with the same name)")
                seen[rel] = item
                image = read_input(item)
                h, w = image.pixels.shape
                row.update(rows=h, cols=w)
                if image.spacing is not None:
                    row.update(spacing_row_mm=image.spacing[0], spacing_col_mm=image.spacing[1])
                out_map = backend.predict({"image": image.pixels[None].astype(np.float32)})
                if "mask" not in out_map:
                    raise DataError(item.path, f"the model returned no 'mask' output (got {sorted(out_map)})")
                mask = np.asarray(out_map["mask"])
                if mask.shape != (1, h, w):
                    raise DataError(item.path, f"the model returned a mask of shape {mask.shape}, expected (1, {h}, {w})")
                mask = mask[0].astype(np.uint8)
                if postprocess:
                    mask = clean(mask).astype(np.uint8)
                folder = tmp / item.subdir
                write_mask(item, mask, image, folder)
                viz.save_png(folder / item.overlay_name, viz.overlay(image.pixels, mask))
                row.update(output=str(out / rel), overlay=str(out / item.subdir / item.overlay_name), status="ok",
                           **image_columns(out_map, 0))
                if record is not None:
                    record.update(mask=mask, spacing=image.spacing)
            except (DataError, ServingError) as exc:
                msg = str(exc)
                if str(item.path) not in msg:
                    msg = f"{item.path}: {msg}"
                row["error"] = msg
                bar.write(f"skipped {msg}", file=stderr)
            rows.append(row)
        bar.close()
        atomic_write_text(tmp / "predictions.csv", _csv_text(PREDICTION_FIELDS, rows))
        clinical = _clinical_rows(frames) if frames else []
        if clinical:
            atomic_write_text(tmp / "clinical.csv", _csv_text(CLINICAL_FIELDS, clinical))
    return PredictResult(out=out, rows=rows, clinical=clinical)
