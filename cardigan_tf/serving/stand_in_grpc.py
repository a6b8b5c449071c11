"""In-process TF-Serving gRPC server for tests and local trials.

:class:`GrpcTestServer`: a ``grpc.server`` with TF-Serving's ``PredictionService`` (Predict,
GetModelMetadata) and ``ModelService`` (GetModelStatus), from tensorflow-serving-api's generated
stubs; TensorFlow errors become gRPC status codes of the same name (InvalidArgument ->
INVALID_ARGUMENT). Methods not written here (Classify, ...) answer UNIMPLEMENTED.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cardigan_tf.serving.batching import ServerOptions
from cardigan_tf.serving.client_grpc import channel_options
from cardigan_tf.serving.stand_in import ServingStatus, TestServerBase

__all__ = ["GrpcTestServer"]


class GrpcTestServer(TestServerBase):
    """In-process TF-Serving gRPC server (PredictionService + ModelService) on 127.0.0.1.

    ``with GrpcTestServer(base) as s: GrpcClient(s.target, "seg")``. ``workers``: requests handled
    at once (a batched request waits in its worker for the batch to close); ``server``,
    ``batch_window_s``: the batching flags (:class:`~cardigan_tf.serving.stand_in.ModelStore`).
    """

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0, workers: int = 16,
                 server: ServerOptions | None = None, batch_window_s: float | None = None):
        super().__init__(base, port, fail_first, server, batch_window_s)
        self._workers = workers
        self._server = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "GrpcTestServer":
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

        self.owner.calls += 1
        try:
            if self.owner._fail():
                raise ServingStatus("UNAVAILABLE", "test server: not ready yet (fail_first)")
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            sig = request.model_spec.signature_name or "serving_default"
            key, out = self.owner.store.predict(request.model_spec.name, _spec_version(request.model_spec), sig, inputs,
                                                tuple(request.output_filter))
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


