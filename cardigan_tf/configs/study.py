"""Study run config (training fractions x synthetic fractions x seeds) and the main job's budgets.

``StudyConfig.gan`` and ``StudyConfig.seg`` are whole job configs, based on the presets named by
``gan_preset`` / ``seg_preset``; the study fills in their data paths, training patients,
synthetic set and seeds per cell. :func:`build_study_config` applies defaults <- presets <- YAML
<- ``--set``; :func:`main_config` gives the main job's study for a budget (:data:`BUDGETS`).
"""

from __future__ import annotations

import dataclasses

from cardigan_tf.config import ConfigError, load_config, load_yaml, parse_override
from cardigan_tf.configs.gan import GanConfig
from cardigan_tf.configs.gan import migrate as migrate_gan
from cardigan_tf.configs.gan import preset_config as gan_preset_config
from cardigan_tf.configs.seg import EXPOSURES, SegConfig
from cardigan_tf.configs.seg import preset_config as seg_preset_config
from cardigan_tf.data.phantom_imaging import PhantomConfig
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS

MASK_SOURCES = ("real", "deformed", "sampled")
#: the model of each cell that is evaluated: ``final`` (every cell trained for its whole budget,
#: so the add/replace arms' exposures hold as designed) or ``best`` (best validation epoch)
CELL_MODELS = ("final", "best")
#: the generator of each study GAN that draws its synthetic set: ``selected`` (the kept
#: checkpoint whose images the real-trained U-Net of the same patients segments best on held-out
#: validation masks; cardigan_tf.jobs.gan_selection) or ``last`` (the last step's EMA generator)
GAN_CHECKPOINTS = ("selected", "last")


@dataclasses.dataclass
class PrimaryEndpoint:
    """The one endpoint the study's conclusion rests on, fixed before any result exists.

    Per test patient the ``metric`` of ``structure`` is averaged over its views and phases (and a
    run's images); each synthetic fraction > 0 is contrasted with synthetic fraction 0 at the same
    training fraction by :func:`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison`
    (patients paired, seeds resampled), with a ``1 - alpha`` interval, Holm over these contrasts
    only, and the difference detectable with ``power``. ``paired_seeds``: seed k of both arms
    trains on the same seeded subset of training patients (and the synthetic arm's GAN saw that
    subset), so seed k of one arm pairs with seed k of the other.
    """

    metric: str = "dice"
    structure: str = "lv_endo"
    alpha: float = 0.05
    power: float = 0.80
    paired_seeds: bool = True
    n_boot: int = 10000
    rng_seed: int = 0

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"primary.metric: expected one of {list(METRICS)}, got {self.metric!r}")
        if self.structure not in STRUCTURES:
            raise ConfigError(f"primary.structure: expected one of {list(STRUCTURES)}, got {self.structure!r}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"primary.alpha: expected a value in (0, 1), got {self.alpha}")
        if not 0 < self.power < 1:
            raise ConfigError(f"primary.power: expected a value in (0, 1), got {self.power}")
        if self.n_boot < 100:
            raise ConfigError(f"primary.n_boot: expected at least 100 bootstrap replicates, got {self.n_boot}")


@dataclasses.dataclass
class StudyConfig:
    """Design of the study; ``gan`` and ``seg`` are full job configs (their data paths, training
    patients, synthetic set and seeds are filled in per cell)."""

    name: str = "study"
    data: str | None = None
    n_phantom: int = 60
    phantom: PhantomConfig = dataclasses.field(default_factory=PhantomConfig)  # quality mix, styles
    data_seed: int = 0
    train_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 1.0])
    synthetic_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    #: the arms of every synthetic fraction > 0 (cardigan_tf.configs.seg.EXPOSURES): ``add`` holds
    #: the real-image exposure of the synthetic-fraction-0 cell fixed, ``replace`` its compute
    exposures: list[str] = dataclasses.field(default_factory=lambda: ["add", "replace"])
    shared_gan: bool = False  # true: seeds with the same training patients share one GAN
    cell_model: str = "final"  # see CELL_MODELS
    gan_checkpoint: str = "selected"  # see GAN_CHECKPOINTS
    masks: str = "real"
    per_mask: int = 1
    synthetic_multiplier: int = 2  # synthetic images = multiplier x training images
    split: str = "test"
    gan_preset: str = "tiny"  # base of the ``gan`` section (tiny | cardigan | spade)
    seg_preset: str = "tiny"  # base of the ``seg`` section (tiny | camus)
    gan: GanConfig = dataclasses.field(default_factory=lambda: gan_preset_config("tiny"))
    seg: SegConfig = dataclasses.field(default_factory=lambda: seg_preset_config("tiny"))
    inception_weights: str | None = None  # local InceptionV3 no-top weights for FID/KID (else U-Net encoder)
    simpson: str = "per_phase"  # Simpson convention of the EF figures: per_phase (clinical) | camus (vital)
    primary: PrimaryEndpoint = dataclasses.field(default_factory=PrimaryEndpoint)

    def validate(self) -> None:
        self.primary.validate()
        self.phantom.validate()
        if not self.train_fractions or any(not 0 < f <= 1 for f in self.train_fractions):
            raise ConfigError(f"train_fractions: expected values in (0, 1], got {self.train_fractions}")
        if not self.synthetic_fractions or any(not 0 <= f < 1 for f in self.synthetic_fractions):
            raise ConfigError(f"synthetic_fractions: expected values in [0, 1), got {self.synthetic_fractions}")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: expected distinct seeds, got {self.seeds}")
        if not self.exposures or any(e not in EXPOSURES for e in self.exposures) \
                or len(set(self.exposures)) != len(self.exposures):
            raise ConfigError(f"exposures: expected distinct values of {list(EXPOSURES)}, got {self.exposures}")
        if self.gan_checkpoint not in GAN_CHECKPOINTS:
            raise ConfigError(f"gan_checkpoint: expected one of {list(GAN_CHECKPOINTS)}, got {self.gan_checkpoint!r}")
        if self.cell_model not in CELL_MODELS:
            raise ConfigError(f"cell_model: expected one of {list(CELL_MODELS)}, got {self.cell_model!r}")
        if self.simpson not in ("per_phase", "camus"):
            raise ConfigError(f"simpson: expected per_phase or camus, got {self.simpson!r}")
        if self.masks not in MASK_SOURCES:
            raise ConfigError(f"masks: expected one of {MASK_SOURCES}, got {self.masks!r}")
        if self.gan.model.size != self.seg.model.size:
            raise ConfigError(f"gan.model.size ({self.gan.model.size}) must equal seg.model.size "
                              f"({self.seg.model.size}): synthetic images feed the U-Net")


def migrate(data: dict) -> dict:
    """A saved study without ``primary`` takes the default primary endpoint; one without
    ``exposures`` ran synthetic fractions as ``replace`` only, with seeds sharing GANs where
    their training patients were equal, the last GAN step, and evaluated the best epoch."""
    data.setdefault("primary", {})
    if "exposures" not in data:
        data.update(exposures=["replace"], shared_gan=True, cell_model="best", gan_checkpoint="last")
    if isinstance(data.get("gan"), dict):
        migrate_gan(data["gan"])
    return data


def build_study_config(config_file: str | None = None, overrides: list[str] | None = None,
                       data: str | None = None, name: str | None = None) -> StudyConfig:
    """Defaults <- presets named by ``gan_preset``/``seg_preset`` <- YAML file <- ``--set``."""
    overrides = list(overrides or [])
    if data:
        overrides.append(f"data={data}")
    if name:
        overrides.append(f"name={name}")
    chosen = {"gan_preset": "tiny", "seg_preset": "tiny"}
    if config_file:
        chosen.update({k: v for k, v in load_yaml(config_file).items() if k in chosen})
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] in chosen and len(keys) == 1:
            chosen[keys[0]] = value
    base = StudyConfig(gan_preset=chosen["gan_preset"], seg_preset=chosen["seg_preset"],
                       gan=gan_preset_config(chosen["gan_preset"]), seg=seg_preset_config(chosen["seg_preset"]))
    cfg = load_config(StudyConfig, config_file, overrides, base=base)
    cfg.validate()
    return cfg


#: the main job (``python -m cardigan_tf.train``): dotted overrides on the StudyConfig defaults.
BUDGETS: dict[str, list[str]] = {
    # the low-data regime of the phantom under a change of acquisition (default quality mix): 3 of
    # 80 training patients in style A, 10 test patients in style B; the real-only U-Net stays well
    # below ceiling (LV endo Dice about 0.90); 3 seeds, each with its own GAN (its checkpoint chosen
    # on the validation masks); synthetic share 0.5 in both exposure arms; new anatomies from
    # deformed masks
    "standard": [
        "name=main",
        "n_phantom=100",
        "phantom.test_style=B",
        "train_fractions=[0.0375]",
        "synthetic_fractions=[0.0, 0.5]",
        "seeds=[0, 1, 2]",
        "masks=deformed",
        "synthetic_multiplier=4",
        "gan.train.steps=300",
        "gan.train.batch_size=8",
        "gan.train.checkpoint_every=100",
        "gan.train.keep_checkpoints=3",
        "gan.train.sample_every=300",
        "seg.train.epochs=10",
        "seg.train.steps_per_epoch=25",
        "seg.train.patience=0",
    ],
    "smoke": [
        "name=main-smoke",
        "n_phantom=10",
        "train_fractions=[1.0]",
        "synthetic_fractions=[0.0, 0.5]",
        "seeds=[0]",
        "gan.train.steps=3",
        "gan.train.batch_size=2",
        "gan.train.checkpoint_every=3",
        "gan.train.sample_every=3",
        "seg.train.epochs=1",
        "seg.train.steps_per_epoch=3",
        "seg.train.batch_size=4",
        "seg.train.patience=0",
    ],
}


def main_config(budget: str = "standard", data: str | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """The main job's StudyConfig for a budget (plus ``--data`` and ``--set`` overrides)."""
    if budget not in BUDGETS:
        raise ConfigError(f"--budget: expected one of {list(BUDGETS)}, got {budget!r}")
    return build_study_config(None, [*BUDGETS[budget], *(overrides or [])], data=data)
