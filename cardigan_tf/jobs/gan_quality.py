"""GAN quality report of a synthetic set (library; the command is ``python -m cardigan_tf.gan_quality``).

::

    python -m cardigan_tf.gan_quality --synthetic synth.h5 --seg runs/seg-tiny-... \
        [--inception-weights inception_v3_notop.h5] [--real DATA.h5] [--out DIR] [--overwrite]

Two measures, both at the segmentation run's working size:

- **Segmentation consistency** (SPADE's protocol, Park et al. 2019): the U-Net trained on real
  images (the seg run's ``best.keras``) segments the generated images; its Dice against the
  masks the images were generated from, per structure (LV endo, LV epi, LA), is shown beside
  the same U-Net's Dice on the real images of the ``split`` (default test) split. Synthetic
  Dice close to the real Dice = the generator draws the anatomy it was asked for.
- **FID and KID** between the real training images (those of the GAN's training patients when
  the synthetic set records them) and the generated images. Features come from InceptionV3
  when a local weights file is given (nothing is downloaded), otherwise from the encoder
  bottleneck of the same real-trained U-Net; the report names the feature network. As a scale,
  the same distances between the real training images and the real ``split`` images are given
  ("real vs real"): a generator cannot be expected to do better than that.

Output folder (atomic; refused if it exists unless ``overwrite``): ``quality.json``,
``quality.md`` and ``consistency.png`` (input mask | generated image | U-Net segmentation).
Default folder: ``<synthetic stem>-quality/`` next to the synthetic file.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cardigan_tf.data.h5layout import load_arrays, read_root_attrs
from cardigan_tf.data.source import resolve_data
from cardigan_tf.files import atomic_path, refuse_overwrite, write_json
from cardigan_tf.inference import Preprocessing, model_input, predict_probabilities
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics.synthesis import fid, kid, segmentation_consistency
from cardigan_tf.models.features import encoder_features, inception_features
from cardigan_tf.resize import resize_mask_np
from cardigan_tf.runs import open_run
from cardigan_tf.viz import save_sample_grid

log = logging.getLogger(__name__)


def _real_source(real_data, provenance: dict, seg_cfg, seg_dir: Path) -> Path:
    if real_data is not None:
        return Path(resolve_data(real_data, seg_dir / "data", size=seg_cfg.data.size, seed=seg_cfg.data.seed,
                                 n_phantom=seg_cfg.data.n_phantom, phantom=seg_cfg.data.phantom))
    src = provenance.get("source_data")
    if src and Path(src).is_file():
        return Path(src)
    return open_run(seg_dir, "seg").dataset()


def _arrays(path, split, pre, patients=None, views=None, phases=None) -> tuple[np.ndarray, np.ndarray]:
    """Images at the working size through the run's resize chain, and their masks (nearest)."""
    a = load_arrays(path, split, views=views, phases=phases, patients=patients)
    return model_input(a["image"], pre), resize_mask_np(a["mask"], pre.working_size).astype(np.uint8)


def _segment(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return predict_probabilities(model, images, batch_size).argmax(-1).astype(np.uint8)


def _nanmean_sd(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    f = v[np.isfinite(v)]
    return {"mean": float(f.mean()) if f.size else float("nan"),
            "sd": float(f.std(ddof=1)) if f.size > 1 else float("nan"), "n": int(f.size)}


def _distances(feat_real: np.ndarray, feat_other: np.ndarray, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n_real": len(feat_real), "n_other": len(feat_other), "dim": int(feat_real.shape[1])}
    try:
        out["fid"] = fid(feat_real, feat_other)
    except ValueError as exc:
        out["fid"], out["fid_note"] = float("nan"), str(exc)
    try:
        half = max(2, min(len(feat_real), len(feat_other)) // 2)  # subsets of half the smaller set: a real spread
        k = kid(feat_real, feat_other, subsets=50, subset_size=half, seed=seed)
        out["kid"], out["kid_std"], out["kid_subset_size"] = k["mean"], k["std"], k["subset_size"]
    except ValueError as exc:
        out["kid"], out["kid_std"], out["kid_note"] = float("nan"), float("nan"), str(exc)
    if min(len(feat_real), len(feat_other)) <= feat_real.shape[1]:
        out["note"] = (f"fewer images ({min(len(feat_real), len(feat_other))}) than feature dimensions "
                       f"({feat_real.shape[1]}): the covariances are singular and FID is only indicative")
    return out


def gan_quality_report(synthetic_h5: str | Path, seg_run: str | Path, real_data: str | Path | None = None,
                       out_dir: str | Path | None = None, inception_weights: str | Path | None = None,
                       split: str = "test", overwrite: bool = False, batch_size: int = 16, seed: int = 0) -> dict:
    """Write the quality report of ``synthetic_h5`` (see the module docstring); return its dict.

    Args:
        synthetic_h5: a synthetic set written by :func:`cardigan_tf.generate.generate_set`
            (any seed-layout file with images and masks in its ``train`` split works).
        seg_run: a seg run folder whose U-Net was trained on real images only.
        real_data: the real dataset (default: the synthetic set's ``source_data``, else the seg
            run's own data).
        out_dir: output folder (default ``<synthetic stem>-quality/`` beside the file).
        inception_weights: a local Keras InceptionV3 (include_top=False) weights file; None =
            features from the U-Net's encoder.
        split: real split scored beside the synthetic images (and the "real vs real" reference).
    Raises:
        OverwriteError: ``out_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: no model in ``seg_run``, or the Inception weights file is missing.
    """
    synthetic_h5 = Path(synthetic_h5)
    out_dir = Path(out_dir) if out_dir is not None else synthetic_h5.with_name(f"{synthetic_h5.stem}-quality")
    refuse_overwrite(out_dir, overwrite, "GAN quality report")
    if not synthetic_h5.is_file():
        raise FileNotFoundError(f"{synthetic_h5}: synthetic set not found (expected a seed-layout .h5)")
    attrs = read_root_attrs(synthetic_h5)
    provenance = attrs.get("provenance") if isinstance(attrs.get("provenance"), dict) else {}
    seg = open_run(seg_run, "seg")
    seg_cfg, seg_dir = seg.config, seg.path
    size = int(seg_cfg.model.size)
    real = _real_source(real_data, provenance, seg_cfg, seg_dir)
    views, phases = seg_cfg.data.views, seg_cfg.data.phases
    trained = seg.load(data=real)
    model, model_file, pre = trained.model, trained.path.name, trained.preprocessing
    syn_img, syn_msk = _arrays(synthetic_h5, "train", Preprocessing(size))  # generated at the working size
    patients = provenance.get("source_patients") or None
    train_img, _ = _arrays(real, "train", pre, patients=patients, views=views, phases=phases)
    test_img, test_msk = _arrays(real, split, pre, views=views, phases=phases)

    log.info("segmentation consistency: %d synthetic, %d real %s images", len(syn_img), len(test_img), split)
    syn_pred = _segment(model, syn_img, batch_size)
    cons_syn = segmentation_consistency(syn_pred, syn_msk, per_image=True)
    cons_real = segmentation_consistency(_segment(model, test_img, batch_size), test_msk, per_image=True)
    consistency = {s: {"synthetic": _nanmean_sd(cons_syn[s]), f"real_{split}": _nanmean_sd(cons_real[s])}
                   for s in STRUCTURES}

    if inception_weights:
        features = inception_features(inception_weights, batch_size=batch_size)
        network = "inceptionv3"
    else:
        features = encoder_features(model, batch_size=batch_size)
        network = "unet_encoder"
    log.info("features: %s", features.name)
    f_train, f_syn, f_test = features(train_img), features(syn_img), features(test_img)
    result = {
        "synthetic": str(synthetic_h5.resolve()), "seg_run": str(seg_dir.resolve()), "seg_model": model_file,
        "real_data": str(real), "split": split, "size": size, "provenance": provenance,
        "n_synthetic": len(syn_img), "n_real_train": len(train_img), f"n_real_{split}": len(test_img),
        "real_train_patients": "the GAN's training patients" if patients else "every train patient",
        "segmentation_consistency": consistency,
        "feature_network": network, "feature_network_name": features.name,
        "distances": {"synthetic_vs_real_train": _distances(f_train, f_syn, seed),
                      f"real_{split}_vs_real_train": _distances(f_train, f_test, seed)},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    k = min(6, len(syn_img))
    pred = syn_pred[:k]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_json(tmp / "quality.json", result)
        (tmp / "quality.md").write_text(quality_markdown(result))

        save_sample_grid(tmp / "consistency.png", {"input mask": list(syn_msk[:k]), "generated": list(syn_img[:k]),
                                                   "U-Net": list(pred)})
    result["out_dir"] = str(out_dir)
    return result


def _f(v: float, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _g(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _ms(d: dict, digits: int = 3) -> str:
    text = _f(d["mean"], digits)
    return text + (f" ± {d['sd']:.{digits}f}" if math.isfinite(d.get("sd", float("nan"))) else "")


def quality_markdown(r: dict) -> str:
    """quality.md of a :func:`gan_quality_report` result."""
    split = r["split"]
    prov = r.get("provenance") or {}
    c = r["segmentation_consistency"]
    d = r["distances"]
    lines = [
        f"# GAN quality: `{Path(r['synthetic']).name}`", "",
        f"- synthetic set: `{r['synthetic']}` ({r['n_synthetic']} images"
        + (f", GAN `{prov.get('gan_run')}`, step {prov.get('checkpoint_step')}, {prov.get('weights')} weights, "
           f"masks `{prov.get('mask_source')}`" if prov else "") + ")",
        f"- segmenter (trained on real images): `{r['seg_run']}/{r['seg_model']}`, working size {r['size']}x{r['size']}",
        f"- real data: `{r['real_data']}`; {r['n_real_train']} training images ({r['real_train_patients']}), "
        f"{r[f'n_real_{split}']} `{split}` images",
        "", "## Segmentation consistency (Dice, mean ± SD over images)", "",
        "The real-trained U-Net segments the generated images; Dice against the masks they were generated "
        f"from, beside the same U-Net on real `{split}` images.", "",
        f"| structure | generated images | real {split} images |", "|---|---|---|",
        *[f"| {STRUCTURE_TITLES[s]} | {_ms(c[s]['synthetic'])} | {_ms(c[s][f'real_{split}'])} |" for s in STRUCTURES],
        "", "## FID and KID", "",
        f"Feature network: **{r['feature_network_name']}**"
        + (" — not comparable with published Inception FIDs." if r["feature_network"] != "inceptionv3" else "."),
        "", "| compared with the real training images | FID | KID (x1000) |", "|---|---|---|",
    ]
    for key, label in (("synthetic_vs_real_train", "generated images"),
                       (f"real_{split}_vs_real_train", f"real {split} images (reference)")):
        x = d[key]
        kid_txt = _g(1000 * x["kid"]) + (f" ± {1000 * x['kid_std']:.3g}" if math.isfinite(x.get("kid_std", float("nan"))) else "")
        lines.append(f"| {label} | {_g(x['fid'])} | {kid_txt} |")
    lines += ["", "FID is biased upwards for small sets: compare it only between sets of similar size. KID is "
              "unbiased (and may be slightly negative when the sets are alike)."]
    notes = {x.get("note") for x in d.values() if x.get("note")}
    lines += ["", *[f"Note: {n}." for n in sorted(notes)], "", "`consistency.png`: input mask | generated image | "
              "U-Net segmentation of it.", ""]
    return "\n".join(lines)
