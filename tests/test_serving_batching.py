"""TF-Serving batching under the shipped kit: which servables are batched (the server's rule),
the fixed-size signature and its client round trip, and the stand-ins' batching emulation with
concurrent clients of different frame sizes (cardigan_tf.serving.batching, .contract,
.stand_in_batching)."""

import json
import re
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
import yaml

from cardigan_tf.inference import Preprocessing
from cardigan_tf.serving import batching as bt
from cardigan_tf.serving.client_grpc import GrpcClient
from cardigan_tf.serving.client_rest import RestClient
from cardigan_tf.serving.contract import FIXED_SIGNATURE, fixed_input
from cardigan_tf.serving.errors import ServingRequestError, ServingStatus
from cardigan_tf.serving.export import ExportError, parse_models_config
from cardigan_tf.serving.export_check import check_batching
from cardigan_tf.serving.stand_in_batching import Batcher
from cardigan_tf.serving.testing import GrpcTestServer, ModelStore, RestTestServer, make_test_export

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "export"
#: three CAMUS-like frame sizes (rows, cols), scaled down: larger, smaller and across the chain
FRAME_SIZES = [(61, 45), (40, 52), (23, 19)]
#: the kit's server flags before per-model batching: every servable batched with the global file
OLD_FLAGS = ["--port=8500", "--rest_api_port=8501", "--model_config_file=/models/models.config",
             "--enable_batching=true", "--batching_parameters_file=/config/batching_parameters.txt"]
OLD_BATCHING = ("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n"
                "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 4 }\npad_variable_length_inputs: false\n")
WINDOW_S = 1.0  # the stand-in's batch window: wide, so that concurrent requests meet on a loaded machine


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A stand-in export with a two-step resize chain (48 -> 32) and its batched twin:
    (base, any-size SavedModel, batched SavedModel)."""
    base = tmp_path_factory.mktemp("batching") / "models"
    version = make_test_export(base, "seg", 1, preprocessing=Preprocessing(working_size=32, prepared_size=48),
                               batched=True)
    return base, tf.saved_model.load(str(version)), tf.saved_model.load(str(base / "seg_batched" / "1"))


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(s, dtype=np.float32) for s in FRAME_SIZES]


def _any_size(model, frame):
    """The in-graph any-size path for one frame: serving_default on (1, H, W)."""
    out = model.signatures["serving_default"](image=tf.constant(frame[None]))
    return {k: v.numpy()[0] for k, v in out.items()}


def _assert_matches_any_size(model, frame, probabilities, mask, scores=None):
    """The frame's outputs equal serving_default's; ``scores``: its per-image outputs too (the
    same working-size label map and members on both paths)."""
    ref = _any_size(model, frame)
    if scores is not None:
        np.testing.assert_allclose(scores["uncertainty"], ref["uncertainty"], atol=1e-5)
        assert scores["qc_flags"] == ref["qc_flags"]
    assert probabilities.shape == ref["probabilities"].shape and mask.shape == frame.shape
    np.testing.assert_allclose(probabilities, ref["probabilities"], atol=1e-5)
    top2 = np.sort(ref["probabilities"], -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4
    np.testing.assert_array_equal(mask[clear], ref["mask"][clear])


# ----------------------------------------------------------------------------- files and the rule
def test_the_kit_pins_the_image_and_turns_batching_on_per_model():
    pin = re.search(r"^tensorflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    svc = yaml.safe_load((KIT / "docker-compose.yml").read_text())["services"]["tfserving"]
    assert svc["image"] == f"tensorflow/serving:{pin}"
    assert re.search(rf"^tensorflow-serving-api=={re.escape(pin)}$", (ROOT / "requirements.txt").read_text(), re.M)
    options = bt.ServerOptions.from_compose(KIT / "docker-compose.yml")
    assert options.enable_batching and options.per_model
    # under per-model batching the server reads only the thread pool from the global file
    assert set(options.parameters) <= {"num_batch_threads", "thread_pool_name"}


def test_batching_text_round_trip_and_errors(tmp_path):
    params = {"max_batch_size": 8, "batch_timeout_micros": 500, "allowed_batch_sizes": [2, 8],
              "thread_pool_name": "pool", "pad_variable_length_inputs": False}
    assert bt.parse_params(bt.params_text(params)) == params
    assert bt.parse_params(OLD_BATCHING)["max_batch_size"] == 32
    with pytest.raises(bt.BatchingError, match=r"f.txt, line 2: expected .*max_batch_size"):
        bt.parse_params("max_batch_size { value: 8 }\nmax_batch { value: 8 }", "f.txt")
    with pytest.raises(bt.BatchingError, match="line 1: max_batch_size: expected an integer"):
        bt.parse_params("max_batch_size { value: x }")
    with pytest.raises(bt.BatchingError, match="without --enable_batching"):
        bt.ServerOptions.from_flags(["--batching_parameters_file=/x"])


def test_which_servables_the_server_batches(tmp_path):
    """TF-Serving's GetPerModelBatchingParams: off; global file for every servable; per model
    only where the version folder holds batching_params.pbtxt, with its values."""
    (tmp_path / "global.txt").write_text("max_batch_size { value: 16 }\n")
    plain, batched = tmp_path / "seg" / "1", tmp_path / "seg_batched" / "1"
    plain.mkdir(parents=True)
    batched.mkdir(parents=True)
    (batched / bt.BATCHING_PARAMS_FILE).write_text("max_batch_size { value: 4 }\n")
    files = {"/g": tmp_path / "global.txt"}
    off = bt.ServerOptions.from_flags([], files)
    every = bt.ServerOptions.from_flags(["--enable_batching=true", "--batching_parameters_file=/g"], files)
    per_model = bt.ServerOptions.from_flags(["--enable_batching", "--enable_per_model_batching_parameters=true",
                                             "--batching_parameters_file=/g"], files)
    assert bt.servable_params(plain, off) is None and bt.servable_params(batched, off) is None
    assert bt.servable_params(plain, every)["max_batch_size"] == 16 == bt.servable_params(batched, every)["max_batch_size"]
    assert bt.servable_params(plain, per_model) is None
    assert bt.servable_params(batched, per_model)["max_batch_size"] == 4


def test_the_export_batches_only_fixed_size_signatures(export, tmp_path):
    base, _, _ = export
    assert [c.name for c in parse_models_config(base / "models.config").model_config_list.config] == \
        ["seg", "seg_batched"]
    plain, batched = base / "seg" / "1", base / "seg_batched" / "1"
    sigs, plain_sigs = (json.loads((f / "metadata.json").read_text())["signatures"] for f in (batched, plain))
    assert list(sigs) == [FIXED_SIGNATURE]
    assert sigs[FIXED_SIGNATURE]["inputs"] == [{"name": "image", "dtype": "float32", "shape": [-1, 48, 48, 1]}]
    assert {o["name"]: o["shape"] for o in sigs[FIXED_SIGNATURE]["outputs"]} == \
        {"probabilities": [-1, 32, 32, 4], "mask": [-1, 32, 32], "uncertainty": [-1], "qc_flags": [-1]}
    assert bt.parse_params((batched / bt.BATCHING_PARAMS_FILE).read_text()) == bt.BATCHING_PARAMETERS
    shipped = bt.ServerOptions.from_compose(KIT / "docker-compose.yml")
    assert bt.servable_params(plain, shipped) is None and bt.servable_params(batched, shipped) is not None
    assert sorted(plain_sigs) == ["serving_default", FIXED_SIGNATURE, "serving_uint8"]
    assert check_batching(batched, sigs, {"batching": {}}) and not check_batching(plain, plain_sigs, {})
    (tmp_path / bt.BATCHING_PARAMS_FILE).write_text(bt.params_text(bt.BATCHING_PARAMETERS))
    with pytest.raises(ExportError, match=r"serving_default/image None"):  # any-size inputs in a batched servable
        check_batching(tmp_path, plain_sigs, {})


# ----------------------------------------------------------------------------- the emulated batcher
def _concurrently(calls):
    """Run the callables at once (released together); their results or exceptions, in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def one(i):
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the test reads them
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_batcher_concatenates_splits_and_refuses_like_the_server():
    seen = []

    def fn(inputs):
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"] * 2.0}

    params = {"max_batch_size": 8, "batch_timeout_micros": 0, "allowed_batch_sizes": [4, 8]}
    b = Batcher(window_s=WINDOW_S)
    xs = [np.full((n, 3, 2), i, np.float32) for i, n in enumerate([1, 2])]
    out = _concurrently([lambda x=x: b.run(("m", "s", ()), params, {"x": x}, fn) for x in xs])
    for x, y in zip(xs, out):
        np.testing.assert_array_equal(y["y"], x * 2.0)
    assert seen == [(4, 3, 2)] and b.records[0]["rows"] == 3  # one batch, padded up to 4 rows
    with pytest.raises(ServingStatus, match="Task size 9 is larger than maximum input batch size 8") as err:
        b.run(("m", "s", ()), params, {"x": np.zeros((9, 3, 2), np.float32)}, fn)
    assert err.value.code == "INVALID_ARGUMENT"
    mixed = [np.zeros((1, 3, 2), np.float32), np.zeros((1, 5, 2), np.float32)]
    out = _concurrently([lambda x=x: b.run(("m", "s", ()), params, {"x": x}, fn) for x in mixed])
    for got in out:  # every request of the batch fails with the server's error
        assert isinstance(got, ServingStatus) and got.code == "FAILED_PRECONDITION"
        assert "Tensors with name 'x' from different tasks have different shapes and padding is turned off" in got.message


# ----------------------------------------------------------------------------- through the servers
def test_fixed_signature_round_trip_equals_the_any_size_path(export):
    """Frames of three sizes in one request to serving_fixed (REST and gRPC, the batched twin and
    the any-size model) give what serving_default / serving_uint8 give for each frame."""
    base, model, _ = export
    frames = _frames(1)
    u8 = [np.round(f * 255).astype(np.uint8) for f in frames]
    with RestTestServer(base) as r, GrpcTestServer(base) as g, GrpcClient(g.target, "seg_batched") as gc:
        for out in (gc.segment(frames), RestClient(r.url, "seg_batched").segment(frames, fmt="rows")):
            for i, (frame, p, m) in enumerate(zip(frames, out["probabilities"], out["mask"])):
                _assert_matches_any_size(model, frame, p, m, {k: out[k][i] for k in ("uncertainty", "qc_flags")})
        got = RestClient(r.url, "seg").segment(u8)  # uint8 frames: / 255 as serving_uint8 does
        for frame, p in zip(u8, got["probabilities"]):
            ref = model.signatures["serving_uint8"](image=tf.constant(frame[None]))["probabilities"].numpy()[0]
            np.testing.assert_allclose(p, ref, atol=1e-5)
        with pytest.raises(ValueError, match=r"frame 0: float values must be in \[0, 1\]"):
            gc.segment([np.full((9, 9), 2.0, np.float32)])  # refused before it can fail a whole batch
        with pytest.raises(ValueError, match="expected a fixed-size signature"):
            RestClient(r.url, "seg").segment(frames, "serving_default")
    x, shapes = fixed_input(frames, 48)
    assert x.shape == (3, 48, 48, 1) and shapes == FRAME_SIZES


def test_concurrent_frame_sizes_under_the_shipped_configuration(export):
    """Eight clients at once, REST and gRPC, frames of three sizes: the fixed-size path to
    NAME_batched (batched: requests of different frame sizes concatenated in one batch) and the
    any-size path to NAME (not batched). All succeed and equal the in-graph any-size path."""
    base, model, _ = export
    store = ModelStore(base, bt.ServerOptions.from_compose(KIT / "docker-compose.yml"), batch_window_s=WINDOW_S)
    frames = _frames(2)
    with RestTestServer(store) as r, GrpcTestServer(store) as g:
        rest_b, rest_a = RestClient(r.url, "seg_batched", timeout=60), RestClient(r.url, "seg", timeout=60)
        with GrpcClient(g.target, "seg_batched", timeout=60) as grpc_b, GrpcClient(g.target, "seg", timeout=60) as grpc_a:
            for c in (rest_b, rest_a, grpc_b, grpc_a):
                c.metadata()  # fetched before the race, as a long-lived client has it
            calls, expect = [], []
            for i in range(8):
                frame = frames[i % 3]
                if i % 2 == 0:  # fixed size, batched
                    client = rest_b if i % 4 == 0 else grpc_b
                    calls.append(lambda c=client, f=frame: c.segment([f]))
                else:  # any size, not batched
                    client = rest_a if i % 4 == 1 else grpc_a
                    calls.append(lambda c=client, f=frame: {k: list(v) for k, v in c.predict({"image": f[None]}).items()})
                expect.append(frame)
            results = _concurrently(calls)
    for frame, out in zip(expect, results):
        assert not isinstance(out, Exception), out
        _assert_matches_any_size(model, frame, out["probabilities"][0], out["mask"][0],
                                 {k: out[k][0] for k in ("uncertainty", "qc_flags")})
    batches = store.batcher.records
    assert {b["servable"][0] for b in batches} == {"seg_batched"}  # the any-size model is never batched
    assert all(b["error"] is None for b in batches) and sum(len(b["tasks"]) for b in batches) == 4
    assert max(len(b["tasks"]) for b in batches) >= 2  # concurrent requests were concatenated


def test_the_old_configuration_fails_concurrent_frame_sizes(export, tmp_path):
    """Batching on for every servable (the kit's flags before per-model batching): concurrent
    any-size requests of different frame sizes are refused as the real server refuses them."""
    base, _, _ = export
    (tmp_path / "batching_parameters.txt").write_text(OLD_BATCHING)
    old = bt.ServerOptions.from_flags(OLD_FLAGS, {"/config/batching_parameters.txt": tmp_path / "batching_parameters.txt"})
    store = ModelStore(base, old, batch_window_s=WINDOW_S)
    frames = _frames(3)
    with RestTestServer(store) as r, GrpcTestServer(store) as g:
        rest = RestClient(r.url, "seg", timeout=60, retries=0)
        with GrpcClient(g.target, "seg", timeout=60, retries=0) as client:
            rest.metadata()
            client.metadata()
            calls = [lambda f=f, c=c: c.predict({"image": f[None]}) for f in frames for c in (rest, client)]
            results = _concurrently(calls)
    failed = [e for e in results if isinstance(e, ServingRequestError)]
    assert failed, results
    for err in failed:
        assert err.status in ("HTTP 400", grpc.StatusCode.FAILED_PRECONDITION.name)
        assert "different shapes and padding is turned off" in err.message
    assert any(b["error"] == "FAILED_PRECONDITION" and len({tuple(t["image"]) for t in b["tasks"]}) > 1
               for b in store.batcher.records)
