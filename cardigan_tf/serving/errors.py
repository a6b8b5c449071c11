"""Errors of the serving clients and backends, and the status errors of the stand-in servers (no
TensorFlow, no network code here)."""

from __future__ import annotations


class ServingError(RuntimeError):
    """A prediction service failed: unreachable, or it rejected the request.

    Attributes: ``target`` (URL or ``host:port``), ``status`` (HTTP status or gRPC code name,
    None when no answer came), ``message`` (the server's own error text, or the transport error),
    ``attempts`` (calls made, retries included).
    """

    def __init__(self, target: str, message: str, status=None, attempts: int = 1):
        self.target = str(target)
        self.status = status
        self.message = str(message)
        self.attempts = int(attempts)
        where = f"{self.target}: " + (f"{status}: " if status is not None else "")
        tail = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{where}{self.message}{tail}")


class ServingUnavailableError(ServingError):
    """No usable answer after every retry (connection refused, timeout, 503 / UNAVAILABLE,
    DEADLINE_EXCEEDED)."""


class ServingRequestError(ServingError):
    """The server answered with an error that retrying cannot fix (400 / INVALID_ARGUMENT,
    404 / NOT_FOUND, ...)."""


class ServingStatus(Exception):
    """An error with a TF-Serving status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), as the
    stand-in servers (:mod:`cardigan_tf.serving.testing`) answer it."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
