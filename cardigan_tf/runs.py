"""Run folders: create them, record what made them, and open them again (the run API).

Every command that trains writes one self-describing folder::

    runs/<kind>-<name>-<UTC time>/
        config.yaml      ``kind:`` + everything needed to rerun
        provenance.json  Python / TensorFlow / Keras versions, code revision, command line,
                         and (in data.json) a fingerprint of the data
        data.json        the resolved dataset and its fingerprint (file hashes)
        checkpoints/     resumable state
        tensorboard/     event files
        samples/         PNG grids
        metrics.json     final figures
        report.md        short human summary

The kind is read from ``config.yaml``, never from the folder's name: a renamed run folder still
opens. :func:`open_run` only reads; it creates nothing. Folders written before the kind was
recorded are recognised by their contents (``legacy=True``).

What a kind of run is, is declared once, in :data:`KINDS` (:class:`RunKind`): its config class,
its model files, when it has finished, which config keys a resume may change. Every job starts
through :func:`cardigan_tf.run_plan.plan_run` (new folder, resume, or nothing left to do; a
resume refuses a changed value and names the saved and the given one), and every reader loads
a trained model through :meth:`Run.load` (the model with its resize chain). What made a run
(versions, code revision, command line) is :mod:`cardigan_tf.run_provenance`; the dataset a
run reads (``data.json``) is :mod:`cardigan_tf.run_data`.

Example::

    run = open_run("runs/seg-tiny-20260101T000000Z")
    run.kind, run.config.model.size, run.finished, run.model_path()
    trained = run.load()          # trained.model, trained.preprocessing, trained.path
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from cardigan_tf.config import ConfigError, from_dict, load_yaml, to_dict
from cardigan_tf.files import atomic_write_text, write_json
from cardigan_tf.run_data import recorded_dataset, resolve_into
from cardigan_tf.run_provenance import provenance, utc_stamp

# The commands import this module (RunError, open_run) before they parse their arguments, so
# what loads TensorFlow (the configs, the data layer, the networks) is imported where it is
# used: a command's --help, and the multi-worker set-up that must precede TensorFlow's first
# op, stay free of it.

RUN_SUBDIRS = ("checkpoints", "tensorboard", "samples")


class RunError(ValueError):
    """A path is not a run folder of the expected kind, or lacks what was asked of it."""


# ----------------------------------------------------------------------------- the kinds
@dataclasses.dataclass(frozen=True)
class RunKind:
    """What one kind of run is.

    ``models``: model name -> the files that hold it, first found wins (``best`` falls back to
    ``final`` when no validation improvement was ever saved); ``default_model``: what
    :meth:`Run.load` loads; ``finished``: files that all exist once the run has finished (each
    job writes them last); ``resumable``: dotted config keys a resume may change (anything else
    must equal the saved value); ``markers``: files that identify a folder written before
    ``config.yaml`` recorded its kind; ``members``: the subfolder of seg runs whose ensemble is
    the kind's model (cv: ``folds``)."""

    name: str
    finished: tuple[str, ...]
    models: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_model: str | None = None
    resumable: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    members: str | None = None

    def is_finished(self, path: str | Path) -> bool:
        return all((Path(path) / name).is_file() for name in self.finished)

    def config_class(self) -> type:
        from cardigan_tf.configs import config_class  # lazy: TensorFlow (see the imports)

        return config_class(self.name)


#: every kind of run folder, in the order their contents are tried on a folder without ``kind:``
KINDS: dict[str, RunKind] = {k.name: k for k in (
    RunKind("study", finished=("report.md",), resumable=(), markers=("cells",)),
    RunKind("gan", finished=("metrics.json", "generator_ema.keras"),
            models={"ema": ("generator_ema.keras",), "raw": ("generator.keras",),
                    "selected": ("generator_selected.keras",)}, default_model="ema",
            resumable=("train.steps", "train.epochs", "train.strategy"),
            markers=("generator_ema.keras", "generator.keras")),
    RunKind("seg", finished=("metrics.json", "final.keras"),
            models={"best": ("best.keras", "final.keras"), "final": ("final.keras",)}, default_model="best",
            resumable=("train.epochs", "train.strategy"),
            markers=("best.keras", "final.keras", "checkpoints/state.json")),
    RunKind("cv", finished=("metrics.json", "summary.csv", "summary.md"), members="folds",
            resumable=("train.epochs", "train.strategy"), markers=("folds.json",)),
    RunKind("tune", finished=("metrics.json", "report.md"), resumable=("max_trials",)),
)}


def run_kind(name: str) -> RunKind:
    if name not in KINDS:
        raise RunError(f"run kind: expected one of {list(KINDS)}, got {name!r}")
    return KINDS[name]


def is_finished(path: str | Path, kind: str) -> bool:
    """Whether the ``kind`` run in ``path`` has finished (its kind's ``finished`` files exist)."""
    return run_kind(kind).is_finished(path)


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (holds a ``config.yaml``)."""
    return (Path(path) / "config.yaml").is_file()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "run"


def new_run_dir(root: str | Path, kind: str, name: str = "run") -> Path:
    """Create ``root/<kind>-<name>-<UTC time>/`` with its standard subfolders.

    Never reuses an existing folder: a numeric suffix is added when two runs start in the
    same second.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{_slug(kind)}-{_slug(name)}-{utc_stamp()}"
    run = root / base
    i = 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            run = root / f"{base}-{i}"
            i += 1
    for sub in RUN_SUBDIRS:
        (run / sub).mkdir()
    return run


# ----------------------------------------------------------------------------- create / open
def save_run_config(run_dir: str | Path, kind: str, cfg: Any) -> None:
    """Write ``config.yaml`` with the run's kind first, atomically."""
    text = yaml.safe_dump({"kind": kind, **to_dict(cfg)}, sort_keys=False)
    atomic_write_text(Path(run_dir) / "config.yaml", text)


def create_run(kind: str, cfg: Any, *, runs_dir: str | Path = "runs", run_dir: str | Path | None = None,
               name: str | None = None, command: list[str] | None = None) -> Path:
    """Make a run folder (a new ``runs_dir/<kind>-<name>-<UTC>/``, or ``run_dir``) and write its
    ``config.yaml`` and ``provenance.json``. Validate inputs before calling this."""
    if run_dir is None:
        path = new_run_dir(runs_dir, kind, name or getattr(cfg, "name", None) or getattr(cfg, "preset", "run"))
    else:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        for sub in RUN_SUBDIRS:
            (path / sub).mkdir(exist_ok=True)
    save_run_config(path, kind, cfg)
    write_json(path / "provenance.json", provenance(command))
    return path


def _legacy_kind(path: Path) -> str | None:
    for kind in KINDS.values():
        if any((path / m).exists() for m in kind.markers):
            return kind.name
    prefix = path.name.split("-", 1)[0]
    return prefix if prefix in KINDS else None


@dataclasses.dataclass
class Trained:
    """A trained model ready for inference: the Keras model (a seg model with its main output
    only; an ensemble: mean and member probabilities, ``models.ensemble``), the file (ensemble:
    the first run folder) it came from, and the resize chain from the prepared data to the
    model's working size (seg; None for a generator, which works at its own size); an
    ensemble's member model files and test-time views."""

    model: Any
    path: Path
    preprocessing: Any = None
    members: list[Path] = dataclasses.field(default_factory=list)
    tta: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Run:
    """An opened run folder. ``config`` is the typed config of its kind."""

    path: Path
    kind: str
    config: Any
    legacy: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data(self) -> dict | None:
        """``data.json`` (resolved dataset path, request, fingerprint), or None."""
        f = self.path / "data.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def data_path(self) -> Path | None:
        """The resolved dataset, when it was recorded and still exists."""
        return recorded_dataset(self.path)

    def dataset(self, data: Any = None) -> Path:
        """The prepared dataset to read this run's data from: ``data`` when given, else the
        recorded one (:meth:`data_path`), else the run's ``data.data`` resolved again with its
        split seed and size (into ``<run>/data``; the run's record is not rewritten: reading a
        run does not change it). GAN runs work at ``model.size``, seg runs at ``data.size``."""
        if data is None:
            recorded = self.data_path()
            if recorded is not None:
                return recorded
            data = self.config.data.data
        cfg = self.config
        size = cfg.model.size if self.kind == "gan" else cfg.data.size
        return resolve_into(self.path, data, size, cfg.data.seed, cfg.data.n_phantom, cfg.data.phantom)

    @property
    def provenance(self) -> dict:
        f = self.path / "provenance.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    @property
    def metrics(self) -> dict | None:
        f = self.path / "metrics.json"
        return json.loads(f.read_text()) if f.is_file() else None

    @property
    def spec(self) -> RunKind:
        return KINDS[self.kind]

    @property
    def finished(self) -> bool:
        return self.spec.is_finished(self.path)

    def model_path(self, which: str | None = None) -> Path:
        """The file of a trained model (``which``: one of the kind's ``models``, default its
        ``default_model``): seg ``best`` (falls back to ``final``) or ``final``; gan ``ema`` or
        ``raw``. RunError if the kind has no such model or the file is absent."""
        names = self.spec.models
        which = which or self.spec.default_model
        if which not in names:
            raise RunError(f"{self.path}: a {self.kind} run has no {which!r} model"
                           + (f" (expected one of {list(names)})" if names else ""))
        for name in names[which]:
            if (self.path / name).is_file():
                return self.path / name
        raise RunError(f"{self.path}: no {' or '.join(names[which])} (has the {self.kind} run finished?)")

    def preprocessing(self, data: Any = None):
        """The resize chain of a seg run (prepared size of ``data``, default :meth:`dataset`,
        -> the model's working size)."""
        from cardigan_tf.data.source import prepared_size  # lazy: TensorFlow (see the imports)
        from cardigan_tf.inference import Preprocessing

        if self.kind != "seg":
            raise RunError(f"{self.path}: a {self.kind} run has no resize chain (expected a seg run)")
        return Preprocessing(working_size=int(self.config.model.size), prepared_size=prepared_size(self.dataset(data)))

    def member_runs(self) -> list[Path]:
        """The seg runs whose ensemble is this run's model (cv: ``folds/fold-0``, ...)."""
        folder = self.path / (self.spec.members or "")
        found = sorted((p for p in folder.glob("fold-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
        if not self.spec.members or not found:
            raise RunError(f"{self.path}: a {self.kind} run has no member runs" + (
                f" (expected {folder}/fold-0 ...)" if self.spec.members else ""))
        return found

    def load(self, which: str | None = None, data: Any = None, with_preprocessing: bool = True,
             tta: list[str] | None = None) -> Trained:
        """The trained model of this run, ready for inference (see :class:`Trained`); a cv run:
        the ensemble of its folds (:func:`load_ensemble`). A model file that does not load
        (truncated, damaged) raises RunError naming it."""
        if self.spec.members:
            return load_ensemble([self.path], which, data, tta)
        path = self.model_path(which)
        model = load_model_file(path)
        if self.kind == "seg":
            from cardigan_tf.models.unet import inference_model  # lazy: TensorFlow (see the imports)

            pre = self.preprocessing(data) if with_preprocessing else None
            return Trained(model=inference_model(model), path=path, preprocessing=pre)
        return Trained(model=model, path=path)


def load_ensemble(paths, which: str | None = None, data: Any = None, tta: list[str] | None = None) -> Trained:
    """ONE model averaging the seg runs of ``paths`` (seg runs, and cv runs' folds), with one
    resize chain (of ``data``, default the first run's dataset) and the test-time views ``tta``
    (default: a cv run's recorded ``tta``, none for seg runs); see ``cardigan_tf.ensemble``."""
    from cardigan_tf.ensemble import combine  # lazy: TensorFlow (see the imports)

    opened = [open_run(p) for p in paths]
    if not opened:
        raise RunError("an ensemble needs at least one seg or cv run")
    members = []
    for run in opened:
        if run.kind not in ("seg", "cv"):
            raise RunError(f"{run.path}: a {run.kind} run is no segmentation model (expected a seg or cv run)")
        members += [open_run(p, "seg") for p in run.member_runs()] if run.spec.members else [run]
    if tta is None:
        tta = sorted({v for run in opened for v in getattr(run.config, "tta", [])})
    data = opened[0].dataset(data)
    trained = [run.load(which, data=data) for run in members]
    model, pre, views = combine([t.model for t in trained], [t.preprocessing for t in trained],
                                [t.path for t in trained], [run.config.data.augment for run in members], tta)
    return Trained(model=model, path=opened[0].path, preprocessing=pre, members=[t.path for t in trained], tta=views)


def load_model_file(path: str | Path):
    """A ``.keras`` file of cardigan_tf's (U-Net, generator, their layers registered), or
    RunError naming the file when it does not load."""
    import keras  # lazy: TensorFlow (see the imports)

    import cardigan_tf.models.generator  # noqa: F401  (registers the SPADE layers)

    path = Path(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # a damaged zip, a missing entry, a layer that does not deserialise
        raise RunError(f"{path}: the model file does not load ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); it is damaged or incomplete: "
                       "resume or retrain the run") from None


def read_config_file(path: Path) -> tuple[str | None, dict]:
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    kind = data.pop("kind", None)
    return kind, data


def open_run(path: str | Path, kind: str | None = None) -> Run:
    """Open a run folder read-only: its kind (from ``config.yaml``), typed config and paths.

    Raises RunError when ``path`` is no run folder, is of another kind than ``kind``, or its
    config no longer loads (the message says which key and why).
    """
    from cardigan_tf.configs import config_class, migrate  # lazy: TensorFlow (see the imports)

    path = Path(path)
    cfg_file = path / "config.yaml"
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not cfg_file.is_file():
        raise RunError(f"{path}: not a run folder (no config.yaml)")
    recorded, data = read_config_file(cfg_file)
    legacy = recorded is None
    found = recorded or _legacy_kind(path)
    if found not in KINDS:
        raise RunError(f"{cfg_file}: cannot tell the kind of this run (no 'kind:' key, and neither its files "
                       f"nor its name say it); expected one of {list(KINDS)}")
    if kind is not None and found != kind:
        raise RunError(f"{path}: expected a {kind} run folder, found a {found} run")
    try:
        cfg = from_dict(config_class(found), migrate(found, data), where=str(cfg_file))
    except ConfigError as exc:
        raise RunError(f"{path}: its config does not load with this version of cardigan_tf: {exc}") from None
    return Run(path=path, kind=found, config=cfg, legacy=legacy)


def ensure_run_subdirs(path: str | Path) -> Path:
    """Create the standard subfolders of a run that is about to be written to (resume)."""
    path = Path(path)
    for sub in RUN_SUBDIRS:
        (path / sub).mkdir(exist_ok=True)
    return path
