"""Device, distribution, precision and XLA choices, made in one place.

- ``get_strategy("default"|"mirrored"|"multiworker")``: a tf.distribute strategy; build models
  and optimizers inside ``strategy.scope()``.
- ``resolve_precision("auto"|"float32"|"mixed_bfloat16"|"mixed_float16")``: "auto" picks
  mixed_bfloat16 on GPUs with compute capability >= 8.0 and float32 elsewhere (CPU).
- ``resolve_jit("auto"|True|False)``: XLA on by default on GPU, off on CPU.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf():
    import tensorflow as tf

    return tf


def gpu_devices() -> list[Any]:
    return _tf().config.list_physical_devices("GPU")


def get_strategy(name: str = "default"):
    """Return a tf.distribute strategy by name."""
    tf = _tf()
    if name in ("default", "", None):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy {name!r}: expected default, mirrored or multiworker")


def _gpu_supports_bf16() -> bool:
    tf = _tf()
    for dev in gpu_devices():
        details = tf.config.experimental.get_device_details(dev)
        cc = details.get("compute_capability")
        if cc and tuple(cc) >= (8, 0):
            return True
    return False


def resolve_precision(policy: str = "auto") -> str:
    if policy == "auto":
        return "mixed_bfloat16" if gpu_devices() and _gpu_supports_bf16() else "float32"
    if policy not in ("float32", "mixed_bfloat16", "mixed_float16"):
        raise ValueError(f"precision {policy!r}: expected auto, float32, mixed_bfloat16 or mixed_float16")
    return policy


def set_precision(policy: str = "auto") -> str:
    """Resolve and install the global Keras dtype policy; return its name."""
    import keras

    name = resolve_precision(policy)
    keras.mixed_precision.set_global_policy(name)
    return name


def resolve_jit(jit: Any = "auto") -> bool:
    if jit in ("auto", None):
        return bool(gpu_devices())
    if isinstance(jit, str):
        return jit.lower() in ("1", "true", "yes", "on")
    return bool(jit)


def enable_determinism(seed: int) -> None:
    """Seed Python, NumPy, Keras and TF, and turn on deterministic TF ops (CPU tests, resume)."""
    import keras

    keras.utils.set_random_seed(seed)
    _tf().config.experimental.enable_op_determinism()
