"""What the in-process TF-Serving stand-ins share: a stand-in export, the model store, the base server.

- :func:`make_test_export` writes a segmentation export ``BASE/NAME/VERSION/`` with the real
  exporter's :func:`cardigan_tf.serving.export.write_version` (the same serving graph, warm-up
  records and metadata as ``cardigan_tf.export``), around any Keras segmentation model; by default
  a tiny random U-Net whose class biases are centred so that its masks mix all four labels.
- :class:`ModelStore`: the models of an export base, loaded on first use, run on NumPy inputs,
  errors as :class:`ServingStatus` with TF-Serving's status code names; with the server's
  batching flags (``server``: :class:`cardigan_tf.serving.batching.ServerOptions`, default
  batching off) a batched servable's requests go through TF-Serving's batching rule
  (:class:`cardigan_tf.serving.stand_in_batching.Batcher`).
- :class:`TestServerBase`: port, call count, ``fail_first`` and the context manager of
  :class:`cardigan_tf.serving.stand_in_grpc.GrpcTestServer` and
  :class:`cardigan_tf.serving.stand_in_rest.RestTestServer`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, saved_model_pb2

from cardigan_tf.files import atomic_write_text
from cardigan_tf.inference import Preprocessing
from cardigan_tf.models.unet import UNetConfig, build_unet
from cardigan_tf.serving.batching import ServerOptions, servable_params
from cardigan_tf.serving.errors import ServingStatus
from cardigan_tf.serving.export import models_config_text, write_seg_versions
from cardigan_tf.serving.local import tf_error_message
from cardigan_tf.serving.stand_in_batching import Batcher

__all__ = ["make_test_export", "write_models_config", "tiny_test_unet", "ModelStore", "ServingStatus",
           "TestServerBase"]


# ----------------------------------------------------------------------------- the stand-in export
def tiny_test_unet(size: int, seed: int):
    """A tiny random U-Net (seeded) whose masks mix all four labels."""
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


def write_models_config(base: str | Path) -> Path:
    """``BASE/models.config`` (ModelServerConfig text) listing every ``BASE/NAME`` with versions,
    with absolute paths: the exporter's :func:`cardigan_tf.serving.export.models_config_text`."""
    base = Path(base)
    atomic_write_text(base / "models.config", models_config_text(base, absolute=True))
    return base / "models.config"


def make_test_export(base: str | Path, name: str = "seg", version: int = 1, *, model=None, preprocessing=None,
                     size: int = 32, seed: int = 0, batched: bool = False) -> Path:
    """Write a segmentation export ``BASE/NAME/VERSION/`` with the real exporter, and ``BASE/models.config``.

    Signatures as ``cardigan_tf.export`` writes them: ``serving_default`` (``image`` float32 in
    [0, 1]) and ``serving_uint8`` (``image`` uint8), rank 3 [B, H, W] or rank 4 [B, H, W, 1], any
    H, W -> ``probabilities`` float32 [B, H, W, 4] and ``mask`` uint8 [B, H, W] at the input size;
    ``serving_fixed`` at the first size of the resize chain; bad input -> InvalidArgument.

    Args:
        model: a Keras segmentation model (softmax output); default :func:`tiny_test_unet` of
            ``size`` and ``seed``.
        preprocessing: a :class:`cardigan_tf.inference.Preprocessing`; default the model's
            input size, no prepared size.
        batched: also write ``BASE/NAME_batched/VERSION`` (``serving_fixed`` and the per-model
            batching file), as ``cardigan_tf.export`` does.

    Returns the version folder ``BASE/NAME/VERSION``. Refuses an existing one (FileExistsError).
    """
    base = Path(base)
    out = base / name / str(int(version))
    if out.exists():
        raise FileExistsError(f"{out}: export version already exists")
    if model is None:
        model = tiny_test_unet(size, seed)
    pre = preprocessing or Preprocessing(working_size=int(model.inputs[0].shape[1]))
    write_seg_versions(base, name, int(version), model, {"pre": pre},
                       source={"stand_in": "cardigan_tf.serving.testing.make_test_export"}, batched=batched)
    write_models_config(base)
    return out


# ----------------------------------------------------------------------------- model store
class ModelStore:
    """The models of an export base ``BASE/NAME/VERSION/``, loaded on first use.

    ``server``: the server's batching flags (default: batching off); ``batch_window_s``
    replaces each batched servable's ``batch_timeout_micros`` (see
    :mod:`cardigan_tf.serving.stand_in_batching`)."""

    def __init__(self, base: str | Path, server: ServerOptions | None = None, batch_window_s: float | None = None):
        self.base = Path(base)
        if not self.base.is_dir():
            raise FileNotFoundError(f"{self.base}: no export base folder")
        self.server = server or ServerOptions()
        self.batcher = Batcher(batch_window_s)
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
        key = self.resolve(name, version)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = tf.saved_model.load(str(self.base / key[0] / str(key[1])))
        return key, self._loaded[key]

    def signature_defs(self, name: str, version: int | None):
        """(name, version), the SignatureDef map (proto) read from saved_model.pb."""
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

    def batching(self, key: tuple[str, int]) -> dict | None:
        """The batching parameters of a servable under :attr:`server`, or None (not batched)."""
        return servable_params(self.base / key[0] / str(key[1]), self.server)

    def predict(self, name: str, version: int | None, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter: tuple[str, ...] = ()) -> tuple[tuple[str, int], dict[str, np.ndarray]]:
        """Run a signature on NumPy inputs (dtypes must match the signature's), batched with the
        concurrent requests of the same signature and outputs when the servable is batched."""
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
            feed[k] = a
        fn = model.signatures[signature_name or "serving_default"]

        def run(arrays):
            try:
                out = fn(**{k: tf.constant(v) for k, v in arrays.items()})
            except tf.errors.OpError as exc:
                raise ServingStatus(error_codes_pb2.Code.Name(exc.error_code), tf_error_message(exc)) from None
            except (TypeError, ValueError) as exc:
                raise ServingStatus("INVALID_ARGUMENT", str(exc)) from None
            return {k: v.numpy() for k, v in out.items()}

        params = self.batching(key)
        if params is None:
            return key, run(feed)
        queue = (key, signature_name or "serving_default", tuple(sorted(output_filter)))
        return key, self.batcher.run(queue, params, feed, run)


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


class TestServerBase:
    """What both test servers share: the model store, the port (0: a free one), the count of
    predict calls (including refused ones), ``fail_first`` and the context manager.
    ``server`` and ``batch_window_s``: see :class:`ModelStore` (for a base folder)."""

    def __init__(self, base: str | Path, port: int = 0, fail_first: int = 0, server: ServerOptions | None = None,
                 batch_window_s: float | None = None):
        self.store = base if isinstance(base, ModelStore) else ModelStore(base, server, batch_window_s)
        self.port = int(port)
        self.calls = 0
        self._fail = _FailFirst(fail_first)

    @property
    def batches(self):
        """Every batch the server ran for a batched servable (``Batcher.records``)."""
        return self.store.batcher.records

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


