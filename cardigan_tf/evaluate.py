"""``python -m cardigan_tf.evaluate RUN_DIR [--data PATH] [--split test] [--postprocess]``

Metrics report of a segmentation run, CAMUS-style, written to ``RUN_DIR/eval-<split>/``
(refused if it exists, unless ``--overwrite``; the folder appears only when complete):

- ``per_image.csv``: patient, view, phase, quality, gt_source, and per structure (lv_endo,
  lv_epi, la) dice, hd (mm), mad (mm), missing;
- ``clinical.csv``: per patient EDV, ESV (ml), EF (%) from the predicted and the ground-truth
  masks (Simpson biplane), and the cfg values (LVedv, LVesv, LVef) where the data has them;
- ``summary.json``: everything below, machine-readable;
- ``report.md``: the CAMUS paper's table (structure x phase; Dice, HD, MAD mean +- SD), EF and
  volume agreement (correlation, bias +- SD, MAE), a breakdown by image quality;
- ``worst/``: overlays (image | truth | prediction) of the cases with the lowest LV endo Dice;
- ``bland_altman_ef.png``: EF from predicted vs ground-truth masks.

Resolution and spacing. The model predicts at the working size. When the data holds the
original-resolution ground truth (``gt_ref``), the prediction is resized back to it with
nearest neighbour and compared there with the original spacing (the CAMUS protocol). When it
does not, the working-size ground truth is used and the spacing is rescaled to the working grid:
``spacing_work = spacing_original * original_shape / working_shape`` per axis, i.e. the mm size
of one working pixel covering the same field of view. Distances in mm stay physically
meaningful, but both masks then carry the working grid's quantisation (up to one working pixel),
so HD/MAD are somewhat coarser than at the original resolution. ``gt_source`` in the CSV says
which was used. ``--postprocess`` keeps the largest component of each label and fills holes
(at the working size, before resizing).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

import cardigan_tf.runtime  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from cardigan_tf.labels import PHASES, STRUCTURES
from cardigan_tf.runs import atomic_path, open_run_dir, refuse_overwrite, write_json

STRUCT_TITLES = {"lv_endo": "LV endo", "lv_epi": "LV epi", "la": "LA"}
N_WORST = 6


def _load_model(run_dir: Path):
    import keras

    from cardigan_tf.models.unet import inference_model

    path = run_dir / "best.keras"
    if not path.is_file():
        path = run_dir / "final.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.keras or final.keras (has the run finished an epoch?)")
    return inference_model(keras.saving.load_model(path, compile=False))


def _data_path(run_dir: Path, cfg, data: str | None) -> Path:
    from cardigan_tf.jobs.seg import resolve_run_data

    if data is None:
        return resolve_run_data(cfg, run_dir)
    from cardigan_tf.data.source import resolve_data

    return Path(resolve_data(data, run_dir / "data", size=cfg.data.size, seed=cfg.data.seed))


def _predict(model, images: list[np.ndarray], size: int, batch_size: int) -> np.ndarray:
    x = np.stack(images).astype(np.float32)
    if x.shape[1:3] != (size, size):
        import tensorflow as tf

        x = tf.image.resize(x, (size, size), method="bilinear").numpy().clip(0, 1)
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(probs).argmax(-1).astype(np.uint8)


def _reference(sample, pred_small: np.ndarray):
    """(pred, gt, spacing, source) at the resolution where the metrics are computed."""
    from cardigan_tf.metrics.segmentation import resize_to_original

    ref = sample.meta.get("mask_ref")
    if ref is not None:
        return resize_to_original(pred_small, ref.shape), np.asarray(ref), tuple(sample.spacing), "ref"
    gt = np.asarray(sample.mask)
    pred = pred_small if pred_small.shape == gt.shape else resize_to_original(pred_small, gt.shape)
    oh, ow = sample.original_shape
    spacing = (sample.spacing[0] * oh / gt.shape[0], sample.spacing[1] * ow / gt.shape[1])
    return pred, gt, spacing, "working"


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat or not math.isfinite(stat.get("mean", float("nan"))):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _clinical(per_patient: dict) -> tuple[list[dict], dict]:
    from cardigan_tf.metrics.clinical import agreement, patient_indices

    rows = []
    for patient, d in sorted(per_patient.items()):
        if len(d["pred"]) < 4:
            continue
        p = patient_indices(d["pred"], d["spacing"])
        g = patient_indices(d["gt"], d["spacing"])
        row = {"patient": patient}
        for k in ("edv", "esv", "ef"):
            row[f"{k}_pred"], row[f"{k}_gt"] = p[k], g[k]
        for k, ck in (("edv", "LVedv"), ("esv", "LVesv"), ("ef", "LVef")):
            v = d["cfg"].get(ck)
            row[f"{k}_cfg"] = float(v) if isinstance(v, (int, float)) else float("nan")
        rows.append(row)
    agree = {}
    for ref in ("gt", "cfg"):
        for k in ("edv", "esv", "ef"):
            pred = [r[f"{k}_pred"] for r in rows]
            refs = [r[f"{k}_{ref}"] for r in rows]
            if any(math.isfinite(v) for v in refs):
                agree[f"{k}_vs_{ref}"] = agreement(pred, refs)
    return rows, agree


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    path.write_text(buf.getvalue())


def _markdown(run_dir: Path, split: str, summary: dict) -> str:
    by_phase, by_q = summary["by_phase"], summary["by_quality"]
    lines = [f"# Evaluation of `{run_dir.name}` on split `{split}`", "",
             f"{summary['n_images']} images, {summary['n_patients']} patients; data `{summary['data']}`; "
             f"ground truth at {summary['gt_resolution']} resolution; post-processing: {summary['postprocess']}.", "",
             "## Segmentation (mean ± SD)", "",
             "| structure | phase | Dice | HD (mm) | MAD (mm) |", "|---|---|---|---|---|"]
    for s in STRUCTURES:
        for ph in [*PHASES, "all"]:
            st = by_phase.get(ph, {}).get(s)
            if st is None:
                continue
            lines.append(f"| {STRUCT_TITLES[s]} | {ph} | {_fmt(st['dice'])} | {_fmt(st['hd'], 2)} | {_fmt(st['mad'], 2)} |")
    lines += ["", "## Clinical indices (Simpson biplane)", "",
              "| index | reference | corr | bias ± SD | MAE | n |", "|---|---|---|---|---|---|"]
    names = {"edv": "EDV (ml)", "esv": "ESV (ml)", "ef": "EF (%)"}
    for key, a in summary["clinical_agreement"].items():
        k, ref = key.split("_vs_")
        ref_name = "ground-truth masks" if ref == "gt" else "cfg values"
        lines.append(f"| {names[k]} | {ref_name} | {a['corr']:.3f} | {a['bias']:.2f} ± {a['sd']:.2f} | "
                     f"{a['mae']:.2f} | {a['n']} |")
    lines += ["", "## By image quality (mean ± SD)", "",
              "| quality | n images | LV endo Dice | LV epi Dice | LA Dice | LV endo HD (mm) |", "|---|---|---|---|---|---|"]
    for q, st in sorted(by_q.items()):
        if q == "all":
            continue
        lines.append(f"| {q or 'unknown'} | {st['lv_endo']['dice']['n'] + st['lv_endo']['dice']['nan']} | "
                     f"{_fmt(st['lv_endo']['dice'])} | {_fmt(st['lv_epi']['dice'])} | {_fmt(st['la']['dice'])} | "
                     f"{_fmt(st['lv_endo']['hd'], 2)} |")
    lines += ["", f"Worst cases by LV endo Dice: `worst/`. EF Bland-Altman: `bland_altman_ef.png`.", ""]
    return "\n".join(lines)


def evaluate_run(run_dir, data=None, split: str = "test", postprocess: bool = False, out=None,
                 overwrite: bool = False, batch_size: int = 16) -> dict:
    """Evaluate ``run_dir``'s best model on ``split``; write the report folder; return the summary."""
    from cardigan_tf import viz
    from cardigan_tf.config import load_config
    from cardigan_tf.data.h5layout import iter_samples
    from cardigan_tf.data.sample import EmptyDatasetError
    from cardigan_tf.jobs.seg import SegConfig
    from cardigan_tf.metrics import segmentation as seg
    from cardigan_tf.metrics.clinical import bland_altman_png

    run_dir = open_run_dir(run_dir, "seg")
    cfg = load_config(SegConfig, run_dir / "config.yaml")
    out_dir = Path(out) if out is not None else run_dir / f"eval-{split}"
    refuse_overwrite(out_dir, overwrite, "evaluation folder")
    data_path = _data_path(run_dir, cfg, data)
    model = _load_model(run_dir)
    samples = [s for _, s in iter_samples(data_path, [split], cfg.data.views, cfg.data.phases, with_ref=True)
               if s.mask is not None]
    if not samples:
        raise EmptyDatasetError(data_path, f"no labelled image in split {split!r} (views {cfg.data.views})")

    rows, cases, per_patient, sources = [], [], {}, set()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    chunks = range(0, len(samples), 64)
    for start in tqdm(chunks, desc="evaluate", unit="chunk", leave=False) if tqdm else chunks:
        chunk = samples[start:start + 64]
        preds = _predict(model, [s.image for s in chunk], cfg.model.size, batch_size)
        for s, p_small in zip(chunk, preds):
            if postprocess:
                p_small = seg.postprocess(p_small)
            pred, gt, spacing, source = _reference(s, p_small)
            sources.add(source)
            result = seg.evaluate_masks(pred, gt, spacing)
            rows.append(seg.flatten_result(result, patient=s.patient, view=s.view, phase=s.phase,
                                           quality=s.quality, gt_source=source))
            cases.append((result["lv_endo"]["dice"], s, p_small))
            d = per_patient.setdefault(s.patient, {"pred": {}, "gt": {}, "spacing": {}, "cfg": s.meta.get("cfg") or {}})
            d["pred"][(s.view, s.phase)] = (pred == 1)
            d["gt"][(s.view, s.phase)] = (gt == 1)
            d["spacing"][(s.view, s.phase)] = spacing

    clin_rows, agree = _clinical(per_patient)
    summary = {
        "run": str(run_dir), "split": split, "data": str(data_path), "postprocess": bool(postprocess),
        "gt_resolution": "/".join(sorted({"ref": "original", "working": "working"}[x] for x in sources)),
        "n_images": len(rows), "n_patients": len(per_patient),
        "by_phase": seg.summarize(rows, group_by=("phase",)),
        "by_view_phase": seg.summarize(rows, group_by=("view", "phase")),
        "by_quality": seg.summarize(rows, group_by=("quality",)),
        "clinical_agreement": agree, "clinical_patients": len(clin_rows),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _write_csv(tmp / "per_image.csv", rows)
        _write_csv(tmp / "clinical.csv", clin_rows)
        worst = sorted(cases, key=lambda c: (c[0] if math.isfinite(c[0]) else -1.0))[:N_WORST]
        (tmp / "worst").mkdir()
        for rank, (dsc, s, p_small) in enumerate(worst, 1):
            gt_small = s.mask if s.mask.shape == p_small.shape else seg.resize_to_original(s.mask, p_small.shape)
            img = s.image if s.image.shape[:2] == p_small.shape else seg.resize_to_original(s.image[..., 0], p_small.shape)
            k = max(1, 192 // p_small.shape[0])  # enlarge small working sizes for reading
            tiles = [viz.to_uint8_gray(img), viz.overlay(img, gt_small), viz.overlay(img, p_small)]
            grid = viz.make_grid([[t.repeat(k, 0).repeat(k, 1) for t in tiles]],
                                 col_titles=["image", "truth", f"pred {dsc:.2f}"])
            viz.save_png(tmp / "worst" / f"{rank:02d}_{s.patient}_{s.view}_{s.phase}.png", grid)
        if clin_rows:
            summary["bland_altman_ef"] = bland_altman_png([r["ef_pred"] for r in clin_rows],
                                                          [r["ef_gt"] for r in clin_rows],
                                                          tmp / "bland_altman_ef.png",
                                                          title="EF: predicted vs ground-truth masks", unit="%")
        write_json(tmp / "summary.json", summary)
        (tmp / "report.md").write_text(_markdown(run_dir, split, summary))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardigan_tf.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a seg run folder (runs/seg-...)")
    p.add_argument("--data", help="dataset to evaluate on (default: the run's own data)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--postprocess", action="store_true", help="largest component per label + hole filling")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval-<split>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--batch-size", type=int, default=16)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    evaluate_run(args.run_dir, args.data, args.split, args.postprocess, args.out, args.overwrite, args.batch_size)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"eval-{args.split}"
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
