"""One config system: dataclasses, loaded from YAML, overridden by ``--set key=value``.

Every job (GAN, segmentation, study) declares its configuration as a dataclass tree. This
module turns such a tree into a plain dict and back, reads YAML files strictly (an unknown key
is an error that names the file and the key), and applies dotted overrides::

    cfg = load_config(GanConfig, "experiments/cardigan.yaml", ["train.epochs=3", "model.ngf=16"])
    save_config(cfg, run_dir / "config.yaml")

Values in ``--set`` are parsed as YAML scalars, so ``a=3`` is an int, ``a=0.5`` a float,
``a=true`` a bool, ``a=[1,2]`` a list and ``a=null`` None.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cardigan_tf.files import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the source and the key."""


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict/list/scalars (YAML-safe)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def yaml_number(value: Any) -> Any:
    """The float a string spells (YAML 1.1 reads ``1e-4``, without a dot, as a string), else ``value``."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        value = yaml_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Plain dict -> dataclass ``cls``; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). Values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value does not parse as YAML: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply dotted ``key=value`` overrides to a nested dict (in place) and return it."""
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a config section")
            node = node[part]
        if path[-1] not in node:
            raise ConfigError(
                f"--set {text!r}: unknown key {path[-1]!r}; valid keys here are {sorted(node)}"
            )
        node[path[-1]] = value
    return data


def deep_update(base: dict, update: dict, where: str = "config") -> dict:
    """Recursively merge ``update`` into ``base`` (in place); unknown keys raise ConfigError."""
    for key, value in (update or {}).items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys are {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            deep_update(base[key], value, f"{where}.{key}")
        else:
            base[key] = value
    return base


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: T | None = None,
) -> T:
    """Build ``cls`` from defaults (or ``base``), then a YAML file, then ``--set`` overrides."""
    data = to_dict(base if base is not None else cls())
    if path is not None:
        loaded = load_yaml(path)
        if "kind" not in data:  # a run folder's config.yaml names its kind first: reusable as --config
            loaded.pop("kind", None)
        deep_update(data, loaded, where=str(path))
    apply_overrides(data, overrides)
    return from_dict(cls, data, where=str(path) if path else "config")


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
