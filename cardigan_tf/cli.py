"""The one CLI convention of cardigan_tf's commands.

Every command module (``train``, ``evaluate``, ``generate``, ``gan_quality``, ``prepare``,
``tune``, ``export``, ``predict``, ``bench``) defines ``build_parser()`` and ``run(args)`` and
ends with ``main = cli.entry(build_parser, run)``; ``python -m cardigan_tf.<command>`` and the
console scripts of pyproject.toml call that ``main``. Library modules never import a command.

Flags and configs: a command's own flags are config keys under another name (``FLAGS``
tables: ``--epochs`` is ``train.epochs``); :func:`flag_overrides` turns the given ones into
``--set`` overrides, applied after ``--config`` and ``--set``. Every training command takes
``--run-dir DIR`` (create the run there) and ``--resume DIR`` (continue the run there): with
``--resume``, the saved config is the base (:func:`resumed_config`), so re-running the same
command with ``--resume DIR`` is accepted, and a value that differs from the saved one is
refused naming both (``cardigan_tf.run_plan.plan_run``).

Expected failures (a bad config value, bad data, an existing output without ``--overwrite``, a
folder that is not a run, a damaged model file, a missing file) end with one line
``error: ...`` on stderr and exit status 2; set ``CARDIGAN_TF_DEBUG=1`` to see the traceback.
A result that ``run`` returns (a path, usually) is printed on stdout.

A quiet start: TensorFlow's C++ start-up lines that say nothing to a user (oneDNN, CUDA
drivers absent, CPU instruction sets, the absl pre-initialisation notice) and Keras warnings
known to be harmless here are filtered by :func:`quiet_output`; ``CARDIGAN_TF_DEBUG=1`` shows
everything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.data.sample import DataError
from cardigan_tf.files import OverwriteError
from cardigan_tf.runs import RunError, open_run

#: TensorFlow's C++ source files whose start-up lines say nothing to a user here
_QUIET_SOURCES = ("port", "cudart_stub", "cpu_feature_guard", "cuda_platform", "cuda_executor", "cuda_diagnostics",
                  "cuda_dnn", "cuda_fft", "cuda_blas", "gpu_device", "cpu_allocator_impl", "loader",
                  "mlir_graph_optimization_pass", "meta_optimizer", "device_compiler", "grappler_item_builder",
                  "auto_shard", "remapper", "constant_folding", "loop_optimizer", "layout_optimizer",
                  "arithmetic_optimizer", "dependency_optimizer", "function_optimizer", "cpu_utils")
#: stderr lines dropped by :func:`quiet_output` (TensorFlow's C++ logging and absl)
NOISE = re.compile(b"|".join((
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*",
    rb"[IWE]\d{4} [\d:.]+ +\d+ (" + b"|".join(name.encode() for name in _QUIET_SOURCES) + rb")\.cc:\d+\].*",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.\s*",
    rb".*Sharding callback duration.*",
    rb".*TF-TRT Warning.*",
)).join((b"^(?:", b")$")))
#: Python warnings known to be harmless in cardigan_tf's use (messages, as regular expressions)
HARMLESS_WARNINGS = (
    r"`shuffle=True` was passed, but will be ignored",
    r"Your input ran out of data",
    r"The structure of `inputs` doesn't match the expected structure",
)


class UsageError(ValueError):
    """Arguments that do not fit together (reported as ``error: ...``)."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures a command reports as one ``error:`` line."""
    return (ConfigError, DataError, OverwriteError, RunError, UsageError, FileNotFoundError, NotADirectoryError,
            *_job_errors())


def _job_errors() -> tuple[type[BaseException], ...]:
    # lazy: the GAN loop imports TensorFlow, which --help must not wait for
    from cardigan_tf.jobs.gan_loop import NonFiniteLossError

    return (NonFiniteLossError,)


# ----------------------------------------------------------------------------- arguments
def add_config_arguments(parser: argparse.ArgumentParser, what: str = "config") -> None:
    """``--config FILE.yaml`` and repeatable ``--set key=value``."""
    parser.add_argument("--config", metavar="FILE.yaml", help=f"YAML file with {what} values")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")


def add_run_arguments(parser: argparse.ArgumentParser, what: str = "run") -> None:
    """``--run-dir DIR``, ``--resume DIR`` and ``--runs-dir DIR``, the same for every training command."""
    parser.add_argument("--run-dir", metavar="DIR", help=f"create the {what} in this folder (default: a new "
                                                         f"folder under --runs-dir)")
    parser.add_argument("--resume", metavar="DIR", help=f"continue the {what} in DIR (the same command with "
                                                        "--resume DIR is accepted; a changed value is refused)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of new run folders (default: runs)")


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``--set`` overrides of ``args``, then every given flag of ``flags`` (argument dest ->
    config key) as ``key=value``."""
    out = list(getattr(args, "overrides", None) or [])
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def resumed_config(kind: str, resume: str, config_file: str | None, overrides: list[str]) -> Any:
    """The config to resume the ``kind`` run in ``resume`` with: its saved config <- ``--config``
    <- ``overrides``; None when neither is given (the saved config as it is)."""
    if not config_file and not overrides:
        return None
    saved = open_run(resume, kind).config
    return load_config(type(saved), config_file, overrides, base=saved)


def model_runs(run_dir: str | None, runs: list[str]) -> list[str]:
    """The run folders a model command was given: ``RUN_DIR`` or repeated ``--run`` (an ensemble)."""
    if run_dir and runs:
        raise UsageError("give either RUN_DIR or --run RUN_DIR (repeatable), not both")
    if not run_dir and not runs:
        raise UsageError("RUN_DIR is required (or --run RUN_DIR, repeatable for an ensemble)")
    return [run_dir] if run_dir else list(runs)


def tta_views(text: str | None) -> list[str] | None:
    """``--tta`` (comma-separated test-time views; ``none``: no view) -> a list, or None when not given."""
    if text is None:
        return None
    views = [v.strip() for v in text.split(",") if v.strip()]
    return [] if views == ["none"] else views


# ----------------------------------------------------------------------------- output
class _FilteredStream:
    """A thread copying a pipe to ``target`` (a file descriptor), line by line, without the
    lines that match :data:`NOISE`. Partial lines ending in a carriage return (progress bars)
    pass at once."""

    def __init__(self, target_fd: int):
        self.target = target_fd
        self.read_fd, self.write_fd = os.pipe()
        self.thread = threading.Thread(target=self._copy, name="cardigan-stderr-filter", daemon=True)
        self.thread.start()

    def _emit(self, data: bytes) -> None:
        while data:
            written = os.write(self.target, data)
            data = data[written:]

    def _copy(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self._emit(b"".join(line + b"\n" for line in lines if not NOISE.match(line)))
            if b"\r" in pending:
                head, _, pending = pending.rpartition(b"\r")
                self._emit(head + b"\r")
        if pending and not NOISE.match(pending):
            self._emit(pending)
        os.close(self.read_fd)


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Filter this process's stderr (and its children's, which inherit it) of :data:`NOISE`,
    and ignore :data:`HARMLESS_WARNINGS`; everything else passes unchanged. A no-op with
    ``CARDIGAN_TF_DEBUG`` set, or where stderr has no file descriptor."""
    if os.environ.get("CARDIGAN_TF_DEBUG"):
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests, notebooks)
        stderr_fd = None
    with warnings.catch_warnings():
        for message in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        if stderr_fd is None:
            yield
            return
        sys.stderr.flush()
        saved = os.dup(stderr_fd)
        stream = _FilteredStream(saved)
        os.dup2(stream.write_fd, stderr_fd)
        os.close(stream.write_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)  # closes the pipe's last write end: the copy ends
            stream.thread.join(timeout=5)
            os.close(saved)


# ----------------------------------------------------------------------------- running
def run_main(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], Any],
             argv: list[str] | None = None) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with quiet_output():  # building the parser may load TensorFlow (the presets' names)
        args = build_parser().parse_args(argv)
        try:
            result = run(args)
        except expected_errors() as exc:
            if os.environ.get("CARDIGAN_TF_DEBUG"):
                raise
            msg = str(exc) or type(exc).__name__
            if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in msg:
                msg = f"{exc.filename}: {msg}"
            print(f"error: {msg}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
    if result is not None:
        print(result)
    return 0


def entry(build_parser, run, prepare: Callable[[list[str]], list[str]] | None = None
          ) -> Callable[[list[str] | None], int]:
    """The ``main(argv=None) -> int`` of a command module. ``prepare``: an optional step on
    the argument list before it is parsed (the train command's default sub-command)."""

    def main(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if prepare is not None:
            argv = prepare(argv)
        return run_main(build_parser, run, argv)

    main.__doc__ = "Run the command (``--help`` lists its options); returns the exit status."
    return main
