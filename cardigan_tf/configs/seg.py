"""Segmentation (U-Net) run config and presets.

``SegConfig`` = ``model`` (:class:`~cardigan_tf.models.unet.UNetConfig`) + ``train``
(:class:`SegTrainConfig`) + ``data`` (:class:`SegDataConfig`, with a typed
:class:`~cardigan_tf.data.augment.AugmentConfig`).

Presets (:data:`PRESETS`, :func:`preset_config`):

- ``tiny``: 64x64, depth 4, base 16 filters (2.2 M parameters), 20 epochs of batch 8: tests,
  CI and the phantom study.
- ``camus``: 256x256, depth 5, base 32 filters capped at 512 (22.8 M parameters), 60 epochs of
  batch 8, patience 15: the CAMUS working size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.data.phantom_imaging import PhantomConfig
from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.models.unet import UNetConfig
from cardigan_tf.runtime import STRATEGIES

SCHEDULES = ("cosine", "constant", "plateau")
#: how synthetic samples enter a U-Net's stream (``data.exposure``): ``replace`` keeps the steps
#: (synthetic samples take real ones' places: the compute is held fixed), ``add`` scales the steps
#: by 1 / (1 - synthetic_fraction) so the run sees as many real samples as without synthetic
#: data, the synthetic ones on top (the real-image exposure is held fixed)
EXPOSURES = ("replace", "add")


@dataclass
class SegTrainConfig:
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    lr: float = 1e-3
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    patience: int = 10  # early stopping on validation Dice; 0 = off
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: list[float] | None = None
    seed: int = 0
    precision: str = "auto"
    jit: Any = "auto"
    strategy: str = "default"
    n_overlays: int = 4
    deep_supervision_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        for key in ("batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: expected >= 1, got {getattr(self, key)}")
        if self.steps_per_epoch < 0:
            raise ConfigError(f"train.steps_per_epoch: expected >= 0, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr: expected > 0, got {self.lr}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy: expected one of {STRATEGIES}, got {self.strategy!r}")

    def epoch_steps(self, n_train: int) -> int:
        """Steps per epoch: ``steps_per_epoch``, or (0) one pass over ``n_train`` training frames,
        the last batch counted when partial."""
        return self.steps_per_epoch or max(1, -(-int(n_train) // self.batch_size))


@dataclass
class SegDataConfig:
    """Data of a U-Net run. ``seed``, ``n_phantom`` and ``phantom`` (quality mix, acquisition
    styles of the built-in phantom) define the data and its seeded split under the same keys as
    the GAN's ``data`` section.

    ``train_patients``: None, every patient of the ``train`` split, or a list of them.
    ``valid_patients``: None, the ``valid`` split; or a list (a cross-validation fold): the run
    validates on those patients and trains on ``train_patients`` (then required, disjoint from
    them), both drawn from the ``train`` and ``valid`` splits pooled (:attr:`pool`). The
    ``test`` split is never read in training."""

    data: str | None = None
    synthetic: str | None = None
    synthetic_fraction: float = 0.0
    size: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    views: list[str] = field(default_factory=lambda: list(VIEWS))
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    train_patients: list[str] | None = None
    exposure: str = "replace"  # see EXPOSURES
    valid_patients: list[str] | None = None
    n_phantom: int = 60
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    seed: int = 0  # phantom generation / seeded split of the data

    def validate(self) -> None:
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ConfigError(f"data.synthetic_fraction: expected [0, 1), got {self.synthetic_fraction}")
        if self.synthetic_fraction > 0 and not self.synthetic:
            raise ConfigError("data.synthetic_fraction > 0 needs data.synthetic (a seed-layout .h5)")
        if self.exposure not in EXPOSURES:
            raise ConfigError(f"data.exposure: expected one of {EXPOSURES}, got {self.exposure!r}")
        if self.valid_patients is not None:
            if not self.valid_patients or not self.train_patients:
                raise ConfigError("data.valid_patients (a cross-validation fold) needs non-empty lists of "
                                  f"data.valid_patients and data.train_patients, got {self.valid_patients!r} "
                                  f"and {self.train_patients!r}")
            both = sorted(set(self.valid_patients) & set(self.train_patients))
            if both:
                raise ConfigError(f"data.valid_patients and data.train_patients: expected disjoint lists, "
                                  f"both hold {both[:5]}")
        self.augment.validate()
        self.phantom.validate()

    @property
    def pool(self) -> tuple[str, ...]:
        """The splits the training and validation patients come from: ``("train", "valid")``
        for a cross-validation fold (``valid_patients`` given), else ``("train",)``."""
        return ("train", "valid") if self.valid_patients is not None else ("train",)


@dataclass
class SegConfig:
    name: str = "tiny"
    model: UNetConfig = field(default_factory=UNetConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)

    def validate(self) -> None:
        try:
            self.model.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.train.validate()
        self.data.validate()
        if self.data.size != self.model.size:
            raise ConfigError(f"data.size ({self.data.size}) must equal model.size ({self.model.size})")

    def stream(self, n_train: int) -> tuple[int, float]:
        """(steps per epoch, synthetic share of the stream) for ``n_train`` real training frames.

        ``replace``: :meth:`SegTrainConfig.epoch_steps` steps at ``data.synthetic_fraction``.
        ``add``: ceil(steps / (1 - f)) steps at the share that leaves exactly ``steps`` x batch
        real samples per epoch (the real exposure of the same run without synthetic data)."""
        steps = self.train.epoch_steps(n_train)
        f = self.data.synthetic_fraction if self.data.synthetic else 0.0
        if f == 0:
            return steps, 0.0
        if self.data.exposure == "replace":
            return steps, f
        total = math.ceil(steps / (1.0 - f) - 1e-9)
        return total, (total - steps) / total


def _preset(name: str, model: UNetConfig, **train) -> SegConfig:
    return SegConfig(name=name, model=model, train=SegTrainConfig(**train), data=SegDataConfig(size=model.size))


PRESETS = {
    "tiny": lambda: _preset("tiny", UNetConfig(size=64, depth=4, base_filters=16)),
    "camus": lambda: _preset("camus", UNetConfig(size=256, depth=5, base_filters=32, max_filters=512),
                             batch_size=8, epochs=60, lr=1e-3, patience=15),
}
PRESET_NAMES = tuple(PRESETS)


def preset_config(preset: str = "tiny") -> SegConfig:
    """A fresh SegConfig of preset ``preset``."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: expected one of {list(PRESETS)}")
    return PRESETS[preset]()


def build_seg_config(preset: str = "tiny", config_file: str | None = None,
                     overrides: list[str] | None = None) -> SegConfig:
    """Preset <- YAML file <- ``--set`` overrides, validated."""
    cfg = load_config(SegConfig, config_file, overrides, base=preset_config(preset))
    cfg.validate()
    return cfg
