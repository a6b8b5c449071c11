"""TF-Serving's request batching, emulated for the stand-in servers.

Which servables are batched follows the server's flags (:class:`cardigan_tf.serving.batching.
ServerOptions`, :func:`~cardigan_tf.serving.batching.servable_params`). For a batched servable,
as ``tensorflow_serving/batching/batching_session.cc`` and the shared batch scheduler do:

- one queue per servable, signature and set of requested outputs; a request larger than
  ``max_batch_size`` is refused (INVALID_ARGUMENT, "Task size N is larger than maximum input
  batch size M"), a request whose inputs differ in their first dimension too;
- a batch is closed when the next request would overflow ``max_batch_size`` or when
  ``batch_timeout_micros`` have passed since its first request (``window_s`` replaces that
  timeout, so that tests on a loaded machine see concurrent requests meet);
- the requests are concatenated on axis 0 (the batch padded up to the next of
  ``allowed_batch_sizes`` with copies of the last request's first row); when tensors of one
  input name differ past axis 0 every request of the batch fails with the server's
  FAILED_PRECONDITION "Tensors with name ... from different tasks have different shapes and
  padding is turned off"; an error of the run fails every request of the batch too;
- the outputs are split back on axis 0.

``pad_variable_length_inputs: true`` is not emulated (refused): padding an image changes what
the graph's resize sees, so this project never uses it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from cardigan_tf.serving.errors import ServingStatus

__all__ = ["Batcher", "BatchRecord"]


class BatchRecord(dict):
    """One executed (or refused) batch: ``servable``, ``signature``, ``tasks`` (their input
    shapes), ``rows``, ``error`` (None when it ran)."""


class _Task:
    def __init__(self, inputs: dict[str, np.ndarray], size: int):
        self.inputs, self.size = inputs, size
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: ServingStatus | None = None


class _Batch:
    def __init__(self, opened: float):
        self.tasks: list[_Task] = []
        self.rows = 0
        self.opened = opened
        self.closed = threading.Event()


class Batcher:
    """Batches the requests of batched servables (see module doc). ``records``: every batch run."""

    def __init__(self, window_s: float | None = None):
        self.window_s = window_s
        self.records: list[BatchRecord] = []
        self._lock = threading.Lock()
        self._open: dict[tuple, _Batch] = {}

    def run(self, queue: tuple, params: dict[str, Any], inputs: dict[str, np.ndarray],
            fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Run ``fn`` on this request batched with the concurrent ones of the same ``queue``
        (servable, signature, outputs); ``params``: the servable's batching parameters."""
        if params.get("pad_variable_length_inputs"):
            raise ServingStatus("UNIMPLEMENTED", "the stand-in does not emulate pad_variable_length_inputs: true")
        sizes = {k: (v.shape[0] if v.ndim else None) for k, v in inputs.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ServingStatus("INVALID_ARGUMENT", "Batching session Run() input tensors must have equal "
                                                    f"0th-dimension size (got {sizes})")
        size, limit = next(iter(sizes.values())), int(params["max_batch_size"])
        if size > limit:
            raise ServingStatus("INVALID_ARGUMENT", f"Task size {size} is larger than maximum input batch size {limit}")
        window = self.window_s if self.window_s is not None else params["batch_timeout_micros"] / 1e6
        task = _Task(inputs, size)
        with self._lock:
            batch = self._open.get(queue)
            if batch is not None and batch.rows + size > limit:
                self._close(queue, batch)
                batch = None
            leader = batch is None
            if leader:
                batch = self._open[queue] = _Batch(time.monotonic())
            batch.tasks.append(task)
            batch.rows += size
            if batch.rows == limit:
                self._close(queue, batch)
        if leader:
            batch.closed.wait(max(0.0, batch.opened + window - time.monotonic()))
            with self._lock:
                self._close(queue, batch)
            self._process(queue, batch, params, fn)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _close(self, queue: tuple, batch: _Batch) -> None:  # under self._lock
        if self._open.get(queue) is batch:
            del self._open[queue]
        batch.closed.set()

    def _process(self, queue: tuple, batch: _Batch, params: dict, fn) -> None:
        record = BatchRecord(servable=queue[0], signature=queue[1], rows=batch.rows, error=None,
                             tasks=[{k: list(v.shape) for k, v in t.inputs.items()} for t in batch.tasks])
        try:
            outputs = fn(self._merge(batch, params))
            at = 0
            for t in batch.tasks:
                t.outputs = {k: v[at:at + t.size] for k, v in outputs.items()}
                at += t.size
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the batch's error
            err = exc if isinstance(exc, ServingStatus) else ServingStatus("INTERNAL", str(exc))
            record["error"] = err.code
            for t in batch.tasks:
                t.error = err
        finally:
            with self._lock:
                self.records.append(record)
            for t in batch.tasks:
                t.done.set()

    @staticmethod
    def _merge(batch: _Batch, params: dict) -> dict[str, np.ndarray]:
        first = batch.tasks[0].inputs
        for t in batch.tasks[1:]:
            for name, value in t.inputs.items():
                if value.shape[1:] != first[name].shape[1:]:
                    raise ServingStatus(
                        "FAILED_PRECONDITION",
                        f"Tensors with name '{name}' from different tasks have different shapes and padding is "
                        "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with the "
                        "same name have equal dimensions starting with the first dim.")
        allowed = [s for s in params.get("allowed_batch_sizes") or [] if s >= batch.rows]
        pad = (min(allowed) - batch.rows) if allowed else 0
        merged = {}
        for name in first:
            parts = [t.inputs[name] for t in batch.tasks]
            parts += [parts[-1][:1]] * pad
            merged[name] = np.concatenate(parts, axis=0)
        return merged
