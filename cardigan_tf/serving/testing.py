"""In-process stand-ins for TensorFlow Serving, for tests and local trials.

The ``tensorflow_model_server`` binary is on neither PyPI nor Debian, so the clients are tested
against servers written here on the real wire formats:

- :class:`GrpcTestServer`: a ``grpc.server`` with TF-Serving's ``PredictionService`` (Predict,
  GetModelMetadata) and ``ModelService`` (GetModelStatus), from tensorflow-serving-api's
  generated stubs; TensorFlow errors become gRPC status codes of the same name
  (InvalidArgument -> INVALID_ARGUMENT).
- :class:`RestTestServer`: ``http.server`` in a thread with TF-Serving's REST API: predict in
  the row (``instances``/``predictions``) and column (``inputs``/``outputs``) formats, model
  status and metadata, errors as ``{"error": "..."}`` with TF-Serving's HTTP statuses (400 for
  INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE).

Both serve every model of an export base ``BASE/NAME/VERSION/`` (loaded with
``tf.saved_model.load`` on first use), bind to 127.0.0.1 on a free port, and stop cleanly
(context managers). ``fail_first=N`` makes the first N predict calls answer UNAVAILABLE / 503,
to exercise the clients' retries.

:func:`make_test_export` writes a small segmentation export in the exporter's contract (a
stand-in until the real exporter is used in the tests): a tf.Module around a Keras U-Net whose
signatures resize through :mod:`cardigan_tf.resize` with a :class:`cardigan_tf.inference.Preprocessing`,
exactly as the real export does.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from cardigan_tf.serving.local import tf_error_message

__all__ = ["make_test_export", "write_models_config", "ModelStore", "ServingStatus", "GrpcTestServer",
           "RestTestServer"]

HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "UNAUTHENTICATED": 401, "UNKNOWN": 500,
               "DATA_LOSS": 500}


# ============================================================================ the stand-in export
def _tiny_unet(size: int, seed: int):
    import keras

    from cardigan_tf.models.unet import UNetConfig, build_unet

    keras.utils.set_random_seed(seed)
    model = build_unet(UNetConfig(size=size, depth=4, base_filters=4, norm="batch"), name="unet_test")
    # untrained, one class would win almost everywhere: centre the per-class log-probabilities
    # on random images so that the masks mix all four labels (a stronger equality check)
    x = np.random.default_rng(seed).random((4, size, size, 1)).astype(np.float32)
    logp = np.log(np.asarray(model(x, training=False)) + 1e-7).mean(axis=(0, 1, 2))
    layer = model.get_layer("logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - logp])
    return model


def _seg_module(model, pre):
    import tensorflow as tf

    from cardigan_tf import resize

    sizes = tuple(pre.sizes)

    def as_batch(image):
        shape = tf.shape(image)
        rank = tf.size(shape)
        padded = tf.concat([shape, [1, 1, 1, 1]], 0)  # safe indexing whatever the rank
        ok = tf.logical_or(tf.equal(rank, 3), tf.logical_and(tf.equal(rank, 4), tf.equal(padded[3], 1)))
        check = tf.debugging.Assert(ok, ["image: expected [B, H, W] or [B, H, W, 1], got shape", shape])
        with tf.control_dependencies([check]):
            nonempty = tf.debugging.Assert(tf.logical_and(padded[1] > 0, padded[2] > 0),
                                           ["image: expected H, W >= 1, got shape", shape])
        with tf.control_dependencies([nonempty]):
            x = tf.reshape(image, tf.stack([padded[0], padded[1], padded[2], 1]))
        x.set_shape([None, None, None, 1])
        return x

    def run(x):  # float32 (B, H, W, 1) in [0, 1]
        hw = tf.shape(x)[1:3]
        probs = model(resize.resize_chain(x, sizes), training=False)
        if isinstance(probs, (list, tuple)):
            probs = probs[0]
        # resize.resize_probabilities needs a static size; this is its op (bilinear, half-pixel
        # centres) at the input's dynamic size, then resize.probs_to_mask's argmax.
        probs = tf.image.resize(tf.cast(probs, tf.float32), hw, method="bilinear")
        return {"probabilities": probs, "mask": resize.probs_to_mask(probs)}

    class SegServing(tf.Module):
        def __init__(self):
            super().__init__(name="seg_serving")
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="image")])
        def serve_float(self, image):
            x = as_batch(image)
            finite = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(x)), ["image: NaN or infinite values"])
            with tf.control_dependencies([finite]):
                lo, hi = tf.reduce_min(x), tf.reduce_max(x)
                in_range = tf.debugging.Assert(tf.logical_or(tf.equal(tf.size(x), 0),
                                                             tf.logical_and(lo >= 0.0, hi <= 1.0)),
                                               ["image: expected float values in [0, 1], got min/max", lo, hi])
            with tf.control_dependencies([in_range]):
                x = tf.identity(x)
            return run(x)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="image")])
        def serve_uint8(self, image):
            return run(tf.cast(as_batch(image), tf.float32) / 255.0)

    return SegServing()


def write_models_config(base: str | Path) -> Path:
    """``BASE/models.config`` (ModelServerConfig text) listing every ``BASE/NAME`` with versions,
    with absolute paths: the exporter's :func:`cardigan_tf.serving.export.models_config_text`."""
    from cardigan_tf.files import atomic_write_text
    from cardigan_tf.serving.export import models_config_text

    base = Path(base)
    atomic_write_text(base / "models.config", models_config_text(base, absolute=True))
    return base / "models.config"


def make_test_export(base: str | Path, name: str = "seg", version: int = 1, *, model=None, preprocessing=None,
                     size: int = 32, seed: int = 0) -> Path:
    """Write a segmentation export ``BASE/NAME/VERSION/`` in the exporter's contract.

    Signatures: ``serving_default`` (``image`` float32 in [0, 1]) and ``serving_uint8``
    (``image`` uint8), rank 3 [B, H, W] or rank 4 [B, H, W, 1], any H, W -> ``probabilities``
    float32 [B, H, W, 4] and ``mask`` uint8 [B, H, W] at the input size; bad input ->
    InvalidArgument. Plus ``metadata.json`` and ``BASE/models.config``.

    Args:
        model: a Keras segmentation model (softmax output); default a tiny random U-Net of
            ``size`` (seeded with ``seed`` through ``keras.utils.set_random_seed``).
        preprocessing: a :class:`cardigan_tf.inference.Preprocessing`; default the model's
            input size, no prepared size.

    Returns the version folder. Refuses an existing one (FileExistsError).
    """
    import tensorflow as tf

    from cardigan_tf import resize
    from cardigan_tf.files import write_json
    from cardigan_tf.inference import Preprocessing
    from cardigan_tf.labels import LABEL_NAMES

    base = Path(base)
    out = base / name / str(int(version))
    if out.exists():
        raise FileExistsError(f"{out}: export version already exists")
    if model is None:
        model = _tiny_unet(size, seed)
    pre = preprocessing or Preprocessing(working_size=int(model.inputs[0].shape[1]))
    module = _seg_module(model, pre)
    signatures = {"serving_default": module.serve_float.get_concrete_function(),
                  "serving_uint8": module.serve_uint8.get_concrete_function()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        write_json(tmp / "metadata.json", {
            "kind": "seg", "stand_in": "cardigan_tf.serving.testing.make_test_export",
            "working_size": pre.working_size, "prepared_size": pre.prepared_size,
            "labels": {str(k): v for k, v in LABEL_NAMES.items()},
            "preprocessing": pre.to_dict(), "output_interpolation": resize.PROBABILITY_INTERPOLATION,
            "signatures": {
                "serving_default": {"inputs": {"image": "float32 [B,H,W] or [B,H,W,1] in [0,1]"},
                                    "outputs": {"probabilities": "float32 [B,H,W,4]", "mask": "uint8 [B,H,W]"}},
                "serving_uint8": {"inputs": {"image": "uint8 [B,H,W] or [B,H,W,1]"},
                                  "outputs": {"probabilities": "float32 [B,H,W,4]", "mask": "uint8 [B,H,W]"}},
            }})
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_models_config(base)
    return out


# ============================================================================ model store
class ServingStatus(Exception):
    """An error with a TF-Serving status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...)."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ModelStore:
    """The models of an export base ``BASE/NAME/VERSION/``, loaded on first use."""

    def __init__(self, base: str | Path):
        self.base = Path(base)
        if not self.base.is_dir():
            raise FileNotFoundError(f"{self.base}: no export base folder")
        self._loaded: dict[tuple[str, int], Any] = {}
        self._sigdefs: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def versions(self, name: str) -> list[int]:
        d = self.base / name
        if not name or "/" in name or not d.is_dir():
            return []
        return sorted(int(v.name) for v in d.iterdir() if v.name.isdigit() and (v / "saved_model.pb").is_file())

    def resolve(self, name: str, version: int | None) -> tuple[str, int]:
        versions = self.versions(name)
        if not versions:
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: Latest({name})")
        if version is None:
            return name, versions[-1]
        if int(version) not in versions:
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return name, int(version)

    def load(self, name: str, version: int | None):
        import tensorflow as tf

        key = self.resolve(name, version)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = tf.saved_model.load(str(self.base / key[0] / str(key[1])))
        return key, self._loaded[key]

    def signature_defs(self, name: str, version: int | None):
        """(name, version), the SignatureDef map (proto) read from saved_model.pb."""
        from tensorflow.core.protobuf import saved_model_pb2

        key = self.resolve(name, version)
        with self._lock:
            if key not in self._sigdefs:
                sm = saved_model_pb2.SavedModel()
                sm.ParseFromString((self.base / key[0] / str(key[1]) / "saved_model.pb").read_bytes())
                defs = {k: v for k, v in sm.meta_graphs[0].signature_def.items() if not k.startswith("__")}
                self._sigdefs[key] = defs
        return key, self._sigdefs[key]

    def input_specs(self, name: str, version: int | None, signature_name: str) -> dict[str, Any]:
        """``{input name: tf.TensorSpec}`` of a signature (FAILED_PRECONDITION if it has none)."""
        _, model = self.load(name, version)
        sig_name = signature_name or "serving_default"
        if sig_name not in model.signatures:
            raise ServingStatus("FAILED_PRECONDITION",
                                f'Serving signature name: "{sig_name}" not found in signature def')
        return dict(model.signatures[sig_name].structured_input_signature[1])

    def predict(self, name: str, version: int | None, signature_name: str,
                inputs: dict[str, np.ndarray]) -> tuple[tuple[str, int], dict[str, np.ndarray]]:
        """Run a signature on NumPy inputs (dtypes must match the signature's)."""
        import tensorflow as tf

        key, model = self.load(name, version)
        specs = self.input_specs(name, version, signature_name)
        missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        if missing or extra:
            raise ServingStatus("INVALID_ARGUMENT", f"input names {sorted(inputs)} do not match the signature's "
                                                    f"inputs {sorted(specs)}")
        feed = {}
        for k, spec in specs.items():
            a = np.asarray(inputs[k])
            if a.dtype != spec.dtype.as_numpy_dtype:
                raise ServingStatus("INVALID_ARGUMENT", f"Expects arg[{k}] to be {spec.dtype.name} but "
                                                        f"{tf.as_dtype(a.dtype).name} is provided")
            if not spec.shape.is_compatible_with(a.shape):
                raise ServingStatus("INVALID_ARGUMENT", f"input {k}: shape {list(a.shape)} is not compatible with "
                                                        f"the signature's {spec.shape}")
            feed[k] = tf.constant(a)
        fn = model.signatures[signature_name or "serving_default"]
        try:
            out = fn(**feed)
        except tf.errors.OpError as exc:
            from tensorflow.core.protobuf import error_codes_pb2

            raise ServingStatus(error_codes_pb2.Code.Name(exc.error_code), tf_error_message(exc)) from None
        except (TypeError, ValueError) as exc:
            raise ServingStatus("INVALID_ARGUMENT", str(exc)) from None
        return key, {k: v.numpy() for k, v in out.items()}


class _FailFirst:
    def __init__(self, n: int):
        self.left = int(n)
        self.lock = threading.Lock()

    def __call__(self) -> bool:
        with self.lock:
            if self.left > 0:
                self.left -= 1
                return True
            return False


class _TestServer:
    """What both test servers share: the model store, the port (0: a free one), the count of
    predict calls (including refused ones), ``fail_first`` and the context manager."""

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0):
        self.store = base if isinstance(base, ModelStore) else ModelStore(base)
        self.port = int(port)
        self.calls = 0
        self._fail = _FailFirst(fail_first)

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ============================================================================ gRPC
class GrpcTestServer(_TestServer):
    """In-process TF-Serving gRPC server (PredictionService + ModelService) on 127.0.0.1.

    ``with GrpcTestServer(base) as s: GrpcClient(s.target, "seg")``.
    """

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0, workers: int = 4):
        super().__init__(base, port, fail_first)
        self._workers = workers
        self._server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "GrpcTestServer":
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        from cardigan_tf.serving.client_grpc import channel_options

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers), options=channel_options())
        # the generated bases answer UNIMPLEMENTED for the methods not written here (Classify, ...)
        predict = type("PredictionServicer", (_PredictionServicer, prediction_service_pb2_grpc.PredictionServiceServicer), {})
        models = type("ModelServicer", (_ModelServicer, model_service_pb2_grpc.ModelServiceServicer), {})
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(predict(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(models(self), server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if not port:
            raise OSError(f"could not bind 127.0.0.1:{self.port}")
        server.start()
        self.port, self._server = port, server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


def _abort(context, err: ServingStatus):
    import grpc

    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN), err.message)


def _spec_version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _fill_spec(spec, key: tuple[str, int], signature_name: str | None = None) -> None:
    spec.name = key[0]
    spec.version.value = key[1]
    if signature_name is not None:
        spec.signature_name = signature_name


class _PredictionServicer:
    """PredictionService methods (mixed with the generated servicer base in start())."""

    def __init__(self, owner: GrpcTestServer):
        self.owner = owner

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.owner.calls += 1
        try:
            if self.owner._fail():
                raise ServingStatus("UNAVAILABLE", "test server: not ready yet (fail_first)")
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            sig = request.model_spec.signature_name or "serving_default"
            key, out = self.owner.store.predict(request.model_spec.name, _spec_version(request.model_spec), sig, inputs)
        except ServingStatus as err:
            _abort(context, err)
            return None
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, key, sig)
        wanted = list(request.output_filter) or list(out)
        for k in wanted:
            if k not in out:
                _abort(context, ServingStatus("INVALID_ARGUMENT", f"output_filter: no output {k!r}"))
            response.outputs[k].CopyFrom(tf.make_tensor_proto(out[k]))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        from tensorflow_serving.apis import get_model_metadata_pb2

        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingStatus("INVALID_ARGUMENT", "Metadata field 'signature_def' is the only one supported, "
                                                        f"got {list(request.metadata_field)}")
            key, defs = self.owner.store.signature_defs(request.model_spec.name, _spec_version(request.model_spec))
        except ServingStatus as err:
            _abort(context, err)
            return None
        sigs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in defs.items():
            sigs.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, key)
        response.metadata["signature_def"].Pack(sigs)
        return response


class _ModelServicer:
    def __init__(self, owner: GrpcTestServer):
        self.owner = owner

    def GetModelStatus(self, request, context):  # noqa: N802
        from tensorflow_serving.apis import get_model_status_pb2

        try:
            key = self.owner.store.resolve(request.model_spec.name, _spec_version(request.model_spec))
        except ServingStatus as err:
            _abort(context, err)
            return None
        response = get_model_status_pb2.GetModelStatusResponse()
        st = response.model_version_status.add()
        st.version = key[1]
        st.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


# ============================================================================ REST
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:[a-z]+)?$")


class RestTestServer(_TestServer):
    """TF-Serving REST API (``/v1/models/...``) in a thread on 127.0.0.1.

    ``with RestTestServer(base) as s: RestClient(s.url, "seg")``.
    """

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0):
        super().__init__(base, port, fail_first)
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
                from google.protobuf import json_format
                from tensorflow_serving.apis import get_model_metadata_pb2

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
