"""The GAN job's ``fit`` callback: per-step metrics, NaN guard, checkpoints, TensorBoard, samples.

- Metric trackers are reset before each batch, so the logs of a batch are that step's values
  (the progress bar still shows epoch averages).
- NaN guard: the first non-finite loss stops training before anything is saved for that step;
  ``failure`` then names the step and the loss, and the last good checkpoint stays.
- Every ``checkpoint_every`` steps: ``CheckpointManager.save`` (keeps the last few).
- Every ``log_every`` steps: TensorBoard scalars; every ``sample_every``: a PNG grid in
  samples/ and the same grid as a TensorBoard image (mask | real | generated | EMA generated).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from cardigan_tf.viz import save_sample_grid

LOSS_KEYS = ("d_loss", "g_gan", "g_feat", "g_vgg", "g_kl", "g_total", "d_real", "d_fake")


class GanCallback(keras.callbacks.Callback):
    """Args: run folder, tf.train.CheckpointManager, total steps, fixed (images, masks) for
    samples, the train config section, and the step the run starts from."""

    def __init__(self, run_dir: Path, manager, total: int, samples, train_cfg, start: int):
        super().__init__()

        self.run_dir = Path(run_dir)
        self.manager = manager
        self.total = int(total)
        self.sample_images, self.sample_masks = samples
        self.cfg = train_cfg
        self.start = int(start)
        self.step = int(start)
        self.failure = None
        self.last = {}
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
        self._t0 = None
        self._t_first = None
        self._timed_steps = 0

    # -------------------------------------------------------------- fit hooks
    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        for m in self.model.metrics:
            m.reset_state()

    def on_train_batch_end(self, batch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        step = int(self.model.step.numpy())
        bad = [k for k in LOSS_KEYS if k in logs and not math.isfinite(logs[k])]
        if bad:
            self.failure = {
                "step": step, "losses": bad, "values": {k: logs[k] for k in bad},
                "last_good_checkpoint": self.manager.latest_checkpoint,
                "message": (f"non-finite loss at step {step}: {', '.join(bad)} = "
                            f"{', '.join(str(logs[k]) for k in bad)}; training stopped, last good "
                            f"checkpoint: {self.manager.latest_checkpoint}"),
            }
            self.model.stop_training = True
            return
        self.step, self.last = step, logs
        if self._t_first is None:
            self._t_first = time.perf_counter()  # the first step includes tracing: not timed
        else:
            self._timed_steps += 1
        if step % self.cfg.log_every == 0 or step >= self.total:
            self._scalars(step, logs)
        if step % self.cfg.checkpoint_every == 0:
            self.manager.save(checkpoint_number=step)
        if step % self.cfg.sample_every == 0:
            self.write_samples(self.model, final=False)
        if step >= self.total:
            self.model.stop_training = True

    # -------------------------------------------------------------- outputs
    def _scalars(self, step, logs):
        with self.writer.as_default(step=step):
            for k, v in logs.items():
                tf.summary.scalar(k, v)
        self.writer.flush()

    def write_samples(self, gan, final: bool):
        """PNG grid + TensorBoard image: mask | real | generated | EMA generated."""
        step = int(gan.step.numpy())
        masks = self.sample_masks.astype(np.int32)
        fake = gan.generate(masks, use_ema=False, image=self.sample_images)
        ema = gan.generate(masks, use_ema=True, image=self.sample_images)
        name = "final.png" if final else f"step{step:07d}.png"
        path = save_sample_grid(self.run_dir / "samples" / name,
                                {"mask": list(masks), "real": list(self.sample_images),
                                 "generated": list(fake), "ema": list(ema)})

        grid = np.asarray(Image.open(path).convert("RGB"))
        with self.writer.as_default(step=step):
            tf.summary.image("samples/mask|real|generated|ema", grid[None])
        self.writer.flush()
        return path

    def summary(self) -> dict:
        wall = (time.perf_counter() - self._t0) if self._t0 else 0.0
        timed = (time.perf_counter() - self._t_first) if self._t_first else 0.0
        ips = self._timed_steps * self.cfg.batch_size / timed if timed > 0 and self._timed_steps else 0.0
        return {"steps": self.step, "start_step": self.start, "wall_s": wall,
                "images_per_s": ips, "final": self.last}
