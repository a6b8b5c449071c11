"""In-process stand-ins for TensorFlow Serving, for tests and local trials (one import for all).

The ``tensorflow_model_server`` binary is on neither PyPI nor Debian, so the clients are tested
against servers written here on the real wire formats:

- :class:`GrpcTestServer` (:mod:`cardigan_tf.serving.stand_in_grpc`): TF-Serving's
  ``PredictionService`` (Predict, GetModelMetadata) and ``ModelService`` (GetModelStatus);
  TensorFlow errors become gRPC status codes of the same name.
- :class:`RestTestServer` (:mod:`cardigan_tf.serving.stand_in_rest`): TF-Serving's REST API
  (``/v1/models/...``: predict in rows and columns, status, metadata; its HTTP statuses).

Both serve every model of an export base ``BASE/NAME/VERSION/`` (loaded with
``tf.saved_model.load`` on first use), bind to 127.0.0.1 on a free port, and stop cleanly
(context managers). ``fail_first=N`` makes the first N predict calls answer UNAVAILABLE / 503,
to exercise the clients' retries.

:func:`make_test_export` (:mod:`cardigan_tf.serving.stand_in`) writes a segmentation export with
the real exporter around any Keras model (default: a tiny random U-Net).
"""

from cardigan_tf.serving.stand_in import (
                                          ModelStore,
                                          ServingStatus,
                                          make_test_export,
                                          tiny_test_unet,
                                          write_models_config,
)
from cardigan_tf.serving.stand_in_grpc import GrpcTestServer
from cardigan_tf.serving.stand_in_rest import RestTestServer

__all__ = ["make_test_export", "write_models_config", "tiny_test_unet", "ModelStore", "ServingStatus",
           "GrpcTestServer", "RestTestServer"]
