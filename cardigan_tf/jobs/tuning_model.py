"""The KerasTuner HyperModel of the U-Net search (see :mod:`cardigan_tf.jobs.tuning`).

- :func:`declare_space` turns the search space of :mod:`cardigan_tf.configs.tune` into KerasTuner
  hyperparameters.
- :class:`UNetHyperModel`: ``build(hp)`` makes and compiles the U-Net of a trial; ``fit(hp, model)``
  builds the trial's training data (synthetic share, augmentation strength), trains exactly as
  ``train seg`` does and returns the objective (mean validation Dice on the real, unmixed,
  unaugmented validation split) plus per-structure Dice, HD and MAD on that split.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from cardigan_tf.config import to_dict
from cardigan_tf.configs.tune import TuneConfig, apply_values
from cardigan_tf.data.dataset_info import iter_dataset
from cardigan_tf.data.pipeline import Selection, Training, make_dataset
from cardigan_tf.data.sample import samples_unit
from cardigan_tf.data.source import prepared_size
from cardigan_tf.files import write_json
from cardigan_tf.inference import Preprocessing, masks_from_probabilities, model_input, predict_probabilities
from cardigan_tf.jobs.seg import compile_unet, count_train_frames
from cardigan_tf.jobs.tuning_report import TRIAL_RECORD
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS, evaluate_masks
from cardigan_tf.models.unet import build_unet, inference_model
from cardigan_tf.resize import resize_mask_np
from cardigan_tf.units import DISTANCE_COLUMN, PX, UNKNOWN_SPACING


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


# ----------------------------------------------------------------------------- hypermodel
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


def log_key(objective: str, model) -> str:
    """The Keras log key of ``objective`` for ``model`` (see jobs.seg.monitor_key)."""
    if len(model.outputs) == 1 or objective == "val_loss":
        return objective
    return f"val_{model.output_names[0]}_{objective[len('val_'):]}"


def trial_steps(cfg: TuneConfig, data_path: Path) -> tuple[int, int]:
    """(training frames, steps per epoch) as ``train seg`` computes them."""
    n_train = count_train_frames(data_path, cfg.seg)
    return n_train, cfg.seg.train.epoch_steps(n_train)


class UNetHyperModel(kt.HyperModel):
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
        seg = self.seg_config(hp)
        keras.utils.set_random_seed(int(seg.train.seed))  # the same initial weights as retrain_best
        model = build_unet(seg.model)
        # the schedule spans the longest trial (Hyperband continues shorter ones), as train seg's
        # spans its run: a random/bayesian trial of max_epochs == seg.train.epochs matches a run exactly
        compile_unet(model, seg, self.steps * self.cfg.max_epochs, self.jit)
        return model

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, verbose=None, **kwargs):
        start = time.time()
        seg = self.seg_config(hp)
        t, d = seg.train, seg.data
        epochs = int(epochs or self.cfg.max_epochs)
        common = dict(size=d.size, batch_size=t.batch_size, strategy=self.strategy)
        training = Training(seed=t.seed, augment=d.augment, synthetic=d.synthetic,
                            synthetic_fraction=d.synthetic_fraction if d.synthetic else 0.0,
                            skip_batches=int(initial_epoch) * self.steps)
        train_ds = make_dataset(str(self.data_path), "train", training=training,
                                select=Selection(views=d.views, phases=d.phases, patients=d.train_patients), **common)
        # the objective: real validation patients only, never mixed with synthetic images, never augmented
        val_ds = make_dataset(str(self.data_path), "valid", select=Selection(views=d.views, phases=d.phases), **common)
        n_out = len(model.outputs)
        if n_out > 1:
            train_ds = train_ds.map(lambda x, y: (x, (y,) * n_out))
            val_ds = val_ds.map(lambda x, y: (x, (y,) * n_out))
        key = log_key(self.cfg.objective, model)
        keep = KeepBest(key, self.cfg.direction)
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=int(initial_epoch),
                            steps_per_epoch=self.steps, shuffle=False,
                            callbacks=[AliasObjective(self.cfg.objective, key), *(callbacks or []), keep],
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
            DISTANCE_COLUMN: unit, "metrics": structures, "hyperparameters": dict(hp.values),
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

        size = int(seg.model.size)
        samples = [s for _, s in iter_dataset(self.data_path, ["valid"], seg.data.views, seg.data.phases)
                   if s.mask is not None]
        if not samples:
            self._valid = (None, None, None, None)
            return self._valid
        pre = Preprocessing(working_size=size, prepared_size=prepared_size(self.data_path))
        x = model_input([s.image for s in samples], pre)
        gts = [resize_mask_np(s.mask, (size, size)) for s in samples]
        unit = samples_unit(samples)  # px when any image lacks a spacing: pixels of the original grid for all
        # the working grid covers the original field of view: mm (or original pixels) per working pixel
        spacings = [(sp[0] * s.original_shape[0] / size, sp[1] * s.original_shape[1] / size)
                    for s in samples for sp in [UNKNOWN_SPACING if unit == PX else s.spacing]]
        self._valid = (x, gts, spacings, unit)
        return self._valid

    def structure_metrics(self, model, seg) -> tuple[dict[str, float], str | None]:
        """Mean Dice, HD and MAD per structure on the validation split (working size):
        ``val_<structure>_dice``, ``val_<structure>_hd``, ``val_<structure>_mad``, and the unit of
        the distances (``mm``, or ``px`` of the original grid when the data records no spacing;
        None when the split has no labelled image)."""
        x, gts, spacings, unit = self._validation_samples(seg)
        if x is None or not len(x):
            return {}, None
        probs = predict_probabilities(inference_model(model), x, batch_size=max(1, seg.train.batch_size))
        preds = masks_from_probabilities(probs, [g.shape for g in gts])
        per = {f"{s}_{m}": [] for s in STRUCTURES for m in METRICS}
        for pred, gt, sp in zip(preds, gts, spacings):
            result = evaluate_masks(pred, gt, sp)
            for s in STRUCTURES:
                for m in METRICS:
                    per[f"{s}_{m}"].append(result[s][m])
        out = {}
        for s in STRUCTURES:
            for m in METRICS:
                vals = np.asarray(per[f"{s}_{m}"], np.float64)
                out[f"val_{s}_{m}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        return out, unit

    def _log_trial(self, record: dict, callbacks) -> None:
        trial_dir = (self.trial or {}).get("trial_dir")
        if trial_dir:
            write_json(Path(trial_dir) / TRIAL_RECORD, record)
        logdir = next((cb.log_dir for cb in callbacks or [] if type(cb).__name__ == "TensorBoard"), None)
        if logdir:
            writer = tf.summary.create_file_writer(str(Path(logdir) / "validation_structures"))
            with writer.as_default():
                for k, v in record["metrics"].items():
                    if math.isfinite(v):
                        tf.summary.scalar(k, v, step=record["epochs"])
            writer.flush()
            writer.close()
