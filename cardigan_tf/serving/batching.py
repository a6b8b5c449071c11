"""Which servables TensorFlow Serving batches, and with which parameters (no TensorFlow here).

The server's rule (tensorflow_serving ``bundle_factory_util.GetPerModelBatchingParams``, 2.11
and later): with ``--enable_batching`` alone every servable is batched with the global
``--batching_parameters_file``; with ``--enable_per_model_batching_parameters`` too, a servable
is batched only when its version folder holds ``batching_params.pbtxt``, with those
parameters (the global file then gives only the thread pool). A batched servable has every
signature batched: concurrent requests are concatenated on axis 0, and requests whose other
dimensions differ are refused (``FAILED_PRECONDITION``) unless ``pad_variable_length_inputs``
pads them, which changes what the resize in the graph sees.

So the shipped kit turns on both flags and the exporter writes ``batching_params.pbtxt``
(:data:`BATCHING_PARAMETERS`) only into ``NAME_batched/VERSION`` (:data:`BATCHED_SUFFIX`), a
SavedModel whose only signature is the fixed-size ``serving_fixed``; ``NAME/VERSION`` (the
any-size signatures) and the GAN carry no such file and are never batched.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["BATCHED_SUFFIX", "BATCHING_PARAMS_FILE", "BATCHING_PARAMETERS", "BatchingError", "ServerOptions",
           "params_text", "parse_params", "servable_params", "unbatchable_inputs"]

BATCHED_SUFFIX = "_batched"
BATCHING_PARAMS_FILE = "batching_params.pbtxt"  # TF-Serving's name for the per-model file
#: the per-model parameters the exporter writes into a batched servable
BATCHING_PARAMETERS: dict[str, Any] = {"max_batch_size": 32, "batch_timeout_micros": 2000,
                                       "max_enqueued_batches": 100, "pad_variable_length_inputs": False}

#: BatchingParameters fields (session_bundle_config.proto): wrapped ints, wrapped bools, plain ones
_WRAPPED_INT = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                "max_execution_batch_size")
_WRAPPED_BOOL = ("enable_large_batch_splitting",)
_WRAPPED_STR = ("thread_pool_name",)
_PLAIN = {"allowed_batch_sizes": int, "pad_variable_length_inputs": bool}
#: TF-Serving's defaults for the fields the stand-ins use (BasicBatchScheduler's queue options)
DEFAULTS = {"max_batch_size": 1000, "batch_timeout_micros": 0, "allowed_batch_sizes": [],
            "pad_variable_length_inputs": False}


class BatchingError(ValueError):
    """A batching file or server flag that cannot be read."""


def params_text(params: dict[str, Any]) -> str:
    """BatchingParameters in text format (what ``--batching_parameters_file`` and
    ``batching_params.pbtxt`` hold)."""
    lines = []
    for key, value in params.items():
        if key in _WRAPPED_INT:
            lines.append(f"{key} {{ value: {int(value)} }}")
        elif key in _WRAPPED_BOOL:
            lines.append(f"{key} {{ value: {'true' if value else 'false'} }}")
        elif key in _WRAPPED_STR:
            lines.append(f'{key} {{ value: "{value}" }}')
        elif key == "allowed_batch_sizes":
            lines.extend(f"allowed_batch_sizes: {int(v)}" for v in value)
        elif key == "pad_variable_length_inputs":
            lines.append(f"pad_variable_length_inputs: {'true' if value else 'false'}")
        else:
            raise BatchingError(f"batching parameters: unknown field {key!r}")
    return "\n".join(lines) + "\n"


_WRAPPED = re.compile(r"(\w+)\s*\{\s*value\s*:\s*(\"[^\"]*\"|[\w.-]+)\s*\}")
_SCALAR = re.compile(r"(\w+)\s*:\s*([\w.-]+)")


def _value(kind, raw: str, where: str, key: str):
    if kind is bool:
        if raw not in ("true", "false", "True", "False"):
            raise BatchingError(f"{where}: {key}: expected true or false, got {raw!r}")
        return raw.lower() == "true"
    if kind is int:
        if not re.fullmatch(r"-?\d+", raw):
            raise BatchingError(f"{where}: {key}: expected an integer, got {raw!r}")
        return int(raw)
    return raw.strip('"')


def parse_params(text: str, where: str = "batching parameters") -> dict[str, Any]:
    """BatchingParameters text format -> {field: value} (one field per line, ``#`` comments);
    BatchingError naming ``where``, the line and the expected fields otherwise."""
    out: dict[str, Any] = {}
    known = sorted([*_WRAPPED_INT, *_WRAPPED_BOOL, *_WRAPPED_STR, *_PLAIN])
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        wrapped, scalar = _WRAPPED.fullmatch(line), _SCALAR.fullmatch(line)
        key = (wrapped or scalar).group(1) if (wrapped or scalar) else None
        if key is None or key not in known:
            raise BatchingError(f"{where}, line {n}: expected 'FIELD {{ value: V }}' or 'FIELD: V' with FIELD one "
                                f"of {known}, got {line!r}")
        if key in _PLAIN:
            if not scalar:
                raise BatchingError(f"{where}, line {n}: {key} is written '{key}: V', got {line!r}")
            value = _value(_PLAIN[key], scalar.group(2), f"{where}, line {n}", key)
            if key == "allowed_batch_sizes":
                out.setdefault(key, []).append(value)
            else:
                out[key] = value
        else:
            if not wrapped:
                raise BatchingError(f"{where}, line {n}: {key} is written '{key} {{ value: V }}', got {line!r}")
            kind = int if key in _WRAPPED_INT else bool if key in _WRAPPED_BOOL else str
            out[key] = _value(kind, wrapped.group(2), f"{where}, line {n}", key)
    return out


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """The batching flags of a ``tensorflow_model_server`` command line."""

    enable_batching: bool = False
    per_model: bool = False
    parameters: dict = dataclasses.field(default_factory=dict)  # the global file's

    @classmethod
    def from_flags(cls, flags: Sequence[str], files: dict[str, Path] | None = None,
                   where: str = "command line") -> "ServerOptions":
        """From ``--flag=value`` arguments; ``files`` maps the batching file's path on the server
        (e.g. inside the container) to a local file (default: the path itself)."""
        values = {}
        for flag in flags:
            m = re.fullmatch(r"--(\w+)(?:=(.*))?", str(flag).strip())
            if not m:
                raise BatchingError(f"{where}: expected --flag=value, got {flag!r}")
            values[m.group(1)] = "true" if m.group(2) is None else m.group(2)

        def boolean(name):
            raw = values.get(name, "false")
            if raw not in ("true", "false"):
                raise BatchingError(f"{where}: --{name}: expected true or false, got {raw!r}")
            return raw == "true"

        enable, per_model = boolean("enable_batching"), boolean("enable_per_model_batching_parameters")
        path = values.get("batching_parameters_file")
        if path and not enable:
            raise BatchingError(f"{where}: --batching_parameters_file is set without --enable_batching=true "
                                "(the server refuses to start)")
        params = {}
        if path:
            local = Path((files or {}).get(path, path))
            if not local.is_file():
                raise BatchingError(f"{where}: --batching_parameters_file={path}: no such file {local}")
            params = parse_params(local.read_text(), str(local))
        return cls(enable, per_model, params)

    @classmethod
    def from_compose(cls, compose_file: str | Path, service: str = "tfserving") -> "ServerOptions":
        """The options of a docker-compose service's ``command``, its batching file found
        through the service's volumes (host paths relative to the compose file)."""
        compose_file = Path(compose_file)
        try:
            svc = yaml.safe_load(compose_file.read_text())["services"][service]
        except (KeyError, TypeError, yaml.YAMLError) as exc:
            raise BatchingError(f"{compose_file}: no services.{service} ({exc})") from None
        mounts = {}  # container path -> host path
        for volume in svc.get("volumes", []):
            host, _, rest = str(volume).partition(":")
            mounts[rest.split(":")[0].rstrip("/")] = (compose_file.parent / host).resolve()
        flags = [str(f) for f in svc.get("command", []) if str(f).startswith("--")]
        files = {}
        for flag in flags:
            if flag.startswith("--batching_parameters_file="):
                target = flag.split("=", 1)[1]
                for container, host in mounts.items():
                    if target == container:
                        files[target] = host
                    elif target.startswith(container + "/"):
                        files[target] = host / target[len(container) + 1:]
        return cls.from_flags(flags, files, where=f"{compose_file} services.{service}.command")


def servable_params(version_dir: str | Path, options: ServerOptions) -> dict[str, Any] | None:
    """The batching parameters the server uses for one servable (a version folder), or None
    when it does not batch it (TF-Serving's ``GetPerModelBatchingParams``); with TF-Serving's
    defaults filled in for the fields not given."""
    if not options.enable_batching:
        return None
    if options.per_model:
        f = Path(version_dir) / BATCHING_PARAMS_FILE
        if not f.is_file():
            return None
        params = parse_params(f.read_text(), str(f))
    else:
        params = dict(options.parameters)
    return {**DEFAULTS, **params}


def unbatchable_inputs(signatures: dict) -> list[str]:
    """``SIGNATURE/INPUT`` of each input (in :func:`cardigan_tf.serving.export.signature_info`'s
    form) whose shape is not fixed past the batch axis: what a batched servable must not have."""
    bad = []
    for name, sig in sorted(signatures.items()):
        for spec in sig["inputs"]:
            shape = spec["shape"]
            if shape is None or not shape or any(d is None or d < 0 for d in shape[1:]):
                bad.append(f"{name}/{spec['name']} {shape}")
    return bad
