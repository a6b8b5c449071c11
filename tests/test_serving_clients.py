"""REST and gRPC clients against the in-process TF-Serving stand-ins (cardigan_tf.serving.testing),
on a segmentation export in the exporter's contract (make_test_export)."""

import json
import socket
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf.serving.client_grpc import RETRY_CODES, GrpcClient
from cardigan_tf.serving.client_rest import RestClient
from cardigan_tf.serving.errors import ServingRequestError, ServingUnavailableError
from cardigan_tf.serving.testing import GrpcTestServer, RestTestServer, make_test_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    version = make_test_export(base, "seg", 1)
    return base, tf.saved_model.load(str(version))


@pytest.fixture(scope="module")
def servers(export):
    base, _ = export
    with GrpcTestServer(base) as g, RestTestServer(base) as r:
        yield g, r


def _direct(model, x, signature="serving_default"):
    return {k: v.numpy() for k, v in model.signatures[signature](image=tf.constant(x)).items()}


def _images(dtype=np.float32, shape=(2, 45, 37)):
    rng = np.random.default_rng(3)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _assert_same(got, ref):
    assert set(got) == {"probabilities", "mask", "uncertainty", "qc_flags"} == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_stand_in_export_follows_the_contract(export):
    base, model = export
    assert (base / "models.config").read_text().count('name: "seg"') == 1
    x = _images()
    out = _direct(model, x)
    assert out["probabilities"].shape == (2, 45, 37, 4) and out["mask"].shape == (2, 45, 37)
    assert out["mask"].dtype == np.uint8
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["mask"], out["probabilities"].argmax(-1))
    assert len(np.unique(out["mask"])) >= 3  # a mixed mask, not one class everywhere
    # rank 4 and the uint8 signature answer the same as rank 3 / float / 255
    np.testing.assert_array_equal(_direct(model, x[..., None])["mask"], out["mask"])
    u = _images(np.uint8)
    np.testing.assert_array_equal(_direct(model, u, "serving_uint8")["mask"],
                                  _direct(model, u.astype(np.float32) / np.float32(255))["mask"])


@pytest.mark.parametrize("signature,dtype", [("serving_default", np.float32), ("serving_uint8", np.uint8)])
def test_grpc_predict_equals_direct_savedmodel_call(export, servers, signature, dtype):
    _, model = export
    x = _images(dtype)
    with GrpcClient(servers[0].target, "seg") as client:
        _assert_same(client.predict({"image": x}, signature), _direct(model, x, signature))
        _assert_same(client.predict(x[..., None], signature), _direct(model, x[..., None], signature))  # bare array
        only = client.predict({"image": x}, signature, output_filter=["mask"])
        assert list(only) == ["mask"]
        np.testing.assert_array_equal(only["mask"], _direct(model, x, signature)["mask"])
        v1 = GrpcClient(servers[0].target, "seg", version=1)
        _assert_same(v1.predict({"image": x}, signature), _direct(model, x, signature))
        v1.close()


def test_grpc_status_metadata_and_errors(servers):
    with GrpcClient(servers[0].target, "seg") as client:
        status = client.status()["model_version_status"]
        assert status[0]["version"] == "1" and status[0]["state"] == "AVAILABLE"
        sig = client.signature("serving_default")
        assert sig == {"inputs": {"image": np.float32}, "outputs": {"probabilities": np.float32, "mask": np.uint8,
                                                                    "uncertainty": np.float32, "qc_flags": np.int32}}
        assert client.signature("serving_uint8")["inputs"] == {"image": np.uint8}
        with pytest.raises(ServingRequestError) as err:
            client.predict({"image": np.zeros((5,), np.float32)})  # rank 1
        assert err.value.status == "INVALID_ARGUMENT"
        assert "must have rank 3 (B, H, W) or 4 (B, H, W, 1)" in err.value.message
        assert servers[0].target in str(err.value)
        with pytest.raises(ServingRequestError) as err:
            client.predict({"image": np.full((1, 8, 8), 2.0, np.float32)})  # out of [0, 1]
        assert err.value.status == "INVALID_ARGUMENT" and "[0, 1]" in err.value.message
        with pytest.raises(ServingRequestError) as err:
            client.predict({"image": np.zeros((1, 8, 8), np.uint8)})  # uint8 to the float signature
        assert err.value.status == "INVALID_ARGUMENT" and "uint8" in err.value.message
    with GrpcClient(servers[0].target, "nope") as client, pytest.raises(ServingRequestError) as err:
        client.predict({"image": np.zeros((1, 8, 8), np.float32)})
    assert err.value.status == "NOT_FOUND" and err.value.attempts == 1


def test_grpc_retries_then_fails_on_a_closed_port():
    client = GrpcClient(f"127.0.0.1:{_closed_port()}", "seg", timeout=5.0, retries=2, backoff=0.01)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(ServingUnavailableError) as err:
        client.predict({"image": np.zeros((1, 8, 8), np.float32)}, "serving_default")
    client.close()
    assert err.value.attempts == 3 and err.value.status == "UNAVAILABLE"
    assert sleeps == [0.01, 0.02]  # exponential backoff between the attempts
    assert "after 3 attempts" in str(err.value) and "127.0.0.1" in str(err.value)


def test_grpc_retries_unavailable_then_succeeds(export):
    base, model = export
    x = _images()
    with GrpcTestServer(base, fail_first=2) as server, GrpcClient(server.target, "seg", retries=3, backoff=0.0) as client:
        _assert_same(client.predict({"image": x}), _direct(model, x))
        assert server.calls == 3
    with GrpcTestServer(base, fail_first=5) as server:
        from cardigan_tf.serving.errors import ServingUnavailableError

        client = GrpcClient(server.target, "seg", retries=1, backoff=0.0)
        with pytest.raises(ServingUnavailableError) as err:
            client.predict({"image": x})
        assert err.value.attempts == 2 and server.calls == 2 and "not ready" in err.value.message
        client.close()


@pytest.mark.parametrize("fmt", ["columns", "rows"])
@pytest.mark.parametrize("signature,dtype", [("serving_default", np.float32), ("serving_uint8", np.uint8)])
def test_rest_predict_equals_direct_savedmodel_call(export, servers, fmt, signature, dtype):
    _, model = export
    x = _images(dtype)
    client = RestClient(servers[1].url, "seg")
    _assert_same(client.predict({"image": x}, signature, fmt=fmt), _direct(model, x, signature))
    _assert_same(client.predict(x[..., None], signature, fmt=fmt), _direct(model, x[..., None], signature))
    one = x[:1, :20, :13]
    _assert_same(RestClient(servers[1].url, "seg", version=1).predict({"image": one}, signature, fmt=fmt),
                 _direct(model, one, signature))


def test_rest_wire_format_is_tf_servings(servers):
    """The raw JSON: rows -> predictions (one object per instance), columns -> outputs."""
    url = servers[1].url + "/v1/models/seg:predict"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(body):
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    img = np.zeros((6, 5), np.float32).tolist()
    rows = post({"instances": [{"image": img}, {"image": img}]})
    assert len(rows["predictions"]) == 2
    assert set(rows["predictions"][0]) == {"probabilities", "mask", "uncertainty", "qc_flags"}
    assert np.asarray(rows["predictions"][0]["mask"]).shape == (6, 5)
    assert isinstance(rows["predictions"][0]["qc_flags"], int)  # one scalar per instance
    assert isinstance(rows["predictions"][0]["uncertainty"], float)
    assert rows == post({"signature_name": "serving_default", "instances": [img, img]})  # bare single input
    cols = post({"inputs": {"image": [img, img]}})
    assert np.asarray(cols["outputs"]["probabilities"]).shape == (2, 6, 5, 4)
    assert np.asarray(cols["outputs"]["qc_flags"]).shape == (2,)


def test_rest_status_metadata_and_errors(servers):
    client = RestClient(servers[1].url, "seg")
    st = client.status()["model_version_status"]
    assert st == [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    meta = client.metadata()
    assert meta["model_spec"] == {"name": "seg", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image"]["dtype"] == "DT_FLOAT" and sig["outputs"]["mask"]["dtype"] == "DT_UINT8"
    assert sig["method_name"] == "tensorflow/serving/predict"
    for fmt in ("columns", "rows"):
        with pytest.raises(ServingRequestError) as err:
            client.predict({"image": np.full((1, 8, 8), 1.5, np.float32)}, fmt=fmt)
        assert err.value.status == "HTTP 400" and "float values must be in [0, 1]" in err.value.message
        assert ":predict" in err.value.target
    with pytest.raises(ServingRequestError) as err:
        client.predict({"image": np.zeros((1, 8, 8), np.float32)}, "serving_nope")
    assert err.value.status == "HTTP 400" and "serving_nope" in str(err.value)
    with pytest.raises(ServingRequestError) as err:
        RestClient(servers[1].url, "seg", version=7).status()
    assert err.value.status == "HTTP 404" and "Specific(seg, 7)" in err.value.message
    with pytest.raises(ValueError, match="rows"):
        client.predict({"image": np.zeros((1, 8, 8), np.float32)}, fmt="table")


def test_rest_retries_then_fails_on_a_closed_port():
    port = _closed_port()
    client = RestClient(f"http://127.0.0.1:{port}", "seg", timeout=5.0, retries=3, backoff=0.01)
    sleeps = []
    client._sleep = sleeps.append
    with pytest.raises(ServingUnavailableError) as err:
        client.status()
    assert err.value.attempts == 4 and sleeps == [0.01, 0.02, 0.04]
    assert f"http://127.0.0.1:{port}/v1/models/seg" in str(err.value)
    assert "connection refused" in err.value.message


def test_rest_retries_503_then_succeeds(export):
    base, model = export
    x = _images()
    with RestTestServer(base, fail_first=2) as server:
        client = RestClient(server.url, "seg", retries=2, backoff=0.0)
        _assert_same(client.predict({"image": x}), _direct(model, x))
        assert server.calls == 3
    with RestTestServer(base, fail_first=9) as server:
        client = RestClient(server.url, "seg", retries=1, backoff=0.0)
        with pytest.raises(ServingUnavailableError) as err:
            client.predict({"image": x})
        assert err.value.status == "HTTP 503" and err.value.attempts == 2 and "not ready" in err.value.message


@pytest.fixture
def silent_port():
    """A listening socket that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def test_timeouts_are_retried_then_reported(silent_port):
    rest = RestClient(f"http://127.0.0.1:{silent_port}", "seg", timeout=0.2, retries=1, backoff=0.01)
    sleeps = []
    rest._sleep = sleeps.append
    with pytest.raises(ServingUnavailableError) as err:
        rest.status()
    assert err.value.attempts == 2 and sleeps == [0.01] and "timed out" in err.value.message
    with GrpcClient(f"127.0.0.1:{silent_port}", "seg", timeout=0.3, retries=1, backoff=0.01) as client:
        client._sleep = sleeps.append
        with pytest.raises(ServingUnavailableError) as err:
            client.status()
    assert err.value.attempts == 2 and err.value.status in RETRY_CODES
