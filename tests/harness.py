"""The shared test harness: tiny presets, phantom batches, layer / model / config round trips.

Modelled on keras-hub's ``TestCase`` (``run_layer_test``, ``run_model_saving_test``), as plain
functions (pytest style):

- **Tiny presets** (:data:`SEG_TINY`, :data:`GAN_TINY`, ...): the ``--set`` overrides that make
  a job's preset small enough for the 2-core CI machine, in ONE place; :func:`sets` turns them
  into command-line ``--set`` arguments.
- :func:`phantom_pairs` / :func:`phantom_masks`: seeded batches of phantom images and masks.
- :func:`run_layer_test`: build and call a layer, check its output shape and dtype, round-trip
  it through ``get_config`` / ``from_config`` and Keras serialization, and check that the
  re-created layer gives the same outputs with the same weights.
- :func:`run_model_saving_test`: ``.keras`` save / load, outputs equal.
- :func:`assert_config_round_trip`: a dataclass config -> YAML -> the same config.
- :func:`two_cpu_script`: a script that needs 2 replicas, run in a fresh process with two
  logical CPU devices (conftest's ``two_cpus``), sharing that process with the others.

The session-scoped trained runs built from these presets live in ``tests/conftest.py``.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from cardigan_tf.labels import PHASES, VIEWS

# ----------------------------------------------------------------------------- tiny presets
#: U-Net ``train seg`` (preset tiny, 64x64): 4..16 filters, 10 phantom patients, 3 steps per epoch.
SEG_TINY = ["model.base_filters=4", "model.max_filters=16", "data.n_phantom=10", "train.batch_size=4",
            "train.steps_per_epoch=3", "train.n_overlays=2"]
#: the key U-Net (preset tiny: 64x64, base 16): enough training to reach LV endo Dice >= 0.80
#: (measured 0.928 with seed 0 after these 3 epochs on the default phantom quality mix: Good 0.91,
#: Medium 0.95, Poor 0.87 over its 6 test patients: one Good, four Medium, one Poor).
SEG_KEY = ["train.epochs=3", "train.steps_per_epoch=20", "train.batch_size=8", "train.n_overlays=2",
           "train.patience=0"]
#: GAN ``train gan`` at 32x32: 8 filters, one discriminator scale, deterministic.
GAN_TINY = ["model.size=32", "model.ngf=8", "model.ndf=8", "model.num_D=1", "train.batch_size=2",
            "data.n_phantom=10", "train.deterministic=true", "train.seed=3", "train.verbose=0",
            "train.n_samples=2"]
#: with :data:`GAN_TINY`: 6 eager steps, checkpoints and samples every 3 steps (``gan_run``, and
#: the interrupted and resumed run compared with it).
GAN_EAGER_6 = ["train.run_eagerly=true", "train.steps=6", "train.checkpoint_every=3", "train.sample_every=3"]
#: a style (z) GAN for the export: 32x32, z_dim 8, 2 eager steps.
GAN_Z = ["model.size=32", "model.ngf=8", "model.ndf=8", "model.num_D=1", "model.style=z", "model.z_dim=8",
         "train.batch_size=2", "data.n_phantom=6", "train.steps=2", "train.run_eagerly=true",
         "train.checkpoint_every=2", "train.sample_every=2", "train.verbose=0", "train.n_samples=2"]
#: a mask-only GAN at the tiny preset's 64x64 for ``generate``: 2 eager steps.
GAN_GENERATE = ["model.ngf=8", "model.ndf=8", "model.num_D=1", "train.steps=2", "train.batch_size=2",
                "train.checkpoint_every=2", "train.sample_every=2", "train.n_samples=2", "train.verbose=0",
                "train.run_eagerly=true"]
#: ``train study``: one training fraction (0.5), synthetic fractions 0 and 0.5, one seed, 2 eager GAN
#: steps (no tf.function trace; the main job's GAN runs the traced step).
STUDY_TINY = ["name=tiny", "n_phantom=10", "train_fractions=[0.5]", "synthetic_fractions=[0.0, 0.5]", "seeds=[0]",
              "synthetic_multiplier=1",
              "gan.model.ngf=8", "gan.model.ndf=8", "gan.model.num_D=1", "gan.train.steps=2",
              "gan.train.batch_size=2", "gan.train.checkpoint_every=2", "gan.train.sample_every=2",
              "gan.train.n_samples=2", "gan.train.verbose=0", "gan.train.run_eagerly=true",
              "seg.train.epochs=1", "seg.train.steps_per_epoch=2", "seg.train.batch_size=4", "seg.train.patience=0"]
#: ``tune``: base 4 filters, depth 4, norm batch | instance, 3 steps per epoch.
TUNE_TINY = ["seg.model.base_filters=4", "space.base_filters={type: fixed, value: 4}",
             "space.depth={type: fixed, value: 4}", "space.norm.values=[batch, instance]",
             "seg.train.steps_per_epoch=3", "seg.train.batch_size=4", "seg.train.n_overlays=1", "seg.train.patience=0"]
#: multi-worker GAN (64x64, 8 filters, batch 4 = 2 workers x 2), eager steps (no tf.function trace
#: in each of the processes; the replicas still run through ``strategy.run`` and its all-reduce).
MW_GAN = ["model.size=64", "model.ngf=8", "model.ndf=8", "model.num_D=1", "train.batch_size=4", "data.n_phantom=6",
          "train.verbose=0", "train.n_samples=2", "train.checkpoint_every=3", "train.sample_every=3",
          "train.deterministic=true", "train.run_eagerly=true"]
#: multi-worker U-Net; group norm: per-sample statistics, so 2 replicas of batch 2 compute what
#: 1 replica of batch 4 does.
MW_SEG = ["model.base_filters=4", "model.max_filters=16", "model.norm=group", "model.groups=2", "data.n_phantom=8",
          "train.batch_size=4", "train.steps_per_epoch=2", "train.n_overlays=1", "train.patience=0"]


def sets(*override_lists: Iterable[str]) -> list[str]:
    """``["--set", o1, "--set", o2, ...]`` for every override of the lists, in order."""
    out: list[str] = []
    for overrides in override_lists:
        for s in overrides:
            out += ["--set", s]
    return out


def without(overrides: Iterable[str], *keys: str) -> list[str]:
    """``overrides`` minus those setting one of ``keys`` (``key=...``)."""
    return [s for s in overrides if s.split("=", 1)[0] not in keys]


# ----------------------------------------------------------------------------- phantom batches
def _view_phase(i: int, pattern: str) -> tuple[str, str]:
    """The (view, phase) of pair ``i``: ``alternate`` (2CH ED, 4CH ES, 2CH ED, ...), ``cycle``
    (2CH ED, 4CH ED, 2CH ES, 4CH ES, ...) or ``nested`` (2CH ED, 2CH ES, 4CH ED, 4CH ES, ...)."""
    if pattern == "alternate":
        return VIEWS[i % 2], PHASES[i % 2]
    if pattern == "cycle":
        return VIEWS[i % 2], PHASES[(i // 2) % 2]
    if pattern == "nested":
        return VIEWS[(i // 2) % 2], PHASES[i % 2]
    raise ValueError(f"pattern {pattern!r}: expected 'alternate', 'cycle' or 'nested'")


def phantom_pairs(n: int, size: int = 64, seed: int | np.random.Generator = 0,
                  pattern: str = "alternate") -> tuple[np.ndarray, np.ndarray]:
    """``n`` phantom pairs drawn in turn from one seeded generator: images (n, size, size, 1)
    float32 in [0, 1] and label masks (n, size, size) int32."""
    from cardigan_tf.data import phantom

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    pairs = [phantom.make_pair(rng, *_view_phase(i, pattern), size) for i in range(n)]
    images = np.stack([p[0] for p in pairs]).astype(np.float32)[..., None]
    masks = np.stack([p[1] for p in pairs]).astype(np.int32)
    return images, masks


def phantom_masks(n: int, size: int = 64, seed: int | np.random.Generator = 0,
                  pattern: str = "alternate") -> np.ndarray:
    """The uint8 label masks (n, size, size) of :func:`phantom_pairs`."""
    return phantom_pairs(n, size, seed, pattern)[1].astype(np.uint8)


def onehot(labels, k: int = 4) -> np.ndarray:
    """float32 one-hot of integer labels, a trailing axis of ``k``."""
    return np.eye(k, dtype="float32")[np.asarray(labels)]


# ----------------------------------------------------------------------------- layers and models
def _as_args(inputs) -> tuple:
    return tuple(inputs) if isinstance(inputs, tuple) else (inputs,)


def _accepts_training(layer) -> bool:
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def _flat(outputs) -> list[np.ndarray]:
    import tensorflow as tf

    return [np.asarray(t) for t in tf.nest.flatten(outputs)]


def assert_outputs_equal(got, want, atol: float = 1e-6, rtol: float = 0.0, what: str = "outputs") -> None:
    """Nested outputs (tensors, lists, dicts) of equal structure and shapes, values within atol/rtol."""
    a, b = _flat(got), _flat(want)
    assert len(a) == len(b), f"{what}: {len(a)} tensors, expected {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {x.shape}, expected {y.shape}"
        if atol == 0 and rtol == 0:
            np.testing.assert_array_equal(x, y, err_msg=f"{what}[{i}]")
        else:
            np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=f"{what}[{i}]")


def run_layer_test(cls, init_kwargs: dict, input_data, expected_output_shape=None,
                   expected_output_dtype: str | None = "float32", call_kwargs: dict | None = None,
                   eval_kwargs: dict | None = None, expected_num_trainable_weights: int | None = None,
                   expected_num_non_trainable_weights: int | None = None, check_compute_output_shape: bool = False,
                   atol: float = 1e-6):
    """Build and call ``cls(**init_kwargs)`` on ``input_data`` and check the round trips.

    ``input_data``: one array, or a tuple of arrays passed as positional arguments (e.g. SPADE's
    ``(x, mask)``). ``expected_output_shape``: a tuple, or a list of tuples for several outputs.
    The layer is first called with ``call_kwargs`` (e.g. ``training=True`` to move batch-norm
    statistics and spectral-norm vectors off their initial values); then

    1. the output shape(s) and dtype(s) are checked (and ``compute_output_shape`` if asked);
    2. ``cls.from_config(layer.get_config())`` and ``keras.saving.deserialize_keras_object(
       keras.saving.serialize_keras_object(layer))`` give layers of the same class and config;
    3. each re-created layer, built on the same inputs and given the layer's weights, gives the
       layer's outputs (called with ``eval_kwargs``, default ``training=False`` when the layer
       takes it).

    Returns the layer.
    """
    import keras

    args = _as_args(input_data)
    call_kwargs = dict(call_kwargs or {})
    layer = cls(**init_kwargs)
    if eval_kwargs is None:
        eval_kwargs = {"training": False} if _accepts_training(layer) else {}
    out = layer(*args, **call_kwargs)
    outs = _flat(out)
    if expected_output_shape is not None:
        shapes = expected_output_shape if isinstance(expected_output_shape, list) else [expected_output_shape]
        assert [tuple(o.shape) for o in outs] == [tuple(s) for s in shapes], (cls.__name__, [o.shape for o in outs])
    if expected_output_dtype is not None:
        assert all(str(o.dtype) == expected_output_dtype for o in outs), (cls.__name__, [o.dtype for o in outs])
    if check_compute_output_shape:
        shapes_in = [tuple(a.shape) for a in args]
        computed = layer.compute_output_shape(*shapes_in)
        assert tuple(computed) == tuple(outs[0].shape), (cls.__name__, computed, outs[0].shape)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights, len(layer.trainable_weights)
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, \
            len(layer.non_trainable_weights)

    config = layer.get_config()
    from_config = cls.from_config(config)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    reference = layer(*args, **eval_kwargs)
    for name, clone in (("from_config", from_config), ("deserialize_keras_object", revived)):
        assert type(clone) is cls, (name, type(clone))
        assert clone.get_config() == config, name
        clone(*args, **call_kwargs)  # build (any state it moves is overwritten next)
        assert len(clone.weights) == len(layer.weights), name
        clone.set_weights(layer.get_weights())
        assert_outputs_equal(clone(*args, **eval_kwargs), reference, atol=atol, what=f"{cls.__name__} {name}")
    return layer


def run_model_saving_test(model, inputs, tmp_path: str | Path, atol: float = 0.0, name: str = "model.keras",
                          predict: bool = False, loader: Callable | None = None, **load_kwargs):
    """Save ``model`` as ``.keras``, load it (``loader`` or ``keras.saving.load_model``) and
    check that the loaded model gives the same outputs on ``inputs`` (``predict=True``:
    through ``predict``, else a ``training=False`` call). ``atol=0``: bit-identical.
    Returns the loaded model."""
    import keras

    path = Path(tmp_path) / name
    model.save(path)
    loaded = (loader or keras.saving.load_model)(path, **load_kwargs)
    if predict:
        want, got = model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)
    else:
        want, got = model(inputs, training=False), loaded(inputs, training=False)
    assert_outputs_equal(got, want, atol=atol, what=f"{name} loaded")
    assert loaded.count_params() == model.count_params()
    return loaded


# ----------------------------------------------------------------------------- two logical CPUs
#: Scripts that need 2 replicas: name -> (source, own process). They run in fresh processes whose
#: CPU is split into two logical devices before TensorFlow starts (conftest's ``two_cpus``
#: fixture): all in ONE process, except those that ask for their own (two MirroredStrategy
#: objects of one process reuse the same collective instance keys, so a script whose collective
#: ops must not meet another strategy's runs alone). Each sees ``ARGS`` (a dict: ``phantom_h5``)
#: and prints what its test looks for. A test module registers its script at import with
#: :func:`two_cpu_script`.
TWO_CPU_SCRIPTS: dict[str, tuple[str, bool]] = {}

TWO_CPU_RUNNER = r"""
import contextlib, io, json, sys, traceback
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
with open(sys.argv[1]) as fh:
    scripts = json.load(fh)
args = json.loads(sys.argv[2])
results = {}
for name, source in scripts.items():
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(source, name, "exec"), {"__name__": "two_cpus_" + name, "ARGS": args})
        results[name] = {"ok": True, "stdout": out.getvalue(), "error": ""}
    except BaseException:
        results[name] = {"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc()[-4000:]}
print("TWO-CPUS " + json.dumps(results))
"""


def two_cpu_script(name: str, source: str, own_process: bool = False) -> str:
    """Register ``source`` to run on two logical CPUs under ``name`` (see :data:`TWO_CPU_SCRIPTS`)."""
    TWO_CPU_SCRIPTS[name] = (textwrap.dedent(source), own_process)
    return name


# ----------------------------------------------------------------------------- configs
def assert_config_round_trip(cfg: Any, tmp_path: str | Path, name: str = "config.yaml",
                             save: Callable | None = None, load: Callable | None = None) -> Any:
    """Write the dataclass config ``cfg`` as YAML and read it back: the same config (``==`` on
    the dataclasses and on their plain dicts). ``save(cfg, path)`` / ``load(path)`` default to
    :func:`cardigan_tf.config.save_config` / ``load_config(type(cfg), path)``. Returns the
    config read back."""
    import yaml

    from cardigan_tf.config import load_config, save_config, to_dict

    path = Path(tmp_path) / name
    (save or save_config)(cfg, path)
    assert isinstance(yaml.safe_load(path.read_text()), dict)  # plain YAML
    again = (load or (lambda p: load_config(type(cfg), p)))(path)
    assert type(again) is type(cfg)
    assert to_dict(again) == to_dict(cfg)
    assert again == cfg
    return again


def latest(paths: Sequence[Path]) -> Path:
    """The one path of ``paths`` (an assertion that there is exactly one)."""
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]
