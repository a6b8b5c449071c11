"""GAN run config and presets: the one typed source of truth for the SPADE GAN's hyperparameters.

``GanConfig`` = ``model`` (:class:`GanModelConfig`: every network field, mapped onto the
generator, discriminator and encoder configs by :func:`network_configs`) + ``train``
(:class:`GanTrainConfig`) + ``data`` (:class:`GanDataConfig`, with a typed
:class:`~cardigan_tf.data.augment.AugmentConfig`).

Presets (:data:`PRESETS`, :func:`preset_config`):

- ``tiny``: 64x64, ngf/ndf 16: tests and CPU demos. SPADE's hidden width is scaled with ngf at
  the paper's ratio (128 for ngf 64, so 32 here), so that the mask convolutions are not wider
  than the features they modulate (docs/bench_gan.md); ``--set model.hidden=128`` gives the
  paper's fixed width.
- ``cardigan``: cardiGAN's run of NVIDIA SPADE (cardiGAN's README): 256x256, ngf/ndf 48, batch 4,
  30 epochs (20 constant + 10 linear decay), Adam beta2 0.999 (cardiGAN passed it), horizontal
  flips, mask-only generator, 2-scale D with 4 layers, synchronised batch norm in SPADE.
- ``spade``: NVIDIA SPADE's defaults at 256x256: ngf/ndf 64, TTUR with Adam (0, 0.9).
"""

from __future__ import annotations

import copy
import dataclasses

from cardigan_tf.config import ConfigError, from_dict, load_config, load_yaml, to_dict
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.data.phantom_imaging import PhantomConfig
from cardigan_tf.labels import NUM_CLASSES
from cardigan_tf.models.discriminator import DiscriminatorConfig
from cardigan_tf.models.encoder import EncoderConfig
from cardigan_tf.models.generator import GeneratorConfig
from cardigan_tf.runtime import STRATEGIES

STYLES = ("mask", "z", "encoder")


@dataclasses.dataclass
class GanModelConfig:
    """Every network field of the GAN (see :func:`network_configs` for where each goes)."""

    size: int = 64
    ngf: int = 16
    ndf: int = 16
    nef: int = 16
    num_D: int = 2
    n_layers: int = 4
    norm: str = "batch"  # generator SPADE param-free norm
    d_norm: str = "instance"
    style: str = "mask"  # mask | z | encoder
    z_dim: int = 256
    num_upsampling_layers: str = "normal"
    spectral: bool = True
    hidden: int = 128
    num_classes: int = NUM_CLASSES
    fused_spade: bool = False  # gamma and beta as one 2C-output conv (same maths; docs/bench_gan.md)

    def validate(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"model.style: expected one of {STYLES}, got {self.style!r}")


@dataclasses.dataclass
class GanTrainConfig:
    """Optimisation, loss weights, run-time choices and logging intervals.

    ``epochs`` or ``steps`` (steps wins when set). ``decay_epochs``: the learning rates decay
    linearly to 0 over this many final epochs (cardiGAN: 30 epochs, the last 10 decaying).
    ``vgg_weights``: a local VGG19 (include_top=False) weights file; null = VGG loss off.
    """

    batch_size: int = 8
    epochs: int = 2
    steps: int | None = None
    steps_per_epoch: int | None = None
    decay_epochs: float = 1.0
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.999
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_kl: float = 0.05
    vgg_weights: str | None = None
    vgg_on: bool = False  # recorded by the job: whether the VGG loss was on
    ema_decay: float = 0.999
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"
    jit: str = "auto"
    run_eagerly: bool = False  # debugging / tiny CPU tests: no tf.function trace
    strategy: str = "default"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    sample_every: int = 100
    log_every: int = 10
    n_samples: int = 6
    verbose: int = 1

    def validate(self) -> None:
        for key in ("batch_size", "epochs", "checkpoint_every", "sample_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: expected >= 1, got {getattr(self, key)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"train.steps: expected >= 1 or null, got {self.steps}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy: expected one of {STRATEGIES}, got {self.strategy!r}")


def gan_augment() -> AugmentConfig:
    """GAN augmentation defaults: cardiGAN trained SPADE with horizontal flips only."""
    return AugmentConfig(rotation=0.0, scale=(1.0, 1.0), translation=0.0, hflip=True, p_geometric=1.0,
                         brightness=0.0, contrast=(1.0, 1.0), gamma=(1.0, 1.0), noise_std=0.0,
                         blur_prob=0.0, p_intensity=0.0)


@dataclasses.dataclass
class GanDataConfig:
    """Training data: ``data`` = CAMUS folder / seed-layout .h5, or null for the phantom.

    ``seed`` (phantom generation and the seeded split of a folder without official lists),
    ``n_phantom`` and ``phantom`` (quality mix, acquisition styles) define the data exactly as the U-Net's ``data`` section does, under the same
    keys: a GAN and a U-Net given the same values see the same patients in the same splits.
    """

    data: str | None = None
    views: list[str] | None = None
    phases: list[str] | None = None
    train_patients: list[str] | None = None  # restrict training to these patient ids
    augment: AugmentConfig = dataclasses.field(default_factory=gan_augment)
    n_phantom: int = 60
    phantom: PhantomConfig = dataclasses.field(default_factory=PhantomConfig)
    seed: int = 0


@dataclasses.dataclass
class GanConfig:
    preset: str = "tiny"
    model: GanModelConfig = dataclasses.field(default_factory=GanModelConfig)
    train: GanTrainConfig = dataclasses.field(default_factory=GanTrainConfig)
    data: GanDataConfig = dataclasses.field(default_factory=GanDataConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.data.augment.validate()
        self.data.phantom.validate()


def _preset(name: str, size: int, width: int, batch: int, epochs: int, decay: int, beta2: float,
            hidden: int = 128) -> GanConfig:
    return GanConfig(preset=name, model=GanModelConfig(size=size, ngf=width, ndf=width, nef=width, hidden=hidden),
                     train=GanTrainConfig(batch_size=batch, epochs=epochs, decay_epochs=decay, beta2=beta2))


PRESETS = {
    "tiny": lambda: _preset("tiny", 64, 16, batch=8, epochs=2, decay=1, beta2=0.999, hidden=32),
    "cardigan": lambda: _preset("cardigan", 256, 48, batch=4, epochs=30, decay=10, beta2=0.999),
    "spade": lambda: _preset("spade", 256, 64, batch=4, epochs=30, decay=10, beta2=0.9),
}
PRESET_NAMES = tuple(PRESETS)


def preset_config(name: str) -> GanConfig:
    """A fresh GanConfig of preset ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"--preset: expected one of {list(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def migrate(data: dict) -> dict:
    """Config dicts written before the config layer: ``data.hflip`` and the untyped
    ``data.augment`` dict (extra fields over the GAN defaults) become one typed section."""
    d = data.get("data")
    if isinstance(d, dict) and "hflip" in d:
        aug = to_dict(gan_augment())
        aug.update(d.get("augment") or {})
        aug["hflip"] = bool(d.pop("hflip"))
        d["augment"] = aug
        # configs of this form split the data with train.seed: keep the patients they were trained on
        d.setdefault("seed", (data.get("train") or {}).get("seed", 0))
    return data


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] | None = None, gpu: bool = False) -> GanConfig:
    """Preset (default: ``tiny`` without a GPU, ``cardigan`` with one) <- YAML file <- --set."""
    if preset is None and config_file is not None:
        preset = load_yaml(config_file).get("preset")
    if preset is None:
        preset = "cardigan" if gpu else "tiny"
    return load_config(GanConfig, config_file, overrides, base=preset_config(preset))


def network_configs(model: GanModelConfig | str, **overrides):
    """(GeneratorConfig, DiscriminatorConfig, EncoderConfig) of one GanModelConfig (or of a
    preset's, by name), with optional field overrides: the only place where the run's model
    fields are mapped onto the networks."""
    m = preset_config(model).model if isinstance(model, str) else model
    if overrides:
        m = dataclasses.replace(m, **overrides)
    g = GeneratorConfig(size=m.size, ngf=m.ngf, num_classes=m.num_classes,
                        num_upsampling_layers=m.num_upsampling_layers, style=m.style, z_dim=m.z_dim,
                        norm=m.norm, spectral=m.spectral, hidden=m.hidden, fused_spade=m.fused_spade)
    d = DiscriminatorConfig(ndf=m.ndf, num_D=m.num_D, n_layers=m.n_layers, num_classes=m.num_classes,
                            spectral=m.spectral, norm=m.d_norm, size=m.size)
    e = EncoderConfig(size=m.size, nef=m.nef, z_dim=m.z_dim, spectral=m.spectral)
    for cfg in (g, d, e):
        cfg.validate()
    return g, d, e


def copy_config(cfg: GanConfig) -> GanConfig:
    return from_dict(GanConfig, copy.deepcopy(to_dict(cfg)))
