"""The config layer: every run config and its presets, one typed source of truth per job.

- :mod:`cardigan_tf.configs.gan`: ``GanConfig`` (model / train / data) and the GAN presets
  ``tiny``, ``cardigan``, ``spade``; :func:`~cardigan_tf.configs.gan.network_configs` maps the
  one ``GanModelConfig`` onto the generator, discriminator and encoder configs.
- :mod:`cardigan_tf.configs.seg`: ``SegConfig`` and the U-Net presets ``tiny``, ``camus``.
- :mod:`cardigan_tf.configs.cv`: ``CvConfig`` (a ``SegConfig`` plus folds, fold source and
  test-time views) and ``check_tta``.
- :mod:`cardigan_tf.configs.study`: ``StudyConfig`` and the main job's budgets.

Component configs (``UNetConfig``, ``GeneratorConfig``, ``AugmentConfig``, ...) stay with the
component that reads them (models/, data/); a run config composes them. The YAML / ``--set``
machinery is :mod:`cardigan_tf.config`. :func:`config_class` imports the submodule of a run kind
on demand (they import the networks' config classes, and so TensorFlow).
"""

from __future__ import annotations

import importlib

from cardigan_tf.config import ConfigError

#: run kind -> (module, class name) of its config
_CLASSES = {
    "gan": ("cardigan_tf.configs.gan", "GanConfig"),
    "seg": ("cardigan_tf.configs.seg", "SegConfig"),
    "cv": ("cardigan_tf.configs.cv", "CvConfig"),
    "study": ("cardigan_tf.configs.study", "StudyConfig"),
    "tune": ("cardigan_tf.configs.tune", "TuneConfig"),
}


def config_class(kind: str) -> type:
    """The config dataclass of a run kind (``gan``, ``seg``, ``cv``, ``study``, ``tune``)."""
    if kind not in _CLASSES:
        raise ConfigError(f"run kind: expected one of {list(_CLASSES)}, got {kind!r}")
    module, name = _CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def migrate(kind: str, data: dict) -> dict:
    """Bring a config dict written by an older version up to date (in place; returns it)."""
    module = importlib.import_module(_CLASSES[kind][0]) if kind in _CLASSES else None
    fn = getattr(module, "migrate", None)
    return fn(data) if fn else data
