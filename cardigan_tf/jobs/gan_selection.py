"""Like-for-like GAN quality on held-out masks, and the GAN checkpoint chosen by it.

**Paired consistency** (:func:`paired_consistency`): a U-Net trained on real images only (the
scorer) segments, for the masks of held-out patients (the ``valid`` split: never seen by the
GAN or by the scorer's weights), both the real image of each mask and the image the generator
draws from that mask. Dice against the mask, per structure, at the scorer's working size for
both, so the pair differs only in where the image came from. ``gap`` = real minus synthetic:
0 means the generator draws anatomy the scorer reads as well as real anatomy. Validation masks
serve this metric only; no network trains on them.

**Checkpoint selection** (:func:`select_checkpoint`): every checkpoint a GAN run kept
(``checkpoints/ckpt-<step>``) is scored by the paired consistency of its EMA generator (mean
synthetic Dice over the structures) and the best one is saved as ``generator_selected.keras``
(run model ``selected``) with ``selection.json`` (every checkpoint's score, the chosen step,
the scorer and the masks). The last step is what the other SPADE code bases use; here it is
one of the candidates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cardigan_tf.data.h5layout import load_arrays
from cardigan_tf.files import write_json
from cardigan_tf.inference import Preprocessing, model_input, predict_probabilities, synthesize
from cardigan_tf.jobs.gan_loop import build_gan, save_model
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.synthesis import segmentation_consistency
from cardigan_tf.resize import resize_mask_np
from cardigan_tf.runs import open_run

log = logging.getLogger(__name__)
SELECTED_FILE = "generator_selected.keras"
SELECTION_FILE = "selection.json"
#: the split whose masks score a GAN (held out from the GAN and the scorer's training data)
SELECTION_SPLIT = "valid"


def _mean(values) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def held_out_pairs(seg_run: str | Path, data: str | Path, split: str = SELECTION_SPLIT) -> dict[str, Any]:
    """The scorer (:class:`cardigan_tf.runs.Trained` of ``seg_run``) and the real images (through
    its resize chain) and masks (nearest) of ``split`` at its working size, with their patients."""
    seg = open_run(seg_run, "seg")
    trained = seg.load("final", data=data)
    cfg = seg.config
    arrays = load_arrays(data, split, views=cfg.data.views, phases=cfg.data.phases)
    if not len(arrays["mask"]):
        raise ValueError(f"{data}: no image in the {split!r} split to score a GAN on")
    pre = trained.preprocessing
    return {"trained": trained, "images": model_input(arrays["image"], pre),
            "masks": resize_mask_np(arrays["mask"], pre.working_size).astype(np.uint8),
            "patients": arrays["patient"], "split": split, "seg_run": str(seg.path)}


def paired_consistency(generator, pairs: dict[str, Any], seed: int = 0, batch_size: int = 16,
                       real_dice: dict | None = None) -> dict[str, Any]:
    """Per structure: the scorer's mean Dice on the real and on the generated image of the same
    held-out masks (``pairs``: :func:`held_out_pairs`), their ``gap`` (real - synthetic), and
    ``score`` = the mean synthetic Dice over the structures. ``real_dice``: the real side, when
    already computed (it does not depend on the generator)."""
    model, masks = pairs["trained"].model, pairs["masks"]
    if real_dice is None:
        real_pred = predict_probabilities(model, pairs["images"], batch_size).argmax(-1)
        real_dice = segmentation_consistency(real_pred, masks, per_image=True)
    fake = model_input(synthesize(generator, masks, seed=seed, batch_size=batch_size),
                       Preprocessing(int(masks.shape[1])))  # generated at the working size: no resize
    fake_pred = predict_probabilities(model, fake, batch_size).argmax(-1)
    fake_dice = segmentation_consistency(fake_pred, masks, per_image=True)
    out = {s: {"real": _mean(real_dice[s]), "synthetic": _mean(fake_dice[s])} for s in STRUCTURES}
    for s in STRUCTURES:
        out[s]["gap"] = out[s]["real"] - out[s]["synthetic"]
    return {"structures": out, "score": _mean([out[s]["synthetic"] for s in STRUCTURES]),
            "n_images": int(len(masks)), "n_patients": int(len(set(np.asarray(pairs["patients"]).tolist()))),
            "split": pairs["split"], "_real_dice": real_dice}


def _checkpoints(gan_dir: Path) -> list[tuple[int, str]]:
    state = tf.train.get_checkpoint_state(str(gan_dir / "checkpoints"))
    paths = list(state.all_model_checkpoint_paths) if state else []
    return sorted((int(p.rsplit("-", 1)[-1]), p) for p in paths)


def select_checkpoint(gan_dir: str | Path, seg_run: str | Path, data: str | Path, seed: int = 0,
                      batch_size: int = 16) -> dict[str, Any]:
    """Score every kept checkpoint of ``gan_dir`` on the held-out masks of ``data`` with the
    real-trained ``seg_run`` and save the best EMA generator (see the module docstring); return
    the selection record (also ``selection.json``). A finished selection is returned as it is."""
    gan_dir = Path(gan_dir)
    if (gan_dir / SELECTION_FILE).is_file() and (gan_dir / SELECTED_FILE).is_file():
        return json.loads((gan_dir / SELECTION_FILE).read_text())
    run = open_run(gan_dir, "gan")
    checkpoints = _checkpoints(gan_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{gan_dir}/checkpoints: no checkpoint to select from")
    pairs = held_out_pairs(seg_run, data)
    gan = build_gan(run.config)
    restore = gan.checkpoint()
    scores, best, real = [], None, None
    for step, path in checkpoints:
        restore.restore(path).expect_partial()
        res = paired_consistency(gan.generator_ema, pairs, seed=seed, batch_size=batch_size, real_dice=real)
        real = res.pop("_real_dice")
        scores.append({"step": step, **res})
        log.info("GAN %s step %d: held-out synthetic Dice %.3f", gan_dir.name, step, res["score"])
        if best is None or res["score"] > best["score"]:
            best = scores[-1]
            save_model(gan.generator_ema, gan_dir / SELECTED_FILE)
    record = {"rule": "max mean synthetic Dice of the real-trained scorer on held-out masks",
              "selected_step": best["step"], "last_step": checkpoints[-1][0], "score": best["score"],
              "paired_consistency": best, "checkpoints": scores, "scorer": pairs["seg_run"],
              "scorer_model": "final", "data": str(data), "split": pairs["split"]}
    write_json(gan_dir / SELECTION_FILE, record)
    return record
