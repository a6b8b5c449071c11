"""Synthetic "CAMUSx" sets from a trained GAN (library; the command is ``python -m cardigan_tf.generate``).

::

    python -m cardigan_tf.generate --gan runs/gan-tiny-... --out synth.h5 \
        [--masks real|deformed|sampled] [--per-mask K] [--n N] [--seed S] [--raw] [--overwrite]

Mask sources (only the GAN's own training patients are ever used; validation and test masks
never are):

- ``real``: the training masks themselves (known anatomy, new texture);
- ``deformed``: training masks under smooth random elastic and affine deformations and
  per-structure scale changes (cardigan_tf.data.deform);
- ``sampled``: masks decoded from a small mask VAE trained on the training masks, one VAE per
  view (cardigan_tf.models.mask_ae). The VAE does not know the cardiac phase: a sampled mask
  is labelled ED or ES by whichever phase's median LV-cavity area (in that view's training
  masks) is closer, and the file records ``phase_assigned = "by_lv_area"``.

Every mask passes the anatomical validity checks (cardigan_tf.data.masks) before use; rejects
are counted and stored in the file's attributes. ``--per-mask K`` draws K styles per mask when
the GAN has a style input (z or encoder); a mask-only GAN is deterministic, so K > 1 then only
makes sense with ``deformed`` masks (each copy gets its own deformation).

Output: the seed HDF5 layout (split ``train``; one group per synthetic image,
``train/<source patient>_x<k>/<view>`` with ``phases=[phase]``) with root attributes
``kind="synthetic"`` and ``provenance`` (GAN run, checkpoint step, EMA or raw weights, seed,
mask source, counts, rejects), and a preview grid PNG next to the file. Each image carries the
spacing of its (source) mask and whether it is known (``spacing_known``): an image drawn from a
mask of data without a spacing has none either.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cardigan_tf.data import h5layout
from cardigan_tf.data.deform import NoValidMaskError, deform_until_valid
from cardigan_tf.data.masks import check_mask, rule_of, validity_check
from cardigan_tf.files import refuse_overwrite
from cardigan_tf.inference import synthesize as _synthesize
from cardigan_tf.labels import LV, PHASES
from cardigan_tf.models.mask_ae import MaskAEConfig, sample_valid_masks, train_mask_vae
from cardigan_tf.resize import resize_pairs_np
from cardigan_tf.runs import KINDS, open_run
from cardigan_tf.units import SPACING_KNOWN
from cardigan_tf.viz import save_sample_grid

log = logging.getLogger(__name__)
MASK_SOURCES = ("real", "deformed", "sampled")


def load_gan_run(run_dir: str | Path, weights: str = "ema"):
    """(generator keras.Model, Run, checkpoint step) of a finished GAN run folder."""
    run = open_run(run_dir, kind="gan")
    generator = run.load(weights).model
    step = (run.metrics or {}).get("steps")
    return generator, run, step


def gan_training_masks(run) -> dict[str, np.ndarray]:
    """The masks the GAN was trained on (the train split, restricted to its training patients),
    at the generator's size."""
    cfg = run.config
    data = run.dataset()
    patients = getattr(cfg.data, "train_patients", None)
    arrays = h5layout.load_arrays(data, "train", views=cfg.data.views, phases=cfg.data.phases,
                                  patients=patients)
    held_out = set()
    splits = h5layout.list_patients(data)
    for split in ("valid", "test", "unlabelled"):
        held_out.update(splits.get(split, []))
    leaked = held_out.intersection(arrays["patient"].tolist())
    if leaked:  # cannot happen with a consistent file; guard the promise all the same
        raise RuntimeError(f"{data}: held-out patients {sorted(leaked)} found among training masks")
    size = int(cfg.model.size)
    if arrays["mask"].shape[1:] != (size, size):  # the generator works at its own size
        arrays["image"], arrays["mask"] = resize_pairs_np(arrays["image"], arrays["mask"], size)
    arrays["source"] = np.array([str(data)] * len(arrays["patient"]))
    splits_record = {k: sorted(v) for k, v in splits.items()}
    arrays["_splits"] = splits_record  # type: ignore[assignment]
    return arrays


def _assign_phase(mask: np.ndarray, medians: dict[str, float]) -> str:
    area = float((mask == LV).sum())
    return min(medians, key=lambda ph: abs(medians[ph] - area))


def build_masks(arrays: dict[str, np.ndarray], source: str, per_mask: int, n: int | None, seed: int,
                vae_epochs: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mask records ``{mask, patient, view, phase, k, spacing, spacing_known, original_shape}`` and counts.

    ``vae_epochs`` (``sampled``): mask VAE epochs; None = at least 40 epochs and 300 updates
    (small training subsets get a smaller VAE batch and more epochs).
    """
    rng = np.random.default_rng(seed)
    masks = arrays["mask"]
    known = arrays.get(SPACING_KNOWN, np.ones(len(masks), bool))
    order = [int(i) for i in rng.permutation(len(masks))]  # n < all masks: a seeded, unbiased choice
    total = n if n is not None else len(order) * per_mask
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"rejected": 0, "by_rule": Counter(), "source_masks_invalid": 0}

    def base(i: int) -> dict[str, Any]:
        return {"index": i, "patient": str(arrays["patient"][i]), "view": str(arrays["view"][i]),
                "phase": str(arrays["phase"][i]), "spacing": arrays["spacing"][i].tolist(),
                SPACING_KNOWN: bool(known[i]), "original_shape": arrays["original_shape"][i].tolist()}

    if source == "real":
        valid = []
        for i in order:
            problems = check_mask(masks[i])
            if problems:
                stats["source_masks_invalid"] += 1
                stats["by_rule"].update({rule_of(p) for p in problems})
            else:
                valid.append(i)
        if not valid:
            raise ValueError("no training mask passes the anatomical validity checks")
        total = n if n is not None else len(valid) * per_mask
        for j in range(total):
            i = valid[j % len(valid)]
            records.append(dict(base(i), mask=masks[i], k=j // len(valid)))
    elif source == "deformed":
        j = 0
        while len(records) < total:
            i = order[j % len(order)]
            j += 1
            try:
                m, rejected = deform_until_valid(masks[i], rng)
            except NoValidMaskError as exc:
                stats["rejected"] += exc.n_rejected
                if j > 20 * total:
                    raise ValueError(f"deformed masks: only {len(records)} valid of {total} wanted") from exc
                continue
            stats["rejected"] += rejected
            records.append(dict(base(i), mask=m, k=(j - 1) // len(order)))
    elif source == "sampled":
        views = sorted(set(arrays["view"].tolist()))
        for v_index, view in enumerate(views):
            sel = arrays["view"] == view
            want = total // len(views) + (1 if v_index < total % len(views) else 0)
            if want == 0:
                continue
            medians = {ph: float(np.median([(m == LV).sum() for m in masks[sel & (arrays["phase"] == ph)]]))
                       for ph in PHASES if np.any(sel & (arrays["phase"] == ph))}
            n_view = int(sel.sum())
            vae_cfg = MaskAEConfig(size=masks.shape[1], batch_size=int(min(16, max(4, n_view // 8))))
            epochs = vae_epochs
            if epochs is None:
                epochs = max(40, math.ceil(300 / math.ceil(n_view / vae_cfg.batch_size)))
            vae = train_mask_vae(masks[sel], vae_cfg, epochs=epochs, seed=seed + v_index)
            drawn, vstats = sample_valid_masks(vae, want, validity_check(), seed=seed + 100 + v_index)
            stats["rejected"] += vstats["rejected"]
            stats["by_rule"].update(vstats["by_rule"])
            first = int(np.flatnonzero(sel)[0])
            for k, m in enumerate(drawn):
                records.append({"mask": m, "patient": f"sampled{view}", "view": view,
                                "phase": _assign_phase(m, medians), "k": k,
                                "spacing": arrays["spacing"][first].tolist(),
                                SPACING_KNOWN: bool(np.all(known[sel])),
                                "original_shape": arrays["original_shape"][first].tolist(),
                                "phase_assigned": "by_lv_area"})
        if len(records) < total:
            log.warning("sampled masks: %d valid of %d wanted", len(records), total)
    else:
        raise ValueError(f"--masks {source!r}: expected one of {MASK_SOURCES}")
    stats["by_rule"] = dict(stats["by_rule"])
    return records, stats


def synthesize(generator, masks: np.ndarray, seed: int, batch_size: int = 16) -> np.ndarray:
    """Generator images in [0, 1] (N, H, W) for label masks (N, H, W); z ~ N(0, 1) if styled
    (:func:`cardigan_tf.inference.synthesize`)."""
    return _synthesize(generator, masks, seed=seed, batch_size=batch_size)


def generate_set(gan: str | Path, out: str | Path, masks: str = "real", per_mask: int = 1,
                 n: int | None = None, seed: int = 0, overwrite: bool = False, weights: str = "ema",
                 batch_size: int = 16, preview: bool = True, vae_epochs: int | None = None) -> Path:
    """Write a synthetic set in the seed layout; return its path (see the module docstring).

    ``n``: total images (default: every valid training mask x ``per_mask``); with ``real``
    masks and a mask-only generator it is capped at the number of valid masks (more would be
    identical copies). ``vae_epochs``: training epochs of the mask VAE (``sampled`` only).
    """
    out = Path(out)
    refuse_overwrite(out, overwrite, "synthetic dataset")
    if per_mask < 1 or (n is not None and n < 1):
        raise ValueError("--per-mask and --n must be >= 1")
    if masks not in MASK_SOURCES:
        raise ValueError(f"--masks {masks!r}: expected one of {MASK_SOURCES}")
    if weights not in KINDS["gan"].models:
        raise ValueError(f"weights {weights!r}: expected one of {list(KINDS['gan'].models)}")
    generator, run, step = load_gan_run(gan, weights)
    cfg = run.config
    styled = len(generator.inputs) > 1
    if per_mask > 1 and not styled and masks == "real":
        raise ValueError(f"{gan}: a mask-only generator is deterministic; --per-mask {per_mask} with real masks "
                         "would write identical copies (use --masks deformed or a style GAN)")
    arrays = gan_training_masks(run)
    data_splits = arrays.pop("_splits")
    if masks == "real" and not styled and n is not None and n > len(arrays["mask"]):
        log.warning("a mask-only generator is deterministic: %d images requested from %d real masks; "
                    "writing one image per mask", n, len(arrays["mask"]))
        n = len(arrays["mask"])
    records, stats = build_masks(arrays, masks, per_mask, n, seed, vae_epochs=vae_epochs)
    if not records:
        raise ValueError("no valid mask to synthesise from")
    provenance = {
        "gan_run": str(Path(gan).resolve()), "checkpoint_step": step, "weights": weights, "seed": seed,
        "mask_source": masks, "per_mask": per_mask, "n": len(records), "styled": styled,
        "rejected_masks": stats["rejected"], "rejected_by_rule": stats["by_rule"],
        "invalid_source_masks": stats["source_masks_invalid"], "source_data": str(arrays["source"][0]),
        "source_patients": sorted(set(arrays["patient"].tolist())),
        "source_data_fingerprint": (run.data or {}).get("fingerprint"),
        "source_held_out_patients": {k: v for k, v in data_splits.items() if k != "train"},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    attrs = {"kind": "synthetic", "source_layout": "synthetic", "size": int(cfg.model.size),
             "provenance": provenance, "split_method": "synthetic (train only)"}
    all_masks = np.stack([r["mask"] for r in records]).astype(np.uint8)
    images = np.zeros(all_masks.shape, np.float32)
    for start in tqdm(range(0, len(records), 256), desc="synthesising", unit="batch", disable=None):
        images[start:start + 256] = synthesize(generator, all_masks[start:start + 256], seed + start, batch_size)
    counts: Counter = Counter()
    with h5layout.H5Writer(out, attrs=attrs, overwrite=overwrite) as writer:
        for r, im in zip(records, images):
            key = f"{r['patient']}_x{counts[(r['patient'], r['view'], r['phase'])]:04d}"
            counts[(r["patient"], r["view"], r["phase"])] += 1
            grp_attrs = {"source_patient": r["patient"], "mask_source": masks}
            if "phase_assigned" in r:
                grp_attrs["phase_assigned"] = r["phase_assigned"]
            writer.write_view("train", f"{key}_{r['phase']}", r["view"], im[None], r["mask"][None],
                              phases=[r["phase"]], spacing=tuple(r["spacing"]) if r[SPACING_KNOWN] else None,
                              original_shape=tuple(r["original_shape"]), attrs=grp_attrs)
    if preview:
        k = min(8, len(records))
        cols = {"mask": list(all_masks[:k]), "synthetic": list(images[:k])}
        if "index" in records[0]:  # real / deformed: the real image of the (source) mask
            cols["real" if masks == "real" else "source image"] = [arrays["image"][r["index"]] for r in records[:k]]
        save_sample_grid(out.with_suffix(".png"), cols)
    log.info("wrote %d synthetic images to %s (%d masks rejected)", len(records), out, stats["rejected"])
    return out
