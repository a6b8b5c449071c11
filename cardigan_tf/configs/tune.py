"""Tuning run config (``python -m cardigan_tf.tune``) and THE search space of the U-Net search.

``TuneConfig`` = the search settings (tuner, trial and epoch budgets, objective, seed,
distribution strategy) + ``seg``: a whole :class:`~cardigan_tf.configs.seg.SegConfig` holding
every value that is not tuned (data, size, batch, steps per epoch, retraining epochs, ...) +
``space``: the search space, one entry per hyperparameter of :data:`PARAMETERS`.

The search space is declared here and only here. :data:`PARAMETERS` says what each name sets
in a ``SegConfig`` and which values are legal; :func:`default_space` gives the default ranges;
:func:`apply_values` turns a trial's values into its ``SegConfig`` (used by the trials, by the
retraining of the best trial and by the reports). An entry of ``space`` is a
:class:`ParamSpec`::

    space:
      lr:         {type: float, min: 1.0e-4, max: 3.0e-3, log: true}
      depth:      {type: int, min: 4, max: 5}              # step 1 unless ``step``
      norm:       {type: choice, values: [batch, instance]}
      dropout:    {type: fixed, value: 0.0}                # not searched

Narrow it from YAML (``space: {lr: {min: 3.0e-4}}`` merges into the default entry) or with
``--set space.lr.max=1e-3`` / ``--set space.depth.type=fixed --set space.depth.value=4``.
Every entry is checked by :meth:`TuneConfig.validate` (ConfigError naming ``space.<name>``):
its type, its bounds against the parameter's legal range, and the SegConfig it makes at each
end of its range. A space where everything is fixed is refused (nothing to search).

The data parameters are applied in ``HyperModel.fit``: ``synthetic_fraction`` (0 to 0.75; fixed
to 0 unless ``seg.data.synthetic`` names a synthetic set) and the augmentation strengths
``augment_geometric`` / ``augment_intensity``
(:meth:`cardigan_tf.data.augment.AugmentConfig.scaled`: 0 = off, 1 = the base ``seg.data.augment``,
2 = twice its ranges).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from cardigan_tf.config import ConfigError, from_dict, load_config, load_yaml, parse_override, yaml_number
from cardigan_tf.configs.seg import SegConfig
from cardigan_tf.configs.seg import preset_config as seg_preset_config
from cardigan_tf.models.unet import NORMS
from cardigan_tf.runtime import STRATEGIES

TUNERS = ("hyperband", "bayesian", "random")
TYPES = ("float", "int", "choice", "fixed")

#: objectives the segmentation model logs on the REAL validation split (Keras fit logs of the
#: unmixed, unaugmented valid set), with their direction
OBJECTIVES = {
    "val_dice_mean": "max",
    "val_dice_lv_endo": "max",
    "val_dice_lv_epi": "max",
    "val_dice_la": "max",
    "val_loss": "min",
}


@dataclass(frozen=True)
class Parameter:
    """A tunable name: its value type, legal range (inclusive unless ``*_open``), legal choices,
    and what it sets in a SegConfig (documentation; :func:`apply_values` does it)."""

    kind: str  # "float" | "int" | "str"
    sets: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    data: bool = False  # applied to the data in HyperModel.fit (not to the model)


#: every tunable name (THE list; :func:`apply_values` maps each onto a SegConfig)
PARAMETERS: dict[str, Parameter] = {
    "lr": Parameter("float", "train.lr", 0.0, 1.0, low_open=True),
    "base_filters": Parameter("int", "model.base_filters", 1, 512),
    "depth": Parameter("int", "model.depth", 4, 6),
    "norm": Parameter("str", "model.norm", choices=NORMS),
    "dropout": Parameter("float", "model.dropout", 0.0, 1.0, high_open=True),
    "dice_share": Parameter("float", "train.dice_weight = 2 s, train.ce_weight = 2 (1 - s)", 0.0, 1.0),
    "synthetic_fraction": Parameter("float", "data.synthetic_fraction", 0.0, 0.75, data=True),
    "augment_geometric": Parameter("float", "data.augment rotation/scale/translation (x s), p_geometric (x min(s, 1))",
                                   0.0, 4.0, data=True),
    "augment_intensity": Parameter("float", "data.augment brightness/contrast/gamma/noise/blur (x s), "
                                   "p_intensity/blur_prob (x min(s, 1))", 0.0, 4.0, data=True),
}


@dataclass
class ParamSpec:
    """One entry of the search space. ``type``: float | int | choice | fixed; float/int use
    ``min``, ``max`` (inclusive), ``step`` (optional) and ``log`` (log-uniform sampling);
    choice uses ``values``; fixed uses ``value``."""

    type: str = "fixed"
    min: Any = None
    max: Any = None
    step: Any = None
    log: bool = False
    values: list | None = None
    value: Any = None

    @property
    def tunable(self) -> bool:
        """True when it spans more than one value."""
        if self.type in ("float", "int"):
            return self.max != self.min
        if self.type == "choice":
            return len(set(map(str, self.values or []))) > 1
        return False

    def candidates(self) -> list:
        """The values at the ends of its range (all of its choices): what validation checks."""
        if self.type in ("float", "int"):
            return [self.min, self.max]
        if self.type == "choice":
            return list(self.values or [])
        return [self.value]


def _spec(**kw) -> ParamSpec:
    return ParamSpec(**kw)


def default_space() -> dict[str, ParamSpec]:
    """The default search space (fairly wide; narrow it per experiment)."""
    return {
        "lr": _spec(type="float", min=1e-4, max=3e-3, log=True),
        "base_filters": _spec(type="choice", values=[8, 16, 32]),
        "depth": _spec(type="int", min=4, max=5),
        "norm": _spec(type="choice", values=["batch", "group", "instance"]),
        "dropout": _spec(type="float", min=0.0, max=0.3),
        "dice_share": _spec(type="float", min=0.2, max=0.8),
        "synthetic_fraction": _spec(type="float", min=0.0, max=0.75),
        "augment_geometric": _spec(type="float", min=0.0, max=1.5),
        "augment_intensity": _spec(type="float", min=0.0, max=1.5),
    }


def _check_value(name: str, par: Parameter, value: Any, where: str) -> Any:
    if par.kind == "str":
        if not isinstance(value, str) or (par.choices and value not in par.choices):
            raise ConfigError(f"{where}: expected one of {list(par.choices or [])}, got {value!r}")
        return value
    value = yaml_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if par.kind == "int" and int(value) != value:
        raise ConfigError(f"{where}: {name} takes integers, got {value!r}")
    lo_ok = par.low is None or (value > par.low if par.low_open else value >= par.low)
    hi_ok = par.high is None or (value < par.high if par.high_open else value <= par.high)
    if not (lo_ok and hi_ok):
        lo = "" if par.low is None else ("(" if par.low_open else "[") + f"{par.low}"
        hi = "" if par.high is None else f"{par.high}" + (")" if par.high_open else "]")
        raise ConfigError(f"{where}: {name} must lie in {lo}, {hi}, got {value!r}")
    return int(value) if par.kind == "int" else float(value)


def _as_spec(name: str, entry: Any) -> ParamSpec:
    if isinstance(entry, ParamSpec):
        return entry
    if not isinstance(entry, dict):
        raise ConfigError(f"space.{name}: expected a mapping {{type: float|int|choice|fixed, ...}}, got {entry!r}")
    return from_dict(ParamSpec, entry, where=f"space.{name}")


@dataclass
class TuneConfig:
    """A KerasTuner search over U-Net hyperparameters and the training data's make-up.

    tuner: hyperband | bayesian | random. max_trials: trials to run (Hyperband: a cap on its
    own schedule). max_epochs: epochs of one trial (Hyperband: of its longest trials).
    objective: a key of :data:`OBJECTIVES` (validation Dice on the real valid split by default).
    strategy: the tf.distribute strategy of each trial (KerasTuner's distribution_strategy).
    retrain: retrain the best configuration for ``seg.train.epochs`` epochs afterwards, into an
    ordinary seg run folder ``<tuning folder>/best-trial_<id>/``.
    """

    name: str = "tune"
    tuner: str = "hyperband"
    max_trials: int = 20
    max_epochs: int = 10
    hyperband_factor: int = 3
    executions_per_trial: int = 1
    objective: str = "val_dice_mean"
    seed: int = 0
    strategy: str = "default"
    retrain: bool = True
    seg_preset: str = "tiny"  # base of the ``seg`` section (tiny | camus)
    seg: SegConfig = field(default_factory=lambda: seg_preset_config("tiny"))
    space: dict[str, ParamSpec] = field(default_factory=default_space)

    def __post_init__(self) -> None:
        if not isinstance(self.space, dict):
            raise ConfigError(f"space: expected a mapping of hyperparameter name -> spec, got {self.space!r}")
        self.space = {str(k): _as_spec(str(k), v) for k, v in self.space.items()}

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if self.tuner not in TUNERS:
            raise ConfigError(f"tuner: expected one of {list(TUNERS)}, got {self.tuner!r}")
        for key in ("max_trials", "max_epochs", "executions_per_trial"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: expected >= 1, got {getattr(self, key)}")
        if self.hyperband_factor < 2:
            raise ConfigError(f"hyperband_factor: expected >= 2, got {self.hyperband_factor}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective: {self.objective!r} is not logged by the segmentation model on the real "
                              f"validation split; expected one of {list(OBJECTIVES)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy: expected one of {list(STRATEGIES)}, got {self.strategy!r}")
        self.seg.validate()
        if self.seg.data.synthetic_fraction:
            raise ConfigError("seg.data.synthetic_fraction: the synthetic share is tuned (space.synthetic_fraction); "
                              "leave seg.data.synthetic_fraction at 0")
        self.validate_space()

    def validate_space(self) -> None:
        unknown = sorted(set(self.space) - set(PARAMETERS))
        if unknown:
            raise ConfigError(f"space: unknown hyperparameter(s) {unknown}; tunable names are {list(PARAMETERS)}")
        for name, spec in self.space.items():
            _validate_spec(name, spec, PARAMETERS[name])
        syn = self.space.get("synthetic_fraction")
        if syn is not None and not self.seg.data.synthetic and any(v != 0 for v in syn.candidates()):
            if syn.type == "fixed":
                raise ConfigError(f"space.synthetic_fraction: fixed at {syn.value} but no synthetic set is given "
                                  "(--synthetic FILE.h5 / seg.data.synthetic)")
            # the default range applies only when a synthetic set is given
            self.space["synthetic_fraction"] = ParamSpec(type="fixed", value=0.0)
        if not any(spec.tunable for spec in self.space.values()):
            raise ConfigError(f"space: every hyperparameter is fixed ({sorted(self.space)}): nothing to search; "
                              "give at least one a range (type float/int) or several values (type choice)")
        # every end of every range must make a valid SegConfig (e.g. depth vs size)
        base = self.fixed_values()
        for name, spec in self.space.items():
            for value in spec.candidates():
                try:
                    apply_values(self.seg, {**base, name: value}).validate()
                except ConfigError as exc:
                    raise ConfigError(f"space.{name}: the value {value!r} makes an invalid U-Net config: {exc}") from None

    def fixed_values(self) -> dict[str, Any]:
        """A value for every parameter: fixed values, else the first candidate (for checks)."""
        return {name: spec.candidates()[0] for name, spec in self.space.items()}

    def tunable_names(self) -> list[str]:
        return [name for name, spec in self.space.items() if spec.tunable]

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


def _validate_spec(name: str, spec: ParamSpec, par: Parameter) -> None:
    where = f"space.{name}"
    if spec.type not in TYPES:
        raise ConfigError(f"{where}.type: expected one of {list(TYPES)}, got {spec.type!r}")
    if spec.type == "fixed":
        if spec.value is None:
            raise ConfigError(f"{where}.value: a fixed hyperparameter needs a value")
        spec.value = _check_value(name, par, spec.value, f"{where}.value")
        return
    if spec.type == "choice":
        if not isinstance(spec.values, list) or not spec.values:
            raise ConfigError(f"{where}.values: a choice needs a non-empty list of values, got {spec.values!r}")
        spec.values = [_check_value(name, par, v, f"{where}.values[{i}]") for i, v in enumerate(spec.values)]
        if len({type(v) for v in spec.values}) > 1:
            raise ConfigError(f"{where}.values: mixed types {spec.values}")
        return
    if par.kind == "str":
        raise ConfigError(f"{where}.type: {name} takes one of {list(par.choices or [])}: use type choice or fixed")
    if spec.type == "int" and par.kind == "float":
        raise ConfigError(f"{where}.type: {name} is a real number: use type float")
    for key in ("min", "max"):
        if getattr(spec, key) is None:
            raise ConfigError(f"{where}.{key}: a {spec.type} range needs min and max")
    lo = _check_value(name, par, spec.min, f"{where}.min")
    hi = _check_value(name, par, spec.max, f"{where}.max")
    if spec.type == "int":
        if int(spec.min) != spec.min or int(spec.max) != spec.max:
            raise ConfigError(f"{where}: an int range needs integer min/max, got {spec.min}, {spec.max}")
        lo, hi = int(lo), int(hi)
    if lo >= hi:
        raise ConfigError(f"{where}: expected min < max, got min={spec.min}, max={spec.max} "
                          "(use type: fixed for a single value)")
    spec.min, spec.max = lo, hi
    if spec.log and lo <= 0:
        raise ConfigError(f"{where}.log: log sampling needs min > 0, got {spec.min}")
    if spec.step is not None:
        if isinstance(spec.step, bool) or not isinstance(spec.step, (int, float)) or spec.step <= 0:
            raise ConfigError(f"{where}.step: expected a positive number, got {spec.step!r}")
        if spec.type == "int" and int(spec.step) != spec.step:
            raise ConfigError(f"{where}.step: an int range needs an integer step, got {spec.step!r}")
        if spec.log:
            raise ConfigError(f"{where}: give either step or log, not both")


# ----------------------------------------------------------------------------- values -> SegConfig
def apply_values(seg: SegConfig, values: dict[str, Any]) -> SegConfig:
    """A copy of ``seg`` with the hyperparameter ``values`` of a trial applied (see
    :data:`PARAMETERS`); names KerasTuner adds itself (``tuner/...``) are ignored."""
    out = copy.deepcopy(seg)
    v = {k: val for k, val in values.items() if not k.startswith("tuner/")}
    unknown = sorted(set(v) - set(PARAMETERS))
    if unknown:
        raise ConfigError(f"hyperparameters: unknown name(s) {unknown}; expected some of {list(PARAMETERS)}")
    if "lr" in v:
        out.train.lr = float(v["lr"])
    if "base_filters" in v:
        out.model.base_filters = int(v["base_filters"])
    if "depth" in v:
        out.model.depth = int(v["depth"])
    if "norm" in v:
        out.model.norm = str(v["norm"])
    if "dropout" in v:
        out.model.dropout = float(v["dropout"])
    if "dice_share" in v:
        s = float(v["dice_share"])
        out.train.dice_weight, out.train.ce_weight = 2.0 * s, 2.0 * (1.0 - s)
    if "synthetic_fraction" in v:
        out.data.synthetic_fraction = float(v["synthetic_fraction"])
    if "augment_geometric" in v or "augment_intensity" in v:
        out.data.augment = seg.data.augment.scaled(float(v.get("augment_geometric", 1.0)),
                                                  float(v.get("augment_intensity", 1.0)))
    return out


# ----------------------------------------------------------------------------- building
def build_tune_config(config_file: str | None = None, overrides: list[str] | None = None, *,
                      data: str | None = None, synthetic: str | None = None, tuner: str | None = None,
                      max_trials: int | None = None, max_epochs: int | None = None) -> TuneConfig:
    """Defaults <- the U-Net preset named by ``seg_preset`` <- YAML file <- ``--set`` <- the
    command's own options (``--data``, ``--synthetic``, ``--tuner``, ``--max-trials``,
    ``--max-epochs``)."""
    overrides = list(overrides or [])
    for key, value in (("seg.data.data", data), ("seg.data.synthetic", synthetic), ("tuner", tuner),
                       ("max_trials", max_trials), ("max_epochs", max_epochs)):
        if value is not None:
            overrides.append(f"{key}={value}")
    preset = "tiny"
    if config_file:
        preset = load_yaml(config_file).get("seg_preset", preset)
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["seg_preset"]:
            preset = value
    base = TuneConfig(seg_preset=str(preset), seg=seg_preset_config(str(preset)))
    cfg = load_config(TuneConfig, config_file, overrides, base=base)
    cfg.validate()
    return cfg


def space_table(cfg: TuneConfig) -> list[dict[str, Any]]:
    """The search space as rows (name, type, range or values, what it sets): for reports."""
    rows = []
    for name, spec in cfg.space.items():
        if spec.type in ("float", "int"):
            rng = f"[{spec.min}, {spec.max}]" + (" log" if spec.log else "") + (f" step {spec.step}" if spec.step else "")
        elif spec.type == "choice":
            rng = str(spec.values)
        else:
            rng = f"= {spec.value}"
        rows.append({"name": name, "type": spec.type, "range": rng, "sets": PARAMETERS[name].sets})
    return rows


__all__ = ["TuneConfig", "ParamSpec", "Parameter", "PARAMETERS", "OBJECTIVES", "TUNERS", "default_space",
           "apply_values", "build_tune_config", "space_table"]
