"""KerasTuner search over U-Net hyperparameters and the training data's make-up (library; the
command is ``python -m cardigan_tf.tune``).

- :class:`UNetHyperModel`: ``build(hp)`` makes and compiles the U-Net of a trial (learning rate,
  base filters, depth, normalisation, dropout, Dice/CE weighting); ``fit(hp, model)`` builds the
  trial's training data (synthetic share, geometric and intensity augmentation strength), trains
  exactly as ``train seg`` does (same loss, optimiser, schedule, seeded data stream) and
  returns the objective, the mean validation Dice that the model's Keras metric computes on the
  REAL, unmixed, unaugmented validation split, plus per-structure Dice, HD and MAD on that split
  (working size, working-grid spacing; the trial's ``distance_unit`` names the unit of HD/MAD,
  ``mm``, or ``px`` when the data records no spacing: :mod:`cardigan_tf.units`).
- The search space comes from :mod:`cardigan_tf.configs.tune` (declared there only);
  :func:`cardigan_tf.jobs.tuning_model.declare_space` turns it into KerasTuner hyperparameters;
  the HyperModel lives in :mod:`cardigan_tf.jobs.tuning_model`.
- :func:`tune` checks every input first (config, data, synthetic set, output folder), makes the
  tuning folder (a run folder of kind ``tune``), runs the search (resumable: KerasTuner with
  ``overwrite=False`` reloads the finished trials and re-runs only the unfinished one), writes
  the reports (:func:`cardigan_tf.jobs.tuning_report.write_report`) and retrains the best
  configuration for the full budget into an ordinary seg run folder (:func:`retrain_best`).
- Distributed tuning uses KerasTuner's own mechanism: with ``KERASTUNER_ORACLE_IP``,
  ``KERASTUNER_ORACLE_PORT`` and ``KERASTUNER_TUNER_ID`` set, the process whose id contains
  ``chief`` creates the folder and serves the oracle; the others (workers) wait for the chief's
  ``chief.json`` in the shared tuning folder, take the chief's config and run trials.

Tuning folder::

    config.yaml, provenance.json, data.json   (run folder of kind "tune"; runs.open_run works)
    search/                  KerasTuner project: oracle.json, trial_<id>/trial.json + checkpoint
                             + cardigan_trial.json (tuner id, per-structure metrics, seconds)
    tensorboard/<trial id>/  per-trial TensorBoard logs (scalars, hparams, structure metrics)
    trials.csv, trials.md    every trial: status, objective, hyperparameters, metrics
    objective.png            objective per trial and running best
    best_hyperparameters.json, metrics.json, report.md
    best-trial_<id>/         the best configuration retrained: an ordinary seg run folder
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import keras
import keras_tuner as kt

import cardigan_tf.runtime as runtime
from cardigan_tf.config import ConfigError
from cardigan_tf.configs.tune import TuneConfig, apply_values
from cardigan_tf.data.h5layout import is_h5_layout
from cardigan_tf.data.source import check_data
from cardigan_tf.data.synthetic import check_synthetic_set
from cardigan_tf.files import OverwriteError, write_json
from cardigan_tf.jobs.seg import resolve_run_data, train_seg
from cardigan_tf.jobs.tuning_model import UNetHyperModel, trial_steps
from cardigan_tf.jobs.tuning_report import PROJECT, write_report
from cardigan_tf.run_plan import plan_run
from cardigan_tf.runs import RunError, create_run, is_run, open_run

log = logging.getLogger(__name__)

CHIEF_FILE = "chief.json"
ENV_IP, ENV_PORT, ENV_ID = "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"


# ----------------------------------------------------------------------------- distribution
def distributed_role() -> str:
    """``local`` (no KERASTUNER_ORACLE_IP), ``chief`` or ``worker`` (KerasTuner's variables)."""
    if ENV_IP not in os.environ:
        return "local"
    missing = [v for v in (ENV_PORT, ENV_ID) if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"distributed tuning: {ENV_IP} is set but {missing} not; set {ENV_IP}, {ENV_PORT} "
                          f"and {ENV_ID} (an id containing 'chief' for the chief) together")
    return "chief" if "chief" in os.environ[ENV_ID] else "worker"


def wait_for_chief(tune_dir: Path, timeout_s: float, poll_s: float = 0.5) -> dict:
    """Block until the chief has written ``tune_dir/chief.json`` (RunError after ``timeout_s``)."""
    marker = tune_dir / CHIEF_FILE
    deadline = time.monotonic() + float(timeout_s)
    while True:
        if marker.is_file():
            try:
                return json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                pass  # being written
        if time.monotonic() > deadline:
            raise RunError(f"{tune_dir}: no chief started a search there within {timeout_s:.0f} s "
                           f"(waiting for {marker}); start the chief ({ENV_ID}=chief) with the same --run-dir")
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- tuners
class _TrialContext:
    """Tell the hypermodel which trial (id, tuner id, folder) it is running."""

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.trial = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                                 "trial_dir": self.get_trial_dir(trial.trial_id)}
        return super().run_trial(trial, *args, **kwargs)


class HyperbandTuner(_TrialContext, kt.Hyperband):
    """KerasTuner's Hyperband, telling the hypermodel its trial."""


class BayesianTuner(_TrialContext, kt.BayesianOptimization):
    """KerasTuner's Bayesian optimisation, telling the hypermodel its trial."""


class RandomTuner(_TrialContext, kt.RandomSearch):
    """KerasTuner's random search, telling the hypermodel its trial."""


#: TuneConfig.tuner -> tuner class
TUNER_CLASSES = {"hyperband": HyperbandTuner, "bayesian": BayesianTuner, "random": RandomTuner}


def make_tuner(cfg: TuneConfig, tune_dir: str | Path, hypermodel, strategy=None):
    """The KerasTuner tuner of ``cfg`` on project ``tune_dir/search`` (``overwrite=False``: an
    existing project is reloaded, i.e. resumed). ``strategy`` becomes its distribution_strategy."""
    cls = TUNER_CLASSES[cfg.tuner]
    common = dict(hypermodel=hypermodel, objective=kt.Objective(cfg.objective, direction=cfg.direction),
                  seed=cfg.seed, directory=str(tune_dir), project_name=PROJECT, overwrite=False,
                  distribution_strategy=strategy, executions_per_trial=cfg.executions_per_trial)
    if cfg.tuner == "hyperband":
        tuner = cls(max_epochs=cfg.max_epochs, factor=cfg.hyperband_factor, hyperband_iterations=1, **common)
        if isinstance(tuner.oracle, kt.Oracle):  # not on a worker (its oracle is a gRPC client)
            tuner.oracle.max_trials = cfg.max_trials
    else:
        tuner = cls(max_trials=cfg.max_trials, **common)
    return tuner


def get_strategy(cfg: TuneConfig):
    """The per-trial tf.distribute strategy of ``cfg`` (None for "default")."""
    return None if cfg.strategy == "default" else runtime.get_strategy(cfg.strategy)


# ----------------------------------------------------------------------------- inputs
def check_inputs(cfg: TuneConfig) -> None:
    """Everything checkable before the tuning folder exists (ConfigError / DataError): the
    config and search space, the data, and the synthetic set (existence, image size and, when
    the data is already a seed-layout file, its source patients)."""
    cfg.validate()
    check_tuner_available(cfg.tuner)
    check_data(cfg.seg.data.data, "--data")
    if cfg.seg.data.synthetic:
        data = cfg.seg.data.data
        ready = data and Path(data).is_file() and is_h5_layout(data)
        check_synthetic_set(cfg.seg.data.synthetic, data if ready else None, size=cfg.seg.data.size)


def check_tuner_available(tuner: str) -> None:
    """ConfigError when a tuner's optional dependency is missing (bayesian: scikit-learn)."""
    if tuner == "bayesian":
        if importlib.util.find_spec("sklearn") is None:
            raise ConfigError("tuner: bayesian needs scikit-learn (pip install scikit-learn, or "
                              "keras-tuner[bayesian]); use --tuner hyperband or random without it")


def _remove_tuning_folder(path: Path) -> None:
    """Delete ``path`` for --overwrite, only when it is a tuning run folder (or empty)."""
    if not path.is_dir():
        raise OverwriteError(f"{path}: exists and is not a folder")
    if any(path.iterdir()):
        try:
            open_run(path, "tune")
        except RunError as exc:
            raise OverwriteError(f"{path}: not a tuning folder ({exc}); refusing to delete it for --overwrite") from None
    shutil.rmtree(path)


# ----------------------------------------------------------------------------- the job
def tune(cfg: TuneConfig | None, tune_dir: str | Path | None = None, *, resume: str | Path | None = None,
         overwrite: bool = False, runs_dir: str | Path = "runs", callbacks: list | None = None,
         worker_wait_s: float = 600.0) -> Path:
    """Run the search of ``cfg``; return the retrained best run folder (the tuning folder when
    ``cfg.retrain`` is off, and on a distributed worker).

    ``tune_dir``: the folder of a new search (default: a new ``runs_dir/tune-<name>-<UTC>``); it
    must not exist unless ``overwrite`` (deleted first, only if it is a tuning folder).
    ``resume``: a tuning folder whose search continues with its saved config (a given ``cfg``
    must equal it but for ``max_trials``; a finished search with the same values is returned as
    it is). ``callbacks``: extra Keras callbacks for every trial (deep-copied per trial by
    KerasTuner). Every input is checked before the folder is created or training starts.
    """
    role = distributed_role()
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    fresh = False
    if role == "worker":
        tune_dir = resume if resume is not None else tune_dir
        if tune_dir is None:
            raise ConfigError("a distributed worker needs the shared tuning folder (--resume DIR or --run-dir DIR)")
        tune_dir = Path(tune_dir)
        wait_for_chief(tune_dir, worker_wait_s)
        cfg = open_run(tune_dir, "tune").config  # the chief's config
        cfg.validate()
    elif resume is not None:
        plan = plan_run("tune", cfg, resume=resume)
        cfg, tune_dir = plan.config, plan.path
        check_inputs(cfg)
        plan.open()
        if plan.status == "finished":
            return retrain_best(tune_dir, cfg) if cfg.retrain else tune_dir
    else:
        if cfg is None:
            raise ConfigError("tune: give a TuneConfig, or resume=TUNING_FOLDER")
        check_inputs(cfg)
        if tune_dir is not None and Path(tune_dir).exists():
            if not overwrite:
                raise OverwriteError(f"{tune_dir}: tuning folder already exists; pass --resume {tune_dir} to "
                                     "continue its search or --overwrite to start again")
            _remove_tuning_folder(Path(tune_dir))
        tune_dir = create_run("tune", cfg, runs_dir=runs_dir, run_dir=tune_dir, name=cfg.name)
        fresh = True

    tune_dir = Path(tune_dir)
    try:
        data_path = _resolve_data(cfg, tune_dir, role)
    except Exception:
        if fresh:  # nothing was trained: leave no half-made folder behind
            shutil.rmtree(tune_dir, ignore_errors=True)
        raise

    runtime.set_precision(cfg.seg.train.precision)
    strategy = get_strategy(cfg)
    _, steps = trial_steps(cfg, data_path)
    hypermodel = UNetHyperModel(cfg, data_path, steps, jit=runtime.resolve_jit(cfg.seg.train.jit), strategy=strategy)
    tuner = make_tuner(cfg, tune_dir, hypermodel, strategy=strategy)
    board = keras.callbacks.TensorBoard(str(tune_dir / "tensorboard"), write_graph=False, update_freq="epoch",
                                        profile_batch=0)
    fit_kwargs = dict(callbacks=[board, *(callbacks or [])], epochs=cfg.max_epochs)
    marker = tune_dir / CHIEF_FILE
    if role == "chief":
        write_json(marker, {"tuner_id": os.environ[ENV_ID], "ip": os.environ[ENV_IP], "port": os.environ[ENV_PORT],
                            "pid": os.getpid(), "started": time.time()})
    try:
        tuner.search(**fit_kwargs)
    finally:
        if role == "chief":
            marker.unlink(missing_ok=True)
    if role == "worker":
        return tune_dir
    best = write_report(tune_dir, cfg)
    if not cfg.retrain:
        return tune_dir
    return retrain_best(tune_dir, cfg, best, data_path)


def _resolve_data(cfg: TuneConfig, tune_dir: Path, role: str) -> Path:
    if role == "worker":
        run = open_run(tune_dir, "tune")
        path = run.data_path()
        if path is None:
            raise RunError(f"{tune_dir}: the chief's data.json names no existing dataset")
        return path
    path = resolve_run_data(cfg.seg, tune_dir)
    if cfg.seg.data.synthetic:  # now that the data is resolved: its held-out patients are known
        check_synthetic_set(cfg.seg.data.synthetic, path, size=cfg.seg.data.size)
    return path


# ----------------------------------------------------------------------------- retrain
def best_seg_config(cfg: TuneConfig, best: dict, data_path: str | Path | None = None):
    """The SegConfig of the best trial, for the full budget (``seg.train.epochs``)."""
    seg = apply_values(cfg.seg, best["hyperparameters"])
    seg.name = f"{cfg.name}-best"
    if data_path is not None:
        seg.data.data = str(data_path)
    if cfg.strategy != "default":
        seg.train.strategy = cfg.strategy
    return seg


def retrain_best(tune_dir: str | Path, cfg: TuneConfig | None = None, best: dict | None = None,
                 data_path: str | Path | None = None) -> Path:
    """Retrain the best trial's configuration for ``seg.train.epochs`` epochs into the ordinary
    seg run folder ``tune_dir/best-trial_<id>/`` (resumed if interrupted, kept if finished);
    return that folder. Seeds as a trial: the same seed and budget reproduce its score."""
    tune_dir = Path(tune_dir)
    run = open_run(tune_dir, "tune")
    cfg = cfg or run.config
    best = best or json.loads((tune_dir / "best_hyperparameters.json").read_text())
    data_path = data_path or run.data_path()
    run_dir = tune_dir / f"best-trial_{best['trial_id']}"
    if is_run(run_dir):  # kept when finished, resumed when interrupted: with the config it started with
        path = train_seg(None, resume=run_dir)
    else:
        seg = best_seg_config(cfg, best, data_path)
        keras.utils.set_random_seed(int(seg.train.seed))
        path = train_seg(seg, run_dir=run_dir)
    metrics = json.loads((path / "metrics.json").read_text())
    summary_file = tune_dir / "metrics.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["best_run"] = str(path)
    summary["best_run_metrics"] = {"best_val_dice_mean": metrics.get("best_val_dice_mean"),
                                   "best_val": metrics.get("best_val"), "epochs": metrics.get("epochs_completed")}
    write_json(summary_file, summary)
    return path
