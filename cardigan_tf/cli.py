"""The one CLI convention of cardigan_tf's commands.

Every command module (``train``, ``evaluate``, ``generate``, ``gan_quality``, ``prepare``,
``tune``, ``export``, ``predict``, ``bench``) defines ``build_parser()`` and ``run(args)`` and
ends with ``main = cli.entry(build_parser, run)``; ``python -m cardigan_tf.<command>`` and the
console scripts of pyproject.toml call that ``main``. Library modules never import a command.

Expected failures (a bad config value, bad data, an existing output without ``--overwrite``, a
folder that is not a run, a missing file) end with one line ``error: ...`` on stderr and exit
status 2; set ``CARDIGAN_TF_DEBUG=1`` to see the traceback. A result that ``run`` returns (a
path, usually) is printed on stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable

from cardigan_tf.config import ConfigError
from cardigan_tf.data.sample import DataError
from cardigan_tf.files import OverwriteError
from cardigan_tf.runs import RunError


class UsageError(ValueError):
    """Arguments that do not fit together (reported as ``error: ...``)."""


def expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConfigError, DataError, OverwriteError, RunError, UsageError,
                                         FileNotFoundError, NotADirectoryError]
    try:
        from cardigan_tf.jobs.gan_loop import NonFiniteLossError

        errors.append(NonFiniteLossError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def add_config_arguments(parser: argparse.ArgumentParser, what: str = "config") -> None:
    """``--config FILE.yaml`` and repeatable ``--set key=value``."""
    parser.add_argument("--config", metavar="FILE.yaml", help=f"YAML file with {what} values")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")


def run_main(build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], Any],
             argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
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


def entry(build_parser, run) -> Callable[[list[str] | None], int]:
    """The ``main(argv=None) -> int`` of a command module."""

    def main(argv: list[str] | None = None) -> int:
        return run_main(build_parser, run, argv)

    main.__doc__ = f"Run the command (see ``{build_parser().prog} --help``)."
    return main
