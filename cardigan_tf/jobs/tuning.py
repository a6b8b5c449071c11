"""KerasTuner search over U-Net hyperparameters and the training data's make-up (library; the
command is ``python -m cardigan_tf.tune``).

- :class:`UNetHyperModel`: ``build(hp)`` makes and compiles the U-Net of a trial (learning rate,
  base filters, depth, normalisation, dropout, Dice/CE weighting); ``fit(hp, model)`` builds the
  trial's training data (synthetic share, geometric and intensity augmentation strength), trains
  exactly as ``train seg`` does (same loss, optimiser, schedule, seeded data stream) and
  returns the objective, the mean validation Dice that the model's Keras metric computes on the
  REAL, unmixed, unaugmented validation split, plus per-structure Dice, HD and MAD on that split
  (working size, working-grid spacing; HD/MAD keys carry their unit, ``_mm`` or ``_px``).
- The search space comes from :mod:`cardigan_tf.configs.tune` (declared there only);
  :func:`declare_space` turns it into KerasTuner hyperparameters.
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

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import cardigan_tf.runtime as runtime
from cardigan_tf.config import ConfigError, to_dict
from cardigan_tf.configs.tune import TuneConfig, apply_values
from cardigan_tf.files import OverwriteError, write_json
from cardigan_tf.jobs.tuning_report import PROJECT, TRIAL_RECORD, write_report
from cardigan_tf.runs import RunError, create_run, open_run

log = logging.getLogger(__name__)

CHIEF_FILE = "chief.json"
STRUCTURES = ("lv_endo", "lv_epi", "la")
ENV_IP, ENV_PORT, ENV_ID = "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"


# ----------------------------------------------------------------------------- search space
def declare_space(hp, space) -> dict[str, Any]:
    """Register ``space`` (name -> ParamSpec) in KerasTuner's ``hp``; return name -> value."""
    values = {}
    for name, spec in space.items():
        if spec.type == "float":
            values[name] = hp.Float(name, spec.min, spec.max, step=spec.step,
                                    sampling="log" if spec.log else "linear")
        elif spec.type == "int":
            values[name] = hp.Int(name, int(spec.min), int(spec.max), step=int(spec.step or 1),
                                  sampling="log" if spec.log else "linear")
        elif spec.type == "choice":
            values[name] = hp.Choice(name, list(spec.values))
        else:
            values[name] = hp.Fixed(name, spec.value)
    return values


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
                           f"(waiting for {marker}); start the chief ({ENV_ID}=chief) with the same --dir")
        time.sleep(poll_s)


# ----------------------------------------------------------------------------- hypermodel
def _callbacks_module():
    import keras

    class AliasObjective(keras.callbacks.Callback):
        """Copy the model's log key of the objective (prefixed by the output name with deep
        supervision) under the objective's own name, for KerasTuner's callbacks."""

        def __init__(self, objective: str, key: str):
            super().__init__()
            self.objective, self.key = objective, key

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None and self.key in logs and self.objective not in logs:
                logs[self.objective] = logs[self.key]

    class KeepBest(keras.callbacks.Callback):
        """Keep the weights of the best epoch (by ``key``) in memory."""

        def __init__(self, key: str, direction: str):
            super().__init__()
            self.key, self.sign = key, (1.0 if direction == "max" else -1.0)
            self.best, self.weights, self.best_epoch = None, None, None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.key)
            if value is None or not math.isfinite(float(value)):
                return
            if self.best is None or self.sign * float(value) > self.sign * self.best:
                self.best, self.best_epoch = float(value), epoch + 1
                self.weights = self.model.get_weights()

    return AliasObjective, KeepBest


def log_key(objective: str, model) -> str:
    """The Keras log key of ``objective`` for ``model`` (see jobs.seg.monitor_key)."""
    if len(model.outputs) == 1 or objective == "val_loss":
        return objective
    return f"val_{model.output_names[0]}_{objective[len('val_'):]}"


def _steps(cfg: TuneConfig, data_path: Path) -> tuple[int, int]:
    from cardigan_tf.jobs.seg import count_train_frames

    n_train = count_train_frames(data_path, cfg.seg)
    t = cfg.seg.train
    return n_train, t.steps_per_epoch or max(1, -(-n_train // t.batch_size))


def _hypermodel_base():
    import keras_tuner as kt

    return kt.HyperModel


class UNetHyperModel(_hypermodel_base()):
    """The U-Net search of ``cfg`` on the resolved data ``data_path`` (see module docstring).

    ``steps``: training steps per epoch (as ``train seg`` computes them); ``jit``: XLA;
    ``strategy``: the trial's tf.distribute strategy (None: default), for batch checks.
    """

    def __init__(self, cfg: TuneConfig, data_path: str | Path, steps: int, jit: bool = False, strategy=None):
        super().__init__(name="unet", tunable=True)
        self.cfg = cfg
        self.data_path = Path(data_path)
        self.steps = int(steps)
        self.jit = bool(jit)
        self.strategy = strategy
        self.trial: dict[str, Any] | None = None  # set by the tuner before each trial
        self._valid = None

    # -- KerasTuner API
    def declare_hyperparameters(self, hp):
        declare_space(hp, self.cfg.space)

    def seg_config(self, hp) -> Any:
        return apply_values(self.cfg.seg, declare_space(hp, self.cfg.space))

    def build(self, hp):
        import keras

        from cardigan_tf.jobs.seg import compile_unet
        from cardigan_tf.models.unet import build_unet

        seg = self.seg_config(hp)
        keras.utils.set_random_seed(int(seg.train.seed))  # the same initial weights as retrain_best
        model = build_unet(seg.model)
        # the schedule spans the longest trial (Hyperband continues shorter ones), as train seg's
        # spans its run: a random/bayesian trial of max_epochs == seg.train.epochs matches a run exactly
        compile_unet(model, seg, self.steps * self.cfg.max_epochs, self.jit)
        return model

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=None, **kwargs):
        from cardigan_tf.data.pipeline import make_dataset

        start = time.time()
        seg = self.seg_config(hp)
        t, d = seg.train, seg.data
        epochs = int(epochs or self.cfg.max_epochs)
        common = dict(size=d.size, views=d.views, phases=d.phases, strategy=self.strategy)
        train_ds = make_dataset(str(self.data_path), "train", batch_size=t.batch_size, training=True,
                                augment=d.augment, synthetic=d.synthetic,
                                synthetic_fraction=d.synthetic_fraction if d.synthetic else 0.0, seed=t.seed,
                                patients=d.train_patients, skip_batches=int(initial_epoch) * self.steps, **common)
        # the objective: real validation patients only, never mixed with synthetic images, never augmented
        val_ds = make_dataset(str(self.data_path), "valid", batch_size=t.batch_size, training=False, **common)
        n_out = len(model.outputs)
        if n_out > 1:
            train_ds = train_ds.map(lambda x, y: (x, (y,) * n_out))
            val_ds = val_ds.map(lambda x, y: (x, (y,) * n_out))
        alias_cls, keep_cls = _callbacks_module()
        key = log_key(self.cfg.objective, model)
        keep = keep_cls(key, self.cfg.direction)
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=int(initial_epoch),
                            steps_per_epoch=self.steps, shuffle=False,
                            callbacks=[alias_cls(self.cfg.objective, key), *(callbacks or []), keep],
                            verbose=1 if sys.stdout.isatty() else 2)
        if keep.best is None:
            raise ValueError(f"the objective {self.cfg.objective!r} ({key}) was not logged or not finite; "
                             f"logged: {sorted(history.history)}")
        final = model.get_weights()
        model.set_weights(keep.weights)
        structures, unit = self.structure_metrics(model, seg)
        model.set_weights(final)
        metrics = {self.cfg.objective: keep.best, **{k: v for k, v in structures.items() if math.isfinite(v)}}
        record = {
            "trial_id": (self.trial or {}).get("trial_id"), "tuner_id": (self.trial or {}).get("tuner_id"),
            "objective": self.cfg.objective, "score": keep.best, "best_epoch": keep.best_epoch,
            "epochs": epochs, "initial_epoch": int(initial_epoch), "steps_per_epoch": self.steps,
            "distance_unit": unit, "metrics": structures, "hyperparameters": dict(hp.values),
            "history": {k: [float(x) for x in v] for k, v in history.history.items()},
            "seconds": round(time.time() - start, 2), "seg_config": to_dict(seg),
        }
        self._log_trial(record, callbacks)
        return metrics

    # -- per-structure metrics on the validation split
    def _validation_samples(self, seg):
        """(model input (N,s,s,1), working-size truth masks, working-grid spacings, unit)."""
        if self._valid is not None:
            return self._valid
        from cardigan_tf.data.h5layout import iter_samples
        from cardigan_tf.data.source import prepared_size
        from cardigan_tf.inference import Preprocessing, model_input
        from cardigan_tf.resize import resize_mask_np

        size = int(seg.model.size)
        if self.data_path.is_dir():  # TFRecord folder: no spacing per frame to read cheaply
            self._valid = (None, None, None, None)
            return self._valid
        samples = [s for _, s in iter_samples(self.data_path, ["valid"], seg.data.views, seg.data.phases)
                   if s.mask is not None]
        pre = Preprocessing(working_size=size, prepared_size=prepared_size(self.data_path))
        x = model_input([s.image for s in samples], pre)
        gts = [resize_mask_np(s.mask, (size, size)) for s in samples]
        # the working grid covers the original field of view: mm per working pixel
        spacings = [(s.spacing[0] * s.original_shape[0] / size, s.spacing[1] * s.original_shape[1] / size)
                    for s in samples]
        unit = "mm" if all(s.meta.get("spacing_known", True) for s in samples) else "px"
        self._valid = (x, gts, spacings, unit)
        return self._valid

    def structure_metrics(self, model, seg) -> tuple[dict[str, float], str | None]:
        """Mean Dice, HD and MAD per structure on the validation split (working size):
        ``val_<structure>_dice``, ``val_<structure>_hd_<unit>``, ``val_<structure>_mad_<unit>``."""
        from cardigan_tf.inference import masks_from_probabilities, predict_probabilities
        from cardigan_tf.metrics.segmentation import evaluate_masks
        from cardigan_tf.models.unet import inference_model

        x, gts, spacings, unit = self._validation_samples(seg)
        if x is None or not len(x):
            return {}, None
        probs = predict_probabilities(inference_model(model), x, batch_size=max(1, seg.train.batch_size))
        preds = masks_from_probabilities(probs, [g.shape for g in gts])
        per = {f"{s}_{m}": [] for s in STRUCTURES for m in ("dice", "hd", "mad")}
        for pred, gt, sp in zip(preds, gts, spacings):
            result = evaluate_masks(pred, gt, sp)
            for s in STRUCTURES:
                for m in ("dice", "hd", "mad"):
                    per[f"{s}_{m}"].append(result[s][m])
        out = {}
        for s in STRUCTURES:
            for m in ("dice", "hd", "mad"):
                vals = np.asarray(per[f"{s}_{m}"], np.float64)
                name = f"val_{s}_{m}" if m == "dice" else f"val_{s}_{m}_{unit}"
                out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        return out, unit

    def _log_trial(self, record: dict, callbacks) -> None:
        trial_dir = (self.trial or {}).get("trial_dir")
        if trial_dir:
            write_json(Path(trial_dir) / TRIAL_RECORD, record)
        logdir = next((cb.log_dir for cb in callbacks or [] if type(cb).__name__ == "TensorBoard"), None)
        if logdir:
            import tensorflow as tf

            writer = tf.summary.create_file_writer(str(Path(logdir) / "validation_structures"))
            with writer.as_default():
                for k, v in record["metrics"].items():
                    if math.isfinite(v):
                        tf.summary.scalar(k, v, step=record["epochs"])
            writer.flush()
            writer.close()


# ----------------------------------------------------------------------------- tuners
def _tuner_classes():
    import keras_tuner as kt

    class _TrialContext:
        """Tell the hypermodel which trial (id, tuner id, folder) it is running."""

        def run_trial(self, trial, *args, **kwargs):
            self.hypermodel.trial = {"trial_id": trial.trial_id, "tuner_id": self.tuner_id,
                                     "trial_dir": self.get_trial_dir(trial.trial_id)}
            return super().run_trial(trial, *args, **kwargs)

    class HyperbandTuner(_TrialContext, kt.Hyperband):
        pass

    class BayesianTuner(_TrialContext, kt.BayesianOptimization):
        pass

    class RandomTuner(_TrialContext, kt.RandomSearch):
        pass

    return {"hyperband": HyperbandTuner, "bayesian": BayesianTuner, "random": RandomTuner}


def make_tuner(cfg: TuneConfig, tune_dir: str | Path, hypermodel, strategy=None):
    """The KerasTuner tuner of ``cfg`` on project ``tune_dir/search`` (``overwrite=False``: an
    existing project is reloaded, i.e. resumed). ``strategy`` becomes its distribution_strategy."""
    import keras_tuner as kt

    cls = _tuner_classes()[cfg.tuner]
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
    from cardigan_tf.data.h5layout import is_h5_layout
    from cardigan_tf.data.source import check_data
    from cardigan_tf.data.synthetic import check_synthetic_set

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
        import importlib.util

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
def tune(cfg: TuneConfig | None, tune_dir: str | Path | None = None, *, overwrite: bool = False,
         resume: bool = False, runs_dir: str | Path = "runs", callbacks: list | None = None,
         worker_wait_s: float = 600.0, verbose: int = 1) -> Path:
    """Run the search of ``cfg``; return the retrained best run folder (the tuning folder when
    ``cfg.retrain`` is off, and on a distributed worker).

    ``tune_dir``: the tuning folder (default: a new ``runs_dir/tune-<name>-<UTC>``); it must not
    exist unless ``overwrite`` (deleted first, only if it is a tuning folder) or ``resume``
    (continue its search with its saved config; ``cfg`` may only raise ``max_trials``).
    ``callbacks``: extra Keras callbacks for every trial (deep-copied per trial by KerasTuner).
    Every input is checked before the folder is created or training starts.
    """
    role = distributed_role()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    fresh = False
    if role == "worker":
        if tune_dir is None:
            raise ConfigError("a distributed worker needs the shared tuning folder (--dir)")
        tune_dir = Path(tune_dir)
        wait_for_chief(tune_dir, worker_wait_s)
        cfg = open_run(tune_dir, "tune").config  # the chief's config
        cfg.validate()
    elif resume:
        if tune_dir is None:
            raise ConfigError("--resume needs the tuning folder (--dir)")
        tune_dir = Path(tune_dir)
        saved = open_run(tune_dir, "tune").config
        if cfg is not None and cfg.max_trials != saved.max_trials:
            saved.max_trials = cfg.max_trials
        cfg = saved
        check_inputs(cfg)
        from cardigan_tf.runs import save_run_config

        save_run_config(tune_dir, "tune", cfg)
    else:
        if cfg is None:
            raise ConfigError("tune: give a TuneConfig, or resume=True with the tuning folder")
        check_inputs(cfg)
        if tune_dir is not None and Path(tune_dir).exists():
            if not overwrite:
                raise OverwriteError(f"{tune_dir}: tuning folder already exists; pass --resume to continue its "
                                     "search or --overwrite to start again")
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
    import keras

    strategy = get_strategy(cfg)
    _, steps = _steps(cfg, data_path)
    hypermodel = UNetHyperModel(cfg, data_path, steps, jit=runtime.resolve_jit(cfg.seg.train.jit), strategy=strategy)
    tuner = make_tuner(cfg, tune_dir, hypermodel, strategy=strategy)
    board = keras.callbacks.TensorBoard(str(tune_dir / "tensorboard"), write_graph=False, update_freq="epoch",
                                        profile_batch=0)
    fit_kwargs = dict(callbacks=[board, *(callbacks or [])], epochs=cfg.max_epochs, verbose=verbose)
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
    from cardigan_tf.data.synthetic import check_synthetic_set

    if role == "worker":
        run = open_run(tune_dir, "tune")
        path = run.data_path()
        if path is None:
            raise RunError(f"{tune_dir}: the chief's data.json names no existing dataset")
        return path
    from cardigan_tf.jobs.seg import resolve_run_data

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
    import keras

    from cardigan_tf.jobs.seg import train_seg

    tune_dir = Path(tune_dir)
    run = open_run(tune_dir, "tune")
    cfg = cfg or run.config
    best = best or json.loads((tune_dir / "best_hyperparameters.json").read_text())
    data_path = data_path or run.data_path()
    run_dir = tune_dir / f"best-trial_{best['trial_id']}"
    if (run_dir / "metrics.json").is_file() and (run_dir / "final.keras").is_file():
        path = run_dir
    elif (run_dir / "config.yaml").is_file():
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
