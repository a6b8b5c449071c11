"""In-process TF-Serving REST server for tests and local trials.

:class:`RestTestServer`: ``http.server`` in a thread with TF-Serving's REST API: predict in the
row (``instances``/``predictions``) and column (``inputs``/``outputs``) formats, model status and
metadata, errors as ``{"error": "..."}`` with TF-Serving's HTTP statuses (400 for
INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from cardigan_tf.serving.batching import ServerOptions
from cardigan_tf.serving.stand_in import ServingStatus, TestServerBase

__all__ = ["RestTestServer", "HTTP_STATUS"]

HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "UNAUTHENTICATED": 401, "UNKNOWN": 500,
               "DATA_LOSS": 500}

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:[a-z]+)?$")


class RestTestServer(TestServerBase):
    """TF-Serving REST API (``/v1/models/...``) in a thread on 127.0.0.1.

    ``with RestTestServer(base) as s: RestClient(s.url, "seg")`` (one thread per request);
    ``server``, ``batch_window_s``: the batching flags (:class:`~cardigan_tf.serving.stand_in.ModelStore`).
    """

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0, server: ServerOptions | None = None,
                 batch_window_s: float | None = None):
        super().__init__(base, port, fail_first, server, batch_window_s)
        self._httpd = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RestTestServer":
        owner = self

        class Handler(_RestHandler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = self._thread = None


def _json_input(value, spec, name: str) -> np.ndarray:
    """A JSON value -> NumPy array of the signature's dtype (as TF-Serving parses it)."""
    target = np.dtype(spec.dtype.as_numpy_dtype)
    try:
        a = np.asarray(value)
    except ValueError:
        raise ServingStatus("INVALID_ARGUMENT", f"input {name}: ragged nested lists (every row needs the same length)") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ServingStatus("INVALID_ARGUMENT", f"input {name}: expected numbers, got JSON of type {a.dtype}")
    if target.kind in "iu":
        if a.dtype.kind == "f" and not np.all(a == np.round(a)):
            raise ServingStatus("INVALID_ARGUMENT", f"input {name}: JSON value is not an integer ({target.name} expected)")
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ServingStatus("INVALID_ARGUMENT", f"input {name}: value out of range for {target.name}")
    return a.astype(target)


def _json_output(a: np.ndarray):
    return a.tolist()


class _RestHandler(BaseHTTPRequestHandler):
    server_owner: RestTestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _send(self, status: int, obj) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ServingStatus) -> None:
        self._send(HTTP_STATUS.get(err.code, 500), {"error": err.message})

    def _route(self):
        m = _PATH.match(self.path.split("?")[0])
        if not m:
            raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: {self.command} {self.path}")
        version = int(m["version"]) if m["version"] else None
        return m["name"], version, m["rest"] or ""

    def do_GET(self) -> None:  # noqa: N802
        store = self.server_owner.store
        try:
            name, version, rest = self._route()
            if rest == "":
                versions = [version] if version is not None else store.versions(name)
                store.resolve(name, version)
                self._send(200, {"model_version_status": [
                    {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                    for v in versions]})
            elif rest == "/metadata":
                key, defs = store.signature_defs(name, version)
                sigs = get_model_metadata_pb2.SignatureDefMap()
                for k, v in defs.items():
                    sigs.signature_def[k].CopyFrom(v)
                self._send(200, {"model_spec": {"name": key[0], "signature_name": "", "version": str(key[1])},
                                 "metadata": {"signature_def": json_format.MessageToDict(
                                     sigs, preserving_proto_field_name=True)}})
            else:
                raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: GET {self.path}")
        except ServingStatus as err:
            self._error(err)

    def do_POST(self) -> None:  # noqa: N802
        owner = self.server_owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            name, version, rest = self._route()
            if rest != ":predict":
                raise ServingStatus("INVALID_ARGUMENT", f"Malformed request: POST {self.path} "
                                                        "(this test server implements :predict only)")
            owner.calls += 1
            if owner._fail():
                raise ServingStatus("UNAVAILABLE", "test server: not ready yet (fail_first)")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise ServingStatus("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from None
            if not isinstance(body, dict):
                raise ServingStatus("INVALID_ARGUMENT", "JSON Value: not an object")
            sig = body.get("signature_name") or "serving_default"
            specs = owner.store.input_specs(name, version, sig)
            if ("instances" in body) == ("inputs" in body):
                raise ServingStatus("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key" if "inputs" not in body
                                    else "Both 'inputs' and 'instances' keys are present")
            rows = "instances" in body
            inputs = self._parse_rows(body["instances"], specs) if rows else self._parse_columns(body["inputs"], specs)
            _, out = owner.store.predict(name, version, sig, inputs)
        except ServingStatus as err:
            self._error(err)
            return
        if rows:
            n = len(next(iter(out.values())))
            if len(out) == 1:
                only = next(iter(out.values()))
                preds = [_json_output(only[i]) for i in range(n)]
            else:
                preds = [{k: _json_output(v[i]) for k, v in out.items()} for i in range(n)]
            self._send(200, {"predictions": preds})
        else:
            self._send(200, {"outputs": _json_output(next(iter(out.values()))) if len(out) == 1
                             else {k: _json_output(v) for k, v in out.items()}})

    @staticmethod
    def _parse_columns(value, specs) -> dict[str, np.ndarray]:
        if isinstance(value, dict):
            return {k: _json_input(v, specs[k], k) if k in specs else np.asarray(v) for k, v in value.items()}
        if len(specs) != 1:
            raise ServingStatus("INVALID_ARGUMENT", f"'inputs' is a bare value but the signature has inputs {sorted(specs)}")
        k = next(iter(specs))
        return {k: _json_input(value, specs[k], k)}

    @staticmethod
    def _parse_rows(instances, specs) -> dict[str, np.ndarray]:
        if not isinstance(instances, list) or not instances:
            raise ServingStatus("INVALID_ARGUMENT", "'instances' must be a non-empty list")
        if all(isinstance(i, dict) for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise ServingStatus("INVALID_ARGUMENT", "every instance needs the same named inputs")
            return {k: _json_input([i[k] for i in instances], specs[k], k) if k in specs else np.asarray(0)
                    for k in keys}
        if len(specs) != 1:
            raise ServingStatus("INVALID_ARGUMENT", f"instances are bare values but the signature has inputs {sorted(specs)}")
        k = next(iter(specs))
        return {k: _json_input(instances, specs[k], k)}
