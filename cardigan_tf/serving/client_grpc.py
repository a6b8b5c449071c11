"""TF-Serving gRPC client (tensorflow-serving-api's PredictionService and ModelService).

- :meth:`GrpcClient.predict`: ``PredictionService/Predict`` with ``TensorProto`` inputs
  (``tf.make_tensor_proto``; dtypes are kept, so a uint8 array reaches a uint8 signature
  as uint8) -> ``{output name: NumPy array}`` (``tf.make_ndarray``).
- :meth:`GrpcClient.metadata`: ``PredictionService/GetModelMetadata`` (the signature_def map,
  as a dict through ``json_format``, the same shape as the REST metadata answer).
- :meth:`GrpcClient.status`: ``ModelService/GetModelStatus``.
- :meth:`GrpcClient.segment`: frames of any sizes in one request to the fixed-size signature
  ``serving_fixed`` (:func:`cardigan_tf.serving.contract.segment_frames`).

Retries: UNAVAILABLE (connection refused, server starting or overloaded) and
DEADLINE_EXCEEDED (``timeout`` seconds per call) are retried ``retries`` times (``retries + 1``
attempts at most) after ``backoff * 2**k`` seconds; any other status is raised at once as a
:class:`~cardigan_tf.serving.errors.ServingRequestError` with the server's message
(INVALID_ARGUMENT for a bad input). Messages up to 256 MiB are accepted both ways (a 1000 x 800
probability map is 12.8 MB, over gRPC's 4 MB default).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cardigan_tf.serving.client_rest import signature_io, signature_shapes
from cardigan_tf.serving.contract import FIXED_SIGNATURE, segment_frames
from cardigan_tf.serving.errors import ServingRequestError, ServingUnavailableError

__all__ = ["GrpcClient", "MAX_MESSAGE_BYTES", "RETRY_CODES"]

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
RETRY_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


class GrpcClient:
    """Client of one model on a TF-Serving gRPC endpoint.

    Args:
        target: ``host:port``.
        model: the model name.
        version: a version number, or None for the server's choice (the latest).
        timeout: deadline in seconds of each call.
        retries: how many times a transient failure is retried.
        backoff: seconds before the first retry, doubled for each further one.
    """

    def __init__(self, target: str, model: str, version: int | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.5):
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target: expected host:port, got {target!r}")
        if not model or "/" in model:
            raise ValueError(f"model: expected a model name without '/', got {model!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError(f"retries >= 0, timeout > 0, backoff >= 0 expected, got {retries}, {timeout}, {backoff}")
        self.target = target
        self.model = model
        self.version = None if version is None else int(version)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target, options=channel_options())
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._sleep = time.sleep  # replaceable in tests
        self._metadata: dict | None = None

    def __repr__(self) -> str:
        return f"GrpcClient({self.where!r})"

    @property
    def where(self) -> str:
        return f"grpc://{self.target}/{self.model}" + (f"/versions/{self.version}" if self.version is not None else "")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, spec, signature_name: str | None = None) -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if signature_name is not None:
            spec.signature_name = signature_name

    def _call(self, method, request, what: str):
        grpc = self._grpc
        attempts = self.retries + 1
        last = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                name = code.name if code is not None else "UNKNOWN"
                detail = exc.details() if hasattr(exc, "details") else str(exc)
                last = (name, detail or name)
                if name in RETRY_CODES:
                    continue
                raise ServingRequestError(f"{self.where} ({what})", last[1], status=name, attempts=attempt + 1) from None
        raise ServingUnavailableError(f"{self.where} ({what})", last[1], status=last[0], attempts=attempts)

    # ------------------------------------------------------------------ API
    def predict(self, inputs, signature_name: str = "serving_default",
                output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run a signature. ``inputs``: ``{name: array}``, or one array for a single-input
        signature (its input name is read from the metadata). ``output_filter``: only these
        outputs (default all). Returns ``{output: array}``."""
        if not isinstance(inputs, dict):
            names = list(self.signature(signature_name)["inputs"])
            if len(names) != 1:
                raise ValueError(f"signature {signature_name!r} has inputs {names}: pass a dict")
            inputs = {names[0]: inputs}
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        request.output_filter.extend(output_filter or [])
        response = self._call(self._predict.Predict, request, "Predict")
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self) -> dict:
        """GetModelMetadata, as ``{"model_spec": {...}, "metadata": {"signature_def": {...}}}``
        (the REST metadata shape; cached)."""
        if self._metadata is None:
            request = get_model_metadata_pb2.GetModelMetadataRequest()
            self._spec(request.model_spec)
            request.metadata_field.append("signature_def")
            response = self._call(self._predict.GetModelMetadata, request, "GetModelMetadata")
            sigs = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(sigs)
            self._metadata = {
                "model_spec": json_format.MessageToDict(response.model_spec, preserving_proto_field_name=True),
                "metadata": {"signature_def": json_format.MessageToDict(sigs, preserving_proto_field_name=True)},
            }
        return self._metadata

    def signature(self, signature_name: str = "serving_default") -> dict[str, dict[str, Any]]:
        """Inputs and outputs (name -> NumPy dtype) of a signature."""
        try:
            return signature_io(self.metadata(), signature_name)
        except (KeyError, ValueError) as exc:
            raise ServingRequestError(f"{self.where} (GetModelMetadata)", str(exc).strip("'\"")) from None

    def signature_shapes(self, signature_name: str = "serving_default") -> dict[str, dict[str, list[int] | None]]:
        """Input and output shapes of a signature (-1 where unknown; None for an unknown rank)."""
        try:
            return signature_shapes(self.metadata(), signature_name)
        except (KeyError, ValueError) as exc:
            raise ServingRequestError(f"{self.where} (GetModelMetadata)", str(exc).strip("'\"")) from None

    def segment(self, frames, signature_name: str = FIXED_SIGNATURE) -> dict[str, list]:
        """Frames of any sizes (2-D uint8, or float in [0, 1]) through a fixed-size signature in
        one request -> ``{output: [one array per frame]}`` at each frame's size (see
        :func:`cardigan_tf.serving.contract.segment_frames`)."""
        shapes = self.signature_shapes(signature_name)
        return segment_frames(lambda x: self.predict({"image": x}, signature_name), shapes, frames, signature_name)

    def status(self) -> dict:
        """GetModelStatus, as the REST status answer: ``{"model_version_status": [...]}``."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request, "GetModelStatus")
        return json_format.MessageToDict(response, preserving_proto_field_name=True)
