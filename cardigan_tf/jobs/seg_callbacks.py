"""Callbacks of ``train seg``: best model + early stopping with resumable state, overlay images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cardigan_tf import viz
from cardigan_tf.files import write_json


class BestAndEarlyStop(keras.callbacks.Callback):
    """Save ``best.keras`` when ``monitor`` (validation mean Dice, higher is better) improves;
    stop after ``patience`` epochs without improvement (0 = never); keep the per-epoch logs of
    the whole run (across resumes) under ``history``.

    Its counters live in ``run_dir/checkpoints/state.json`` so that a resumed run continues
    them exactly (Keras' EarlyStopping / ModelCheckpoint forget them on restart).
    """

    def __init__(self, run_dir: str | Path, monitor: str, patience: int = 0, min_delta: float = 1e-4):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.state_path = self.run_dir / "checkpoints" / "state.json"

    def on_train_begin(self, logs=None):
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())
        else:
            self.state = {"best": None, "best_epoch": None, "wait": 0, "best_logs": {}, "stopped_early": False,
                          "history": {}}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(f"BestAndEarlyStop: {self.monitor!r} not in the epoch logs {sorted(logs)}")
        value = float(logs[self.monitor])
        for k, v in logs.items():
            self.state["history"].setdefault(k, []).append(float(v))
        best = self.state["best"]
        if best is None or value > best + self.min_delta:
            self.state.update(best=value, best_epoch=epoch + 1, wait=0,
                              best_logs={k: float(v) for k, v in logs.items()})
            tmp = self.run_dir / ".best.tmp.keras"
            self.model.save(tmp)
            os.replace(tmp, self.run_dir / "best.keras")
        else:
            self.state["wait"] += 1
            if self.patience and self.state["wait"] >= self.patience:
                self.state["stopped_early"] = True
                self.model.stop_training = True
        write_json(self.state_path, self.state)


class OverlayLogger(keras.callbacks.Callback):
    """Each epoch: a few validation images with ground-truth and predicted overlays, written to
    TensorBoard (``tf.summary.image`` "val_overlays") and to ``samples/epoch_XXX.png``."""

    def __init__(self, val_ds, run_dir: str | Path, n: int = 4):
        super().__init__()
        self.val_ds = val_ds
        self.run_dir = Path(run_dir)
        self.n = int(n)
        self.batch = None
        self.writer = None

    def on_train_begin(self, logs=None):
        if self.n <= 0:
            return
        images, masks = [], []
        for x, y in self.val_ds:
            images.append(np.asarray(x))
            y = np.asarray(y)
            masks.append(y.argmax(-1) if y.ndim == 4 else y)
            if sum(len(i) for i in images) >= self.n:
                break
        if images:
            self.batch = (np.concatenate(images)[: self.n], np.concatenate(masks)[: self.n])

        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard" / "overlays"))

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None:
            return

        x, gt = self.batch
        out = self.model(x, training=False)
        probs = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
        pred = probs.argmax(-1).astype(np.uint8)
        rows = [[viz.to_uint8_gray(x[i]), viz.overlay(x[i], gt[i]), viz.overlay(x[i], pred[i])] for i in range(len(x))]
        grid = viz.make_grid(rows, col_titles=["image", "truth", "prediction"])
        viz.save_png(self.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png", grid)

        with self.writer.as_default():
            tf.summary.image("val_overlays", grid[None], step=epoch + 1)
        self.writer.flush()
