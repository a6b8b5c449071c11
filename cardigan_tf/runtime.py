"""Device, distribution, precision and XLA choices, made in one place.

- ``get_strategy("default"|"mirrored"|"multiworker")``: a tf.distribute strategy; build models
  and optimizers inside ``strategy.scope()``. "multiworker" reads the cluster from ``TF_CONFIG``
  and bounds every wait (see :func:`multiworker_strategy`); it is created once per process.
- ``worker_info()``: this process's place in the ``TF_CONFIG`` cluster (chief or not);
  ``worker_run_dir(...)`` (``.for_training(strategy, run_dir, resume)`` for a training job):
  where a worker writes (the run folder on the chief, a temporary copy
  elsewhere, deleted at the end); ``fix_keras_fit(model, strategy, spec)``: the two Keras 3.15
  ``fit`` defects under MultiWorkerMirroredStrategy, worked around on one model instance.
- ``resolve_precision("auto"|"float32"|"mixed_bfloat16"|"mixed_float16")``: "auto" picks
  mixed_bfloat16 on GPUs with compute capability >= 8.0 and float32 elsewhere (CPU).
- ``resolve_jit("auto"|True|False)``: XLA on by default on GPU, off on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

# TensorFlow and Keras are imported on first use, through :func:`tensorflow` (and the two
# ``keras`` imports below, which load it): the commands import this module before they parse
# their arguments, and a multi-worker job must create its strategy before TensorFlow runs any op.


def tensorflow():
    """The ``tensorflow`` module, imported on first use (see the comment above)."""
    import tensorflow as tf  # lazy: see the comment above

    return tf


def gpu_devices() -> list[Any]:
    return tensorflow().config.list_physical_devices("GPU")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: the names :func:`get_strategy` takes (the ``train.strategy`` of every config)
STRATEGIES = ("default", "mirrored", "multiworker")


def get_strategy(name: str = "default"):
    """Return a tf.distribute strategy by name (one of :data:`STRATEGIES`)."""
    tf = tensorflow()
    if name in ("default", "", None):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return multiworker_strategy()
    raise ValueError(f"strategy {name!r}: expected one of {STRATEGIES}")


# ----------------------------------------------------------------------------- multi-worker
#: Seconds a worker waits for a dead or missing peer before failing (collective ops, joining
#: the cluster, missing heartbeats, the shutdown barrier). ``CARDIGAN_WORKER_TIMEOUT`` overrides.
DEFAULT_WORKER_TIMEOUT = 60
_MULTIWORKER = None


class WorkerInfo(tuple):
    """``(task_type, task_id, num_workers, is_chief)`` of this process in ``TF_CONFIG``."""

    __slots__ = ()

    def __new__(cls, task_type, task_id, num_workers, is_chief):
        return super().__new__(cls, (task_type, task_id, num_workers, is_chief))

    task_type = property(lambda self: self[0])
    task_id = property(lambda self: self[1])
    num_workers = property(lambda self: self[2])
    is_chief = property(lambda self: self[3])


def tf_config() -> dict | None:
    """``TF_CONFIG`` parsed (None when unset); a malformed one raises ValueError naming it."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        cfg = json.loads(text)
        cluster, task = cfg["cluster"], cfg.get("task", {})
        if not isinstance(cluster, dict) or not cluster:
            raise KeyError("cluster")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG: expected JSON {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                         f"\"task\": {{\"type\": \"worker\", \"index\": i}}}} ({exc}); got {text[:200]!r}") from None
    return {"cluster": cluster, "task": task}


def worker_info() -> WorkerInfo:
    """This process in the ``TF_CONFIG`` cluster. The chief is the ``chief`` task, or worker 0
    when the cluster has no ``chief`` job (TensorFlow's rule); no TF_CONFIG: a lone chief."""
    cfg = tf_config()
    if cfg is None:
        return WorkerInfo("worker", 0, 1, True)
    cluster, task = cfg["cluster"], cfg["task"]
    task_type, task_id = task.get("type", "worker"), int(task.get("index", 0))
    n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return WorkerInfo(task_type, task_id, n, chief)


def worker_timeout() -> int:
    value = os.environ.get("CARDIGAN_WORKER_TIMEOUT", "")
    try:
        return int(value) if value else DEFAULT_WORKER_TIMEOUT
    except ValueError:
        raise ValueError(f"CARDIGAN_WORKER_TIMEOUT: expected whole seconds, got {value!r}") from None


def multiworker_strategy(timeout_s: int | None = None):
    """``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, with every wait bounded (TF 2.21).

    Create it before anything else runs a TensorFlow op (it configures the runtime). Bounds:
    collective ops (``CommunicationOptions(timeout_seconds=timeout)``), joining the cluster
    (coordination service ``cluster_register_timeout``), a dead peer (missing heartbeats for
    ``heartbeat = min(timeout, 30)`` s: the coordination service then aborts the others with an
    error naming the lost task) and the shutdown barrier. The strategy is made once per process
    (TensorFlow allows one) and returned again on later calls.
    """
    global _MULTIWORKER
    if _MULTIWORKER is not None:
        return _MULTIWORKER
    tf = tensorflow()
    timeout = int(timeout_s or worker_timeout())
    cfg = tf_config()
    if cfg is not None:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2  # lazy: see the top
        from tensorflow.python.eager import context

        cluster = cfg["cluster"]
        jobs = [coordination_config_pb2.CoordinatedJob(name=j, num_tasks=len(cluster[j]))
                for j in ("chief", "worker") if j in cluster]
        leader = "/job:chief/replica:0/task:0" if "chief" in cluster else "/job:worker/replica:0/task:0"
        # MultiWorkerMirroredStrategy keeps a coordination service configured before it.
        context.context().configure_coordination_service(
            service_type="standalone", service_leader=leader, enable_health_check=True,
            cluster_register_timeout_in_ms=timeout * 1000,
            heartbeat_timeout_in_ms=min(timeout, 30) * 1000,
            shutdown_barrier_timeout_in_ms=timeout * 1000, coordinated_jobs=jobs)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        _MULTIWORKER = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:
        if "program startup" not in str(exc):
            raise
        raise RuntimeError("multi-worker training: the strategy must be created before any TensorFlow op "
                           "runs; call cardigan_tf.runtime.multiworker_strategy() first thing in the program "
                           "(python -m cardigan_tf.train does so for --strategy multiworker)") from None
    return _MULTIWORKER


def wants_multiworker(strategy: str | None = None, overrides=(), resume=None) -> bool:
    """Whether a train command asks for multi-worker training: ``--strategy multiworker``, a
    ``train.strategy=multiworker`` override, or a resumed run whose config.yaml says so (read
    without TensorFlow, so that the strategy can be created before anything else)."""
    if strategy is not None:
        return strategy == "multiworker"
    if any(str(o).replace(" ", "") == "train.strategy=multiworker" for o in overrides or ()):
        return True
    if resume is not None:
        path = Path(resume) / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except yaml.YAMLError:
            return False
        return isinstance(data, dict) and (data.get("train") or {}).get("strategy") == "multiworker"
    return False


def is_multiworker(strategy) -> bool:
    return strategy is not None and type(strategy).__name__ in (
        "MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")


class worker_run_dir:
    """Where this worker writes a run: the run folder itself on the chief (or without
    multi-worker training); elsewhere a fresh temporary folder, deleted on exit, as TensorFlow
    documents for MultiWorkerMirroredStrategy (every worker saves, only the chief's copy is
    kept). ``resume``: a run folder whose config, data record and checkpoints a non-chief worker
    copies first, so that every worker continues from the chief's checkpoint.

    Usage: ``with worker_run_dir(run_dir, multiworker) as (path, chief): ...``
    (``CARDIGAN_KEEP_WORKER_DIR=1`` keeps the temporary copy, for debugging and tests).
    """

    def __init__(self, run_dir, multiworker: bool, resume=None):
        self.run_dir, self.multiworker, self.resume = run_dir, bool(multiworker), resume
        self.tmp = None
        self.chief = True

    @classmethod
    def for_training(cls, strategy: str, run_dir=None, resume=None) -> "worker_run_dir":
        """The folder of a training job (``train gan`` / ``train seg``) run with strategy
        ``strategy``: the multi-worker strategy is created first when asked (it configures the
        TensorFlow runtime and waits, bounded, for the cluster); the shared folder is ``resume``
        when resuming, else ``run_dir``. After the ``with`` block, :meth:`result` is what the job
        returns."""
        multiworker = strategy == "multiworker"
        if multiworker:
            get_strategy("multiworker")
        return cls(resume if resume is not None else run_dir, multiworker, resume=resume)

    def result(self, out):
        """A job's return value: ``out`` on the chief; another worker names the chief's folder."""
        return out if self.chief or self.run_dir is None else Path(self.run_dir)

    def __enter__(self):
        info = worker_info()
        self.chief = not self.multiworker or info.is_chief
        if self.chief:
            return (Path(self.run_dir) if self.run_dir is not None else None), True
        self.tmp = Path(tempfile.mkdtemp(prefix=f"cardigan-{info.task_type}{info.task_id}-"))
        path = self.tmp / "run"
        if self.resume is not None:
            src = Path(self.resume)
            path.mkdir()
            for name in ("config.yaml", "data.json", "provenance.json"):
                if (src / name).is_file():
                    shutil.copy2(src / name, path / name)
            if (src / "checkpoints").is_dir():
                shutil.copytree(src / "checkpoints", path / "checkpoints")
        return path, False

    def __exit__(self, *exc):
        if self.tmp is not None and not os.environ.get("CARDIGAN_KEEP_WORKER_DIR"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


class WorkerLostError(RuntimeError):
    """Multi-worker training stopped: a peer died or did not answer within the timeout."""


class lost_worker_errors:
    """Turn TensorFlow's errors about a lost peer (Unavailable, DeadlineExceeded, Aborted,
    Cancelled, Internal from collective ops / the coordination service) into one
    :class:`WorkerLostError` that says what happened. No-op without multi-worker training."""

    def __init__(self, multiworker: bool):
        self.multiworker = bool(multiworker)

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if not self.multiworker or exc is None:
            return False
        tf = tensorflow()
        lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.InternalError)
        if isinstance(exc, lost):
            info = worker_info()
            first = (str(getattr(exc, "message", exc)).strip().splitlines() or [""])[0][:400]
            raise WorkerLostError(
                f"multi-worker training failed on {info.task_type} {info.task_id} of {info.num_workers}: "
                f"a worker died or did not answer within {worker_timeout()} s "
                f"(CARDIGAN_WORKER_TIMEOUT); TensorFlow said: {type(exc).__name__}: {first}") from exc
        return False


def fix_keras_fit(model, strategy, element_spec) -> None:
    """Make Keras 3.15 ``fit``/``evaluate`` work under MultiWorkerMirroredStrategy (no-op otherwise).

    Two defects of keras/src/backend/tensorflow/trainer.py, seen with 2 workers on TF 2.21:

    1. ``_maybe_symbolic_build`` takes the first distributed batch and calls
       ``strategy.reduce("MEAN", batch, axis=None)`` eagerly: under MWMS that fails with
       "Attempt to convert a value (PerReplica...) to a Tensor" (it would also consume a batch).
       Here the model is built symbolically from the dataset's ``element_spec`` instead, and
       that method is switched off on this instance.
    2. ``reduce_per_replica`` reduces every log value with ``strategy.reduce("MEAN", v,
       axis=0)`` under MWMS, which rejects scalars ("Invalid reduction dimension 0 for input
       with 0 dimensions"). Here ``train_step``/``test_step`` return each scalar as shape (1,),
       so the axis-0 mean is the mean over all replicas, a scalar again.
    """
    if not is_multiworker(strategy):
        return
    tf = tensorflow()
    with strategy.scope():
        model._symbolic_build(data_batch=element_spec)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    def vectorised(step):
        def wrapped(data):
            logs = step(data)
            return {k: (tf.reshape(v, [1]) if hasattr(v, "shape") and len(v.shape) == 0 else v)
                    for k, v in logs.items()}
        return wrapped

    model.train_step = vectorised(model.train_step)
    model.test_step = vectorised(model.test_step)


def _gpu_supports_bf16() -> bool:
    tf = tensorflow()
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
    import keras  # lazy: see the comment at the top

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
    import keras  # lazy: see the comment at the top

    keras.utils.set_random_seed(seed)
    tensorflow().config.experimental.enable_op_determinism()
