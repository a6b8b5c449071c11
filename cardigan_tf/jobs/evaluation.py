"""Evaluation of a segmentation run (library; the command is ``python -m cardigan_tf.evaluate``).

Metrics report of a segmentation run, CAMUS-style, written to ``RUN_DIR/eval-<split>/``
(refused if it exists, unless ``--overwrite``; the folder appears only when complete):

- ``per_image.csv``: patient, view, phase, quality, style (when the data records acquisition
  styles, as the phantom does), gt_source, distance_unit, and per structure (lv_endo, lv_epi,
  la) dice, hd, mad (in the row's ``distance_unit``), missing; then ``uncertainty``
  (``disagreement`` too when the prediction has several members), ``qc_flags``, one
  ``qc_<flag>`` column per anatomical check and ``gt_qc_flags`` (:mod:`cardigan_tf.jobs.evaluation_qc`);
- ``clinical.csv``: per patient EDV, ESV (``volume_unit``: ml; NaN and empty without a spacing),
  EF (%) from the predicted and the ground-truth masks (Simpson biplane), and the cfg values
  (LVedv, LVesv, LVef) where the data has them;
- ``summary.json``: everything below, machine-readable;
- ``report.md``: the CAMUS paper's table (structure x phase; Dice, HD, MAD mean +- SD), EF and
  volume agreement (correlation, bias +- SD, MAE), Dice, HD and MAD per structure by image
  quality (Good / Medium / Poor, with the images and patients of each; as the CAMUS paper
  reports them) and, when recorded, by acquisition style; how well the uncertainty ranks the
  failures (LV endo Dice < 0.90) and the anatomical-check counts;
- ``worst/``: overlays (image | truth | prediction) of the cases with the lowest LV endo Dice;
- ``bland_altman_ef.png``: EF from predicted vs ground-truth masks.

Resolution and spacing. Images reach the model through the run's resize chain
(:mod:`cardigan_tf.inference`, the same code as training and the exported models). The
predicted probabilities are resized (bilinear) to the reference grid and then turned into a
mask (argmax). When the data holds the original-resolution ground truth (``gt_ref``), that grid
is the original one, compared with the original spacing (the CAMUS protocol). When it
does not, the working-size ground truth is used and the spacing is rescaled to the working grid:
``spacing_work = spacing_original * original_shape / working_shape`` per axis, i.e. the mm size
of one working pixel covering the same field of view. Distances in mm stay physically
meaningful, but both masks then carry the working grid's quantisation (up to one working pixel),
so HD/MAD are somewhat coarser than at the original resolution. ``gt_source`` in the CSV says
which was used. A TFRecord folder holds the working-size frames only, so it is evaluated on that
grid. Data that records no spacing (CREATIS' HDF5, and the files and shards prepared from it:
``spacing_known`` False) is measured in pixels of the original grid (``px``, :mod:`cardigan_tf.units`)
unless ``--spacing`` gives one; a set where only some images record one is measured in px throughout. ``--postprocess`` keeps the largest component of each label and fills holes
(at the working size, before resizing).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cardigan_tf import viz
from cardigan_tf.config import ConfigError
from cardigan_tf.data.dataset_info import iter_dataset
from cardigan_tf.data.sample import EmptyDatasetError, spacing_known
from cardigan_tf.files import atomic_path, refuse_overwrite, write_json
from cardigan_tf.inference import combine_members, masks_from_probabilities, member_probabilities, model_input
from cardigan_tf.jobs.evaluation_qc import image_columns, qc_markdown, qc_summary
from cardigan_tf.labels import PHASES, QUALITIES, STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics import segmentation as seg
from cardigan_tf.metrics.clinical import SIMPSON_CONVENTIONS, agreement, patients_indices
from cardigan_tf.resize import resize_mask_np
from cardigan_tf.runs import RunError, load_ensemble, open_run
from cardigan_tf.units import DISTANCE_COLUMN, SPACING_KNOWN, UNKNOWN_SPACING, distance_unit, volume_unit

log = logging.getLogger(__name__)

N_WORST = 6


def reference_grid(sample):
    """(gt, spacing, source) of the grid where the metrics are computed."""
    ref = sample.meta.get("mask_ref")
    if ref is not None:
        return np.asarray(ref), tuple(sample.spacing), "ref"
    gt = np.asarray(sample.mask)
    oh, ow = sample.original_shape
    spacing = (sample.spacing[0] * oh / gt.shape[0], sample.spacing[1] * ow / gt.shape[1])
    return gt, spacing, "working"


class _Stages:
    """Wall time per evaluation stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - t0
        return now


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat or not math.isfinite(stat.get("mean", float("nan"))):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def _clinical(per_patient: dict, volumes: bool = True, simpson: str = "per_phase",
              progress: bool = True) -> tuple[list[dict], dict]:
    """EDV, ESV, EF per patient from the predicted and the ground-truth LV masks (Simpson
    biplane, ``simpson`` convention), with a reason whenever an index could not be measured,
    and their agreement with the ground-truth masks and the cfg values."""
    jobs = {}
    for patient, d in sorted(per_patient.items()):
        if len(d["pred"]) < 4:
            continue
        jobs[(patient, "pred")] = (d["pred"], d["spacing"])
        jobs[(patient, "gt")] = (d["gt"], d["spacing"])
    bar = None
    if progress and jobs:
        bar = tqdm(total=len(jobs), desc="clinical", unit="mask set", leave=False, disable=None)
    try:
        res = patients_indices(jobs, simpson=simpson,
                               progress=(lambda done, total, pid: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    rows = []
    for patient in sorted({p for p, _ in jobs}):
        p, g = res[(patient, "pred")], res[(patient, "gt")]
        d = per_patient[patient]
        row = {"patient": patient}
        for k in ("edv", "esv", "ef"):
            row[f"{k}_pred"], row[f"{k}_gt"] = p[k], g[k]
            if k != "ef" and not volumes:  # no spacing: a volume in pixels is no volume
                row[f"{k}_pred"] = row[f"{k}_gt"] = float("nan")
        for k, ck in (("edv", "LVedv"), ("esv", "LVesv"), ("ef", "LVef")):
            v = d["cfg"].get(ck)
            row[f"{k}_cfg"] = float(v) if isinstance(v, (int, float)) else float("nan")
        row["volume_unit"] = volume_unit(volumes) or ""
        row["simpson"] = p.get("simpson", simpson)
        row["reason_pred"], row["reason_gt"] = p.get("reason", ""), g.get("reason", "")
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
    u = summary[DISTANCE_COLUMN]
    lines = [f"# Evaluation of `{run_dir.name}` on split `{split}`", "",
             f"{summary['n_images']} images, {summary['n_patients']} patients; data `{summary['data']}`; "
             f"ground truth at {summary['gt_resolution']} resolution; post-processing: {summary['postprocess']}.", ""]
    if summary.get("ensemble"):
        views = ", ".join(summary["ensemble"]["tta"]) or "none"
        lines += [f"Model: the ensemble of {len(summary['ensemble']['members'])} U-Nets (mean softmax); "
                  f"test-time views besides the identity: {views}.", ""]
    lines += [f"**Warning:** {w}." for w in summary.get("warnings", [])]
    lines += ["", "## Segmentation (mean ± SD)", "",
              f"| structure | phase | Dice | HD ({u}) | MAD ({u}) |", "|---|---|---|---|---|"]
    for s in STRUCTURES:
        for ph in [*PHASES, "all"]:
            st = by_phase.get(ph, {}).get(s)
            if st is None:
                continue
            lines.append(f"| {STRUCTURE_TITLES[s]} | {ph} | {_fmt(st['dice'])} | {_fmt(st['hd'], 2)} | {_fmt(st['mad'], 2)} |")
    conv = {"per_phase": "per-phase long axis (clinical method of disks)",
            "camus": "one disk height for ED and ES (as the vital library / CAMUS code)"}.get(summary.get("simpson"), "")
    lines += ["", "## Clinical indices (Simpson biplane)", "",
              f"Convention: {conv}. Patients with an index not measured (reason in clinical.csv): "
              f"{summary.get('clinical_not_measured', 0)} of {summary.get('clinical_patients', 0)}.", "",
              "| index | reference | corr | bias ± SD | MAE | n |", "|---|---|---|---|---|---|"]
    names = {"edv": "EDV (ml)", "esv": "ESV (ml)", "ef": "EF (%)"}
    for key, a in summary["clinical_agreement"].items():
        k, ref = key.split("_vs_")
        if a.get("n", 0) == 0:
            continue
        ref_name = "ground-truth masks" if ref == "gt" else "cfg values"
        lines.append(f"| {names[k]} | {ref_name} | {a['corr']:.3f} | {a['bias']:.2f} ± {a['sd']:.2f} | "
                     f"{a['mae']:.2f} | {a['n']} |")
    lines += _breakdown("image quality", "quality", by_q, summary.get("patients_by_quality", {}), u)
    if summary.get("by_style"):
        lines += _breakdown("acquisition style", "style", summary["by_style"], summary.get("patients_by_style", {}), u)
    lines += [""] + qc_markdown(summary)
    lines += ["Worst cases by LV endo Dice: `worst/`. EF Bland-Altman: `bland_altman_ef.png`.", ""]
    if summary.get("timing_s"):
        lines += ["Time per stage: " + ", ".join(f"{k} {v:.2f} s" for k, v in summary["timing_s"].items()) + ".", ""]
    return "\n".join(lines)


def _group_order(groups) -> list[str]:
    """Quality levels in CAMUS' order (Good, Medium, Poor), then any other name, unknown ("") last."""
    rank = {q: i for i, q in enumerate(QUALITIES)}
    return sorted((g for g in groups if g != "all"), key=lambda g: (g == "", rank.get(g, len(rank)), g))


def _breakdown(title: str, key: str, groups: dict, patients: dict, unit: str) -> list[str]:
    """A report section: Dice, HD and MAD (mean ± SD) per structure for each group of images
    (one quality level or style), with the images and patients of each."""
    lines = ["", f"## By {title} (mean ± SD)", "",
             f"| {key} | images | patients | structure | Dice | HD ({unit}) | MAD ({unit}) |",
             "|---|---|---|---|---|---|---|"]
    for g in _group_order(groups):
        for s in STRUCTURES:
            st = groups[g].get(s)
            if st is None:
                continue
            n = st["dice"]["n"] + st["dice"]["nan"]
            lines.append(f"| {g or 'unknown'} | {n} | {patients.get(g, '?')} | {STRUCTURE_TITLES[s]} | "
                         f"{_fmt(st['dice'])} | {_fmt(st['hd'], 2)} | {_fmt(st['mad'], 2)} |")
    return lines


def _patients_by(rows: list[dict], key: str) -> dict[str, int]:
    """Distinct patients per value of ``key`` in the per-image rows."""
    found: dict[str, set] = {}
    for r in rows:
        found.setdefault(str(r.get(key, "")), set()).add(r["patient"])
    return {k: len(v) for k, v in found.items()}


def _spacing_override(spacing) -> tuple[float, float] | None:
    if spacing is None:
        return None

    try:
        row, col = (float(v) for v in (spacing.split(",") if isinstance(spacing, str) else spacing))
    except (TypeError, ValueError):
        raise ConfigError(f"--spacing: expected ROW,COL in mm (e.g. 0.31,0.15), got {spacing!r}") from None
    if not (row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col)):
        raise ConfigError(f"--spacing: expected positive ROW,COL in mm, got {spacing!r}")
    return row, col


def evaluate_run(run_dir, data=None, split: str = "test", postprocess: bool = False, out=None,
                 overwrite: bool = False, batch_size: int = 16, spacing=None, simpson: str = "per_phase",
                 which: str | None = None, tta: list[str] | None = None) -> dict:
    """Evaluate ``run_dir``'s model ``which`` (the kind's default: best) on ``split``; write the
    report folder; return the summary.

    ``run_dir``: a seg run, a cv run (its fold ensemble) or a list of them (one ensemble, its
    report in ``out``, which is then required); ``tta``: the ensemble's test-time views (default:
    a cv run's recorded ones; ``[]``: none), see ``cardigan_tf.runs.load_ensemble``.

    ``spacing``: (row, col) mm of the original images, for data that does not record it (the
    CREATIS HDF5). Without a known spacing, HD and MAD are in pixels of the original grid
    ("px"), volumes are not reported, and EF (a ratio) is reported with a warning.
    ``simpson``: "per_phase" (clinical method of disks: each phase with its own long axis) or
    "camus" (one disk height for ED and ES, as the vital library computes it).
    """
    if simpson not in SIMPSON_CONVENTIONS:
        raise ConfigError(f"--simpson: expected one of {list(SIMPSON_CONVENTIONS)}, got {simpson!r}")

    given_spacing = _spacing_override(spacing)
    stages = _Stages()
    t = time.perf_counter()
    sources = list(run_dir) if isinstance(run_dir, (list, tuple)) else [run_dir]
    run = open_run(sources[0])
    if run.kind not in ("seg", "cv"):
        raise RunError(f"{run.path}: expected a seg or cv run folder, found a {run.kind} run")
    if len(sources) > 1 and out is None:
        raise ConfigError("--out: an ensemble of several runs has no run folder of its own; give the report folder")
    run_dir, cfg = run.path, run.config
    out_dir = Path(out) if out is not None else run_dir / f"eval-{split}"
    refuse_overwrite(out_dir, overwrite, "evaluation folder")
    data_path = run.dataset(data)
    single = len(sources) == 1 and tta is None
    trained = run.load(which, data=data_path) if single else load_ensemble(sources, which, data=data_path, tta=tta)
    model, model_path, pre = trained.model, trained.path, trained.preprocessing
    samples = [s for _, s in iter_dataset(data_path, [split], cfg.data.views, cfg.data.phases, with_ref=True)
               if s.mask is not None]
    if not samples:
        raise EmptyDatasetError(data_path, f"no labelled image in split {split!r} (views {cfg.data.views})")
    n_known = sum(spacing_known(s) for s in samples)
    known = given_spacing is not None or n_known == len(samples)
    unit = distance_unit(known)
    for s in samples:
        if given_spacing is not None:
            s.spacing = given_spacing
        elif not known:  # one unit for the whole report: pixels of the original grid
            s.spacing = UNKNOWN_SPACING
    with_style = any(s.meta.get("style") for s in samples)
    t = stages.add("load", t)

    rows, cases, per_patient, sources = [], [], {}, set()
    chunks = range(0, len(samples), 64)
    for start in tqdm(chunks, desc="evaluate", unit="chunk", leave=False):
        chunk = samples[start:start + 64]
        t = time.perf_counter()
        x = model_input([s.image for s in chunk], pre)
        members = member_probabilities(model, x, batch_size)  # [M, N, s, s, C]; M = 1 for one U-Net
        probs, scores = combine_members(members)
        t = stages.add("predict", t)
        refs = [reference_grid(s) for s in chunk]
        preds = masks_from_probabilities(probs, [r[0].shape for r in refs])
        smalls = [p.argmax(-1).astype(np.uint8) for p in probs]
        t = stages.add("resize", t)
        for i, (s, pred, (gt, sp, source), xs, p_small) in enumerate(zip(chunk, preds, refs, x, smalls)):
            if postprocess:
                pred = seg.postprocess(pred)
            sources.add(source)
            result = seg.evaluate_masks(pred, gt, sp)
            styled = {"style": str(s.meta.get("style") or "")} if with_style else {}
            rows.append(seg.flatten_result(result, patient=s.patient, view=s.view, phase=s.phase,
                                           quality=s.quality, **styled, gt_source=source, distance_unit=unit))
            rows[-1].update(image_columns(pred, gt, sp, {k: v[i] for k, v in scores.items()}))
            cases.append((result["lv_endo"]["dice"], s, xs[..., 0], p_small))
            d = per_patient.setdefault(s.patient, {"pred": {}, "gt": {}, "spacing": {}, "cfg": s.meta.get("cfg") or {}})
            d["pred"][(s.view, s.phase)] = (pred == 1)
            d["gt"][(s.view, s.phase)] = (gt == 1)
            d["spacing"][(s.view, s.phase)] = sp
        t = stages.add("metrics", t)

    t = time.perf_counter()
    clin_rows, agree = _clinical(per_patient, volumes=known, simpson=simpson)
    t = stages.add("clinical", t)
    units = {"dice": "fraction", "hd": unit, "mad": unit, "edv": volume_unit(known), "esv": volume_unit(known),
             "ef": "%"}
    warnings_ = []
    if not known:
        which = "the data records no pixel spacing" if n_known == 0 else (
            f"only {n_known} of {len(samples)} images record a pixel spacing")
        warnings_.append(f"{which}: HD and MAD are in pixels of the original grid (px), "
                         "volumes are not reported, and EF is distorted where pixels are not square; "
                         "give --spacing ROW,COL (mm) to report mm and ml")
        log.warning(warnings_[-1])
    summary = {
        "run": str(run_dir), "model": model_path.name, "split": split, "data": str(data_path),
        "postprocess": bool(postprocess), "preprocessing": pre.to_dict(),
        "ensemble": {"members": [str(p) for p in trained.members], "tta": trained.tta} if trained.members else None,
        "gt_resolution": "/".join(sorted({"ref": "original", "working": "working"}[x] for x in sources)),
        SPACING_KNOWN: known, "spacing_given": given_spacing, DISTANCE_COLUMN: unit, "units": units,
        "warnings": warnings_,
        "n_images": len(rows), "n_patients": len(per_patient),
        "by_phase": seg.summarize(rows, group_by=("phase",)),
        "by_view_phase": seg.summarize(rows, group_by=("view", "phase")),
        "by_quality": seg.summarize(rows, group_by=("quality",)),
        "patients_by_quality": _patients_by(rows, "quality"),
        **({"by_style": seg.summarize(rows, group_by=("style",)), "patients_by_style": _patients_by(rows, "style")}
           if with_style else {}),
        "clinical_agreement": agree, "clinical_patients": len(clin_rows), "simpson": simpson,
        "clinical_not_measured": sum(1 for r in clin_rows if r["reason_pred"] or r["reason_gt"]),
        **qc_summary(rows, members=len(members)),
    }
    t = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        _write_csv(tmp / "per_image.csv", rows)
        _write_csv(tmp / "clinical.csv", clin_rows)
        worst = sorted(cases, key=lambda c: (c[0] if math.isfinite(c[0]) else -1.0))[:N_WORST]
        (tmp / "worst").mkdir()
        for rank, (dsc, s, img, p_small) in enumerate(worst, 1):
            gt_small = resize_mask_np(s.mask, p_small.shape)
            k = max(1, 192 // p_small.shape[0])  # enlarge small working sizes for reading
            tiles = [viz.to_uint8_gray(img), viz.overlay(img, gt_small), viz.overlay(img, p_small)]
            grid = viz.make_grid([[t_.repeat(k, 0).repeat(k, 1) for t_ in tiles]],
                                 col_titles=["image", "truth", f"pred {dsc:.2f}"])
            viz.save_png(tmp / "worst" / f"{rank:02d}_{s.patient}_{s.view}_{s.phase}.png", grid)
        if clin_rows:
            summary["bland_altman_ef"] = viz.bland_altman_png([r["ef_pred"] for r in clin_rows],
                                                              [r["ef_gt"] for r in clin_rows],
                                                              tmp / "bland_altman_ef.png",
                                                              title="EF: predicted vs ground-truth masks", unit="%")
        stages.add("figures", t)
        summary["timing_s"] = {k: round(v, 3) for k, v in stages.seconds.items()}
        write_json(tmp / "summary.json", summary)
        (tmp / "report.md").write_text(_markdown(run_dir, split, summary))
    log.info("evaluation of %s on %s: %s", run_dir.name, split,
             ", ".join(f"{k} {v:.1f} s" for k, v in summary["timing_s"].items()))
    return summary
