"""Cross-validation run config: a :class:`~cardigan_tf.configs.seg.SegConfig` plus the folds
and the test-time views of the fold ensemble.

``CvConfig`` has every key of ``SegConfig`` (``model``, ``train``, ``data``: each fold trains
with them; the same ``--set`` keys and presets) and:

- ``folds``: K >= 2 patient-level folds of the non-test patients (``train`` and ``valid``
  splits pooled); fold k validates on its patients and trains on the others;
- ``fold_source``: ``official`` (the prepared file's ``official_folds``, CAMUS 2019's
  ``subGroup{k}_testing`` lists, :func:`cardigan_tf.data.splits.official_kfolds`), ``seeded``
  (:func:`cardigan_tf.data.splits.kfold_split` with ``data.seed``) or ``auto`` (official when
  the file records lists that make K folds of the pool, else seeded; the choice and its reason
  are recorded in the run's ``folds.json``);
- ``tta``: test-time views of the ensemble besides the identity
  (:func:`cardigan_tf.models.ensemble.parse_view`), each one the training augmentation made the
  models invariant to (:func:`check_tta`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from cardigan_tf.config import ConfigError, load_config
from cardigan_tf.configs.seg import SegConfig, preset_config
from cardigan_tf.data.augment import AugmentConfig
from cardigan_tf.models.ensemble import parse_view

FOLD_SOURCES = ("auto", "official", "seeded")


def check_tta(views, augments: list[AugmentConfig], where: str = "tta") -> list[str]:
    """The test-time views ``views`` checked against the augmentation every member was trained
    with (ConfigError naming the view otherwise): ``hflip`` needs ``augment.hflip`` (and
    geometric augmentation on: ``p_geometric`` > 0); ``gamma:G`` and ``contrast:C`` need the
    value inside the trained range and intensity augmentation on (``p_intensity`` > 0).
    Returns the views as strings."""
    out = []
    for spec in list(views or []):
        try:
            name, value = parse_view(spec)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for aug in augments:
            if name == "hflip" and not (aug.hflip and aug.p_geometric > 0):
                raise ConfigError(f"{where}: view 'hflip' needs models trained with left-right flips "
                                  "(augment.hflip=true, augment.p_geometric > 0): in apical views a flip swaps "
                                  "the septal and lateral sides, which a model trained without flips never saw")
            if name in ("gamma", "contrast"):
                lo, hi = getattr(aug, name)
                if not (aug.p_intensity > 0 and lo <= value <= hi):
                    raise ConfigError(f"{where}: view {spec!r} is outside the trained augment.{name} range "
                                      f"[{lo}, {hi}] (with augment.p_intensity {aug.p_intensity}); the models are "
                                      "invariant only to what they were trained with")
        if str(spec) in out:
            raise ConfigError(f"{where}: view {spec!r} is listed twice")
        out.append(str(spec))
    return out


@dataclass
class CvConfig(SegConfig):
    folds: int = 5
    fold_source: str = "auto"
    tta: list[str] = field(default_factory=list)

    def validate(self) -> None:
        super().validate()
        if int(self.folds) < 2:
            raise ConfigError(f"folds: expected at least 2, got {self.folds}")
        if self.fold_source not in FOLD_SOURCES:
            raise ConfigError(f"fold_source: expected one of {FOLD_SOURCES}, got {self.fold_source!r}")
        if self.data.synthetic:
            raise ConfigError("data.synthetic: not available in a cross-validation run (each fold would need a "
                              "synthetic set made without its validation patients)")
        if self.data.train_patients is not None or self.data.valid_patients is not None:
            raise ConfigError("data.train_patients / data.valid_patients: a cross-validation run assigns them "
                              "per fold; leave them unset")
        check_tta(self.tta, [self.data.augment])

    def seg_config(self) -> SegConfig:
        """The :class:`SegConfig` part (what every fold trains with, before its patients)."""
        names = {f.name for f in dataclasses.fields(SegConfig)}
        return SegConfig(**{k: copy.deepcopy(getattr(self, k)) for k in names})

    def fold_config(self, k: int, train: list[str], valid: list[str], data: str) -> SegConfig:
        """Fold ``k``'s seg run config: trains on ``train``, validates on ``valid``, reads ``data``
        (the CV run's resolved dataset)."""
        cfg = self.seg_config()
        cfg.name = f"{self.name}-fold{k}"
        cfg.data.data = str(data)
        cfg.data.train_patients, cfg.data.valid_patients = sorted(train), sorted(valid)
        return cfg

    @classmethod
    def from_seg(cls, seg: SegConfig, **cv) -> "CvConfig":
        """A CvConfig of ``seg``'s values and the cv keys ``cv`` (folds, fold_source, tta)."""
        return cls(**{f.name: copy.deepcopy(getattr(seg, f.name)) for f in dataclasses.fields(SegConfig)}, **cv)


def build_cv_config(preset: str = "tiny", config_file: str | None = None,
                    overrides: list[str] | None = None) -> CvConfig:
    """Seg preset <- YAML file (a seg or cv config) <- ``--set`` overrides, validated."""
    cfg = load_config(CvConfig, config_file, overrides, base=CvConfig.from_seg(preset_config(preset)))
    cfg.validate()
    return cfg
