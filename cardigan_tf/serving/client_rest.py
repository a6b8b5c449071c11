"""TF-Serving REST client (standard library ``urllib`` only; no TensorFlow import).

The REST API of TensorFlow Serving (``tensorflow_model_server --rest_api_port``)::

    POST /v1/models/NAME[/versions/N]:predict
        row format:    {"signature_name": S, "instances": [{"image": ...}, ...]}
                       -> {"predictions": [{"probabilities": ..., "mask": ...}, ...]}
                          (a list of bare values when the signature has one output)
        column format: {"signature_name": S, "inputs": {"image": ...}}
                       -> {"outputs": {"probabilities": ..., "mask": ...}}
                          (a bare value when the signature has one output)
        A bare array instead of ``{"image": ...}`` feeds a signature with a single input.
    GET  /v1/models/NAME[/versions/N]            -> {"model_version_status": [...]}
    GET  /v1/models/NAME[/versions/N]/metadata   -> {"model_spec": ..., "metadata": {"signature_def": ...}}
    errors: {"error": "message"} with an HTTP status (400 for INVALID_ARGUMENT, 404 NOT_FOUND,
            503 UNAVAILABLE, ...).

JSON carries no dtype: the client reads the signature's output dtypes from the metadata (once,
cached) and returns NumPy arrays of those dtypes. float32 values survive the round trip
exactly (each float32 is written as the shortest decimal of its float64 value).

:meth:`RestClient.segment` sends frames of any sizes in one request to the fixed-size
signature ``serving_fixed`` (the one a batching server batches), resizing them first and the
probabilities back after with :mod:`cardigan_tf.resize` (:func:`cardigan_tf.serving.contract.
segment_frames`; TensorFlow is loaded then, not at import).

Retries: connection refused / reset, timeouts and 502/503/504 answers are retried ``retries``
times (so ``retries + 1`` attempts at most) after ``backoff * 2**k`` seconds; every other
HTTP error is raised at once. Failures are :class:`~cardigan_tf.serving.errors.ServingError`
subclasses naming the URL, the HTTP status and the server's ``"error"`` text.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from cardigan_tf.serving.contract import FIXED_SIGNATURE, segment_frames
from cardigan_tf.serving.errors import ServingRequestError, ServingUnavailableError

__all__ = ["RestClient", "DTYPES", "encode_value", "decode_value", "signature_io", "signature_shapes",
           "signature_names"]

#: TensorFlow DataType names (as in SignatureDef JSON) -> NumPy dtypes.
DTYPES = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16, "DT_UINT8": np.uint8,
    "DT_INT8": np.int8, "DT_UINT16": np.uint16, "DT_INT16": np.int16, "DT_INT32": np.int32,
    "DT_UINT32": np.uint32, "DT_INT64": np.int64, "DT_UINT64": np.uint64, "DT_BOOL": np.bool_,
}
RETRY_STATUSES = (502, 503, 504)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def encode_value(value) -> Any:
    """A NumPy array (or scalar / nested list) -> JSON-ready nested lists."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"cannot send a {a.dtype} tensor as JSON numbers (only bool, int and float)")
    return a.tolist()


def decode_value(value, dtype=None) -> np.ndarray:
    """JSON nested lists -> NumPy array of ``dtype`` (inferred when None)."""
    a = np.asarray(value)
    return a.astype(dtype) if dtype is not None else a


def _signature_defs(metadata: dict) -> dict:
    try:
        return metadata["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError):
        raise ValueError("metadata: no metadata.signature_def.signature_def map") from None


def signature_names(metadata: dict) -> list[str]:
    """The signature names of a REST metadata answer."""
    return sorted(_signature_defs(metadata))


def _signature(metadata: dict, signature_name: str) -> dict:
    defs = _signature_defs(metadata)
    if signature_name not in defs:
        raise KeyError(f"signature {signature_name!r} not found (the model has {sorted(defs)})")
    return defs[signature_name]


def signature_io(metadata: dict, signature_name: str) -> dict[str, dict[str, Any]]:
    """``{"inputs": {name: dtype}, "outputs": {name: dtype}}`` of one signature of a REST
    metadata answer (dtype: NumPy type, or None when unknown)."""
    sig = _signature(metadata, signature_name)
    return {part: {name: DTYPES.get(info.get("dtype")) for name, info in sig.get(part, {}).items()}
            for part in ("inputs", "outputs")}


def signature_shapes(metadata: dict, signature_name: str) -> dict[str, dict[str, list[int] | None]]:
    """``{"inputs": {name: shape}, "outputs": {name: shape}}`` of one signature (shape: a list
    of ints, -1 where unknown; None for an unknown rank)."""
    sig = _signature(metadata, signature_name)

    def shape(info):
        ts = info.get("tensor_shape", {})
        if ts.get("unknown_rank"):
            return None
        return [int(d.get("size", -1)) for d in ts.get("dim", [])]

    return {part: {name: shape(info) for name, info in sig.get(part, {}).items()} for part in ("inputs", "outputs")}


class RestClient:
    """Client of one model on a TF-Serving REST endpoint.

    Args:
        base_url: ``http://host:port`` (a trailing ``/`` is ignored).
        model: the model name (``BASE/NAME`` of the export).
        version: a version number, or None for the server's choice (the latest).
        timeout: seconds per HTTP request.
        retries: how many times a transient failure is retried.
        backoff: seconds before the first retry, doubled for each further one.
    """

    def __init__(self, base_url: str, model: str, version: int | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.5):
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url: expected http://host:port, got {base_url!r}")
        if not model or "/" in model:
            raise ValueError(f"model: expected a model name without '/', got {model!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(f"retries >= 0, timeout > 0, backoff >= 0 expected, got {retries}, {timeout}, {backoff}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.version = None if version is None else int(version)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in LOCAL_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)
        self._sleep = time.sleep  # replaceable in tests
        self._metadata: dict | None = None

    # ------------------------------------------------------------------ URLs
    @property
    def model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(self.model)}"
        return url + (f"/versions/{self.version}" if self.version is not None else "")

    def __repr__(self) -> str:
        return f"RestClient({self.model_url!r})"

    # ------------------------------------------------------------------ HTTP
    def _request(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        last = ""
        status = None
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                status = exc.code
                last = _error_text(exc)
                if exc.code in RETRY_STATUSES:
                    continue
                raise ServingRequestError(url, last, status=f"HTTP {exc.code}", attempts=attempt + 1) from None
            except urllib.error.URLError as exc:
                status, last = None, _reason_text(exc.reason)
                continue
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
                status, last = None, _reason_text(exc)
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise ServingRequestError(url, f"the answer is not JSON: {raw[:200]!r}", attempts=attempt + 1) from None
        raise ServingUnavailableError(url, f"unreachable: {last}" if status is None else last,
                                      status=None if status is None else f"HTTP {status}", attempts=attempts)

    # ------------------------------------------------------------------ API
    def status(self) -> dict:
        """``GET /v1/models/NAME[/versions/N]``: ``{"model_version_status": [...]}``."""
        return self._request(self.model_url)

    def metadata(self) -> dict:
        """``GET .../metadata``: model spec and the signature definitions (cached)."""
        if self._metadata is None:
            self._metadata = self._request(self.model_url + "/metadata")
        return self._metadata

    def signature(self, signature_name: str = "serving_default") -> dict[str, dict[str, Any]]:
        """Inputs and outputs (name -> NumPy dtype) of a signature, from :meth:`metadata`."""
        try:
            return signature_io(self.metadata(), signature_name)
        except (KeyError, ValueError) as exc:
            raise ServingRequestError(self.model_url + "/metadata", str(exc).strip("'\"")) from None

    def signature_shapes(self, signature_name: str = "serving_default") -> dict[str, dict[str, list[int] | None]]:
        """Input and output shapes of a signature, from :meth:`metadata`."""
        try:
            return signature_shapes(self.metadata(), signature_name)
        except (KeyError, ValueError) as exc:
            raise ServingRequestError(self.model_url + "/metadata", str(exc).strip("'\"")) from None

    def segment(self, frames, signature_name: str = FIXED_SIGNATURE, fmt: str = "columns") -> dict[str, list]:
        """Frames of any sizes (2-D uint8, or float in [0, 1]) through a fixed-size signature in
        one request -> ``{output: [one array per frame]}``, ``probabilities`` (H, W, 4) and
        ``mask`` (H, W) at each frame's size (:func:`cardigan_tf.serving.contract.segment_frames`)."""
        shapes = self.signature_shapes(signature_name)
        return segment_frames(lambda x: self.predict({"image": x}, signature_name, fmt=fmt), shapes, frames,
                              signature_name)

    def predict(self, inputs, signature_name: str = "serving_default", fmt: str = "columns") -> dict[str, np.ndarray]:
        """Run a signature. ``inputs``: ``{name: array}`` (all with the same batch size), or one
        array for a single-input signature. ``fmt``: "columns" (``inputs``/``outputs``) or
        "rows" (``instances``/``predictions``). Returns ``{output name: NumPy array}``."""
        if fmt not in ("columns", "rows"):
            raise ValueError(f"fmt: expected 'columns' or 'rows', got {fmt!r}")
        named = isinstance(inputs, dict)
        arrays = {k: np.asarray(v) for k, v in inputs.items()} if named else np.asarray(inputs)
        body: dict[str, Any] = {"signature_name": signature_name}
        if fmt == "columns":
            body["inputs"] = {k: encode_value(v) for k, v in arrays.items()} if named else encode_value(arrays)
        elif named:
            sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
            if len(set(sizes.values())) != 1 or None in sizes.values():
                raise ValueError(f"row format: every input needs the same batch size (first dimension), got {sizes}")
            n = next(iter(sizes.values()))
            body["instances"] = [{k: encode_value(v[i]) for k, v in arrays.items()} for i in range(n)]
        else:
            if arrays.ndim == 0:
                raise ValueError("row format: the input needs a batch dimension")
            body["instances"] = encode_value(arrays)
        answer = self._request(self.model_url + ":predict", body)
        outputs = self.signature(signature_name)["outputs"]
        if fmt == "columns":
            if "outputs" not in answer:
                raise ServingRequestError(self.model_url + ":predict", f"no 'outputs' in the answer (keys {sorted(answer)})")
            out = answer["outputs"]
            if isinstance(out, dict) and set(out) <= set(outputs) and out:
                return {k: decode_value(v, outputs.get(k)) for k, v in out.items()}
            return {self._single(outputs): decode_value(out, outputs.get(self._single(outputs)))}
        if "predictions" not in answer:
            raise ServingRequestError(self.model_url + ":predict", f"no 'predictions' in the answer (keys {sorted(answer)})")
        preds = answer["predictions"]
        if preds and all(isinstance(p, dict) for p in preds):
            keys = list(preds[0])
            return {k: decode_value([p[k] for p in preds], outputs.get(k)) for k in keys}
        name = self._single(outputs)
        return {name: decode_value(preds, outputs.get(name))}

    @staticmethod
    def _single(outputs: dict) -> str:
        return next(iter(outputs)) if len(outputs) == 1 else "outputs"


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()
    except Exception:  # noqa: BLE001 - the body is best effort
        raw = b""
    try:
        msg = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        msg = None
    if msg:
        return str(msg)
    text = raw.decode("utf-8", "replace").strip()[:300]
    return text or str(exc.reason or f"HTTP {exc.code}")


def _reason_text(reason) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__
