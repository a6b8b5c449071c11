"""Cross-validation of the U-Net (library; the command is ``python -m cardigan_tf.train seg --folds K``).

K U-Nets on patient-level folds of the non-test patients: the ``train`` and ``valid`` splits
pooled and cut into K folds (the prepared file's official lists, or seeded:
:class:`~cardigan_tf.configs.cv.CvConfig`); fold k validates on its patients (best epoch, early
stopping) and trains on the other folds. The ``test`` split is never read: no choice sees it.

One CV run folder::

    runs/cv-<name>-<UTC>/
        config.yaml      kind: cv (a SegConfig plus folds, fold_source, tta)
        provenance.json, data.json, data/   as every run (the folds read this dataset)
        folds.json       the folds: source (official or seeded) and why, each fold's validation
                         and training patients; the test patients, which no fold holds
        folds/fold-k/    fold k: an ordinary seg run, started through plan_run (resumable)
        summary.csv      per fold and structure: validation Dice, HD, MAD (mean and SD over the
                         fold's validation images, at the original resolution as evaluate does)
        summary.md, metrics.json

Resume (``--resume CV_DIR``) continues fold by fold: finished folds are kept as they are, an
interrupted fold resumes exactly (its own checkpoints), missing folds are trained; the fold
assignment is the recorded ``folds.json``. The ensemble of the folds is ``Run.load()`` of the
CV run (``cardigan_tf.runs.load_ensemble``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from cardigan_tf.config import ConfigError
from cardigan_tf.configs.cv import CvConfig
from cardigan_tf.data.h5layout import iter_samples, list_patients, read_root_attrs
from cardigan_tf.data.source import check_data
from cardigan_tf.data.splits import kfold_split, official_kfolds
from cardigan_tf.data.tfrecord import INDEX
from cardigan_tf.files import atomic_write_text, write_json
from cardigan_tf.inference import masks_from_probabilities, model_input, predict_probabilities
from cardigan_tf.jobs.evaluation import reference_grid
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics import segmentation as seg
from cardigan_tf.run_data import run_dataset
from cardigan_tf.run_plan import plan_run
from cardigan_tf.runs import RunError, open_run

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"
SUMMARY_FIELDS = ["fold", "structure", "n_patients", "n_images", "dice_mean", "dice_sd", "hd_mean", "hd_sd",
                  "mad_mean", "mad_sd", "unit"]


# ----------------------------------------------------------------------------- folds
def pool_patients(data_path) -> tuple[list[str], list[str]]:
    """(pooled train + valid patients, test patients) of a prepared .h5."""
    lists = list_patients(data_path)
    pool = sorted(set(lists.get("train", [])) | set(lists.get("valid", [])))
    return pool, sorted(lists.get("test", []))


def recorded_official_folds(data_path) -> dict[str, list[str]]:
    """The ``official_folds`` a prepared .h5 records (``data.prepare``), or {}."""
    folds = read_root_attrs(data_path).get("official_folds")
    return folds if isinstance(folds, dict) else {}


def assign_folds(cfg: CvConfig, data_path) -> dict:
    """The folds of ``cfg`` over the pooled train + valid patients of ``data_path`` (what
    ``folds.json`` holds): ``source``, ``reason``, ``folds`` [{"valid": [...], "train": [...]}],
    ``pool``, ``test``. ConfigError when ``fold_source`` is ``official`` and the lists do not
    make ``folds`` folds of the pool (the message says why)."""
    pool, test = pool_patients(data_path)
    k = int(cfg.folds)
    if len(pool) < k:
        raise ConfigError(f"folds: {k} folds need at least {k} patients outside the test split; {data_path} has "
                          f"{len(pool)}")
    lists = recorded_official_folds(data_path)
    source, reason, folds = "seeded", "", None
    if cfg.fold_source != "seeded":
        try:
            if not lists:
                raise ValueError(f"{data_path} records no official fold lists (prepare records CAMUS 2019's "
                                 "listSubGroups as official_folds)")
            folds = official_kfolds(lists, pool, k)
            source, reason = "official", f"official lists {sorted(lists, key=int)} grouped into {k} folds"
        except ValueError as exc:
            if cfg.fold_source == "official":
                raise ConfigError(f"fold_source official: {exc}") from None
            reason = f"official lists not used: {exc}"
    if folds is None:
        folds = kfold_split(pool, k, seed=int(cfg.data.seed))
        reason = (reason + "; " if reason else "") + f"seeded with data.seed {cfg.data.seed}"
    return {"source": source, "reason": reason, "k": k, "pool": pool, "test": test,
            "folds": [{"valid": f, "train": sorted(set(pool) - set(f))} for f in folds]}


def _folds_record(path: Path, cfg: CvConfig, data_path) -> dict:
    """The run's recorded folds (written on its first start, reused on every resume)."""
    f = path / FOLDS_FILE
    if f.is_file():
        record = json.loads(f.read_text())
        if record.get("k") != int(cfg.folds):
            raise RunError(f"{f}: records {record.get('k')} folds, the config asks for {cfg.folds}")
        return record
    record = assign_folds(cfg, data_path)
    write_json(f, record)
    return record


# ----------------------------------------------------------------------------- training
def check_inputs(cfg: CvConfig) -> None:
    """What can be checked before a folder exists: the config and the data."""
    cfg.validate()
    if cfg.train.strategy == "multiworker":
        raise ConfigError("train.strategy: a cv run trains its folds one after the other in one process; "
                          "multiworker is for single seg runs")
    check_data(cfg.data.data, "data.data")
    if cfg.data.data and (Path(cfg.data.data) / INDEX).is_file():
        raise ConfigError(f"data.data: {cfg.data.data} is a TFRecord folder; a cv run reads a seed-layout .h5 or a "
                          "CAMUS folder (its folds are validated at the original resolution, which shards do not keep)")


def train_cv(cfg: CvConfig | None, run_dir: str | Path | None = None, resume: str | Path | None = None,
             runs_dir: str | Path = "runs", name: str | None = None, callbacks: list | None = None) -> Path:
    """Train (or resume) the cross-validation run of ``cfg``; return its folder (see the module
    docstring). ``run_dir`` / ``resume`` / ``runs_dir`` as for :func:`cardigan_tf.jobs.seg.train_seg`."""
    plan = plan_run("cv", cfg, resume=resume, run_dir=run_dir)
    if plan.status == "finished":
        return plan.path
    cfg = plan.config
    check_inputs(cfg)
    path = Path(plan.open(runs_dir=runs_dir, name=name or cfg.name))
    data_path = run_dataset(path, cfg.data.data, cfg.data.size, cfg.data.seed, cfg.data.n_phantom, cfg.data.phantom)
    record = _folds_record(path, cfg, data_path)
    for k, fold in enumerate(record["folds"]):
        fold_dir = path / "folds" / f"fold-{k}"
        fold_cfg = cfg.fold_config(k, fold["train"], fold["valid"], str(data_path))
        log.info("cv %s: fold %d of %d (%d validation patients)", path.name, k, len(record["folds"]),
                 len(fold["valid"]))
        train_seg(fold_cfg, run_dir=fold_dir, callbacks=callbacks)
    return _finish(path, cfg, record, data_path)


# ----------------------------------------------------------------------------- summary
def validate_fold(fold_dir: Path, data_path, patients: list[str], views, phases) -> tuple[list[dict], str]:
    """Per-image rows (:func:`cardigan_tf.metrics.segmentation.flatten_result`) of the fold's
    best model on its validation ``patients`` at the reference resolution, and the distance unit."""
    trained = open_run(fold_dir, "seg").load(data=data_path)
    wanted = set(patients)
    samples = [s for _, s in iter_samples(data_path, ["train", "valid"], views, phases, with_ref=True)
               if s.patient in wanted and s.mask is not None]
    rows, known = [], all(s.meta.get("spacing_known", True) for s in samples)
    for a in range(0, len(samples), 64):
        chunk = samples[a:a + 64]
        probs = predict_probabilities(trained.model, model_input([s.image for s in chunk], trained.preprocessing))
        refs = [reference_grid(s) for s in chunk]
        for s, pred, (gt, spacing, _) in zip(chunk, masks_from_probabilities(probs, [r[0].shape for r in refs]), refs):
            rows.append(seg.flatten_result(seg.evaluate_masks(pred, gt, spacing), patient=s.patient, view=s.view,
                                           phase=s.phase))
    return rows, "mm" if known else "px"


def _finish(path: Path, cfg: CvConfig, record: dict, data_path) -> Path:
    table, per_fold = [], {}
    for k, fold in enumerate(record["folds"]):
        rows, unit = validate_fold(path / "folds" / f"fold-{k}", data_path, fold["valid"], cfg.data.views,
                                   cfg.data.phases)
        stats = seg.summarize(rows, group_by=()).get("all", {})
        per_fold[k] = {s: {m: stats.get(s, {}).get(m, {}).get("mean", float("nan")) for m in ("dice", "hd", "mad")}
                       for s in STRUCTURES}
        for s in STRUCTURES:
            st = stats.get(s, {})
            table.append({"fold": k, "structure": s, "n_patients": len(fold["valid"]), "n_images": len(rows),
                          **{f"{m}_{q}": st.get(m, {}).get(q, float("nan")) for m in ("dice", "hd", "mad")
                             for q in ("mean", "sd")}, "unit": unit})
    over = {s: {m: _mean([per_fold[k][s][m] for k in per_fold]) for m in ("dice", "hd", "mad")} for s in STRUCTURES}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path / "summary.csv", buf.getvalue())
    atomic_write_text(path / "summary.md", _markdown(path, cfg, record, per_fold, over, unit))
    write_json(path / "metrics.json", {"folds": int(cfg.folds), "fold_source": record["source"],
                                       "validation": {str(k): v for k, v in per_fold.items()},
                                       "validation_mean_over_folds": over, "distance_unit": unit,
                                       "tta": list(cfg.tta), "data": str(data_path)})
    return path


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _markdown(path: Path, cfg: CvConfig, record: dict, per_fold: dict, over: dict, unit: str) -> str:
    def cell(d):
        return " | ".join("n/a" if not math.isfinite(d[m]) else f"{d[m]:.{3 if m == 'dice' else 2}f}"
                          for m in ("dice", "hd", "mad"))

    lines = [f"# Cross-validation run `{path.name}`", "",
             f"- {cfg.folds} folds, {record['source']} ({record['reason']}); {len(record['pool'])} patients "
             f"(train and valid pooled); the {len(record['test'])} test patients are in no fold",
             f"- each fold: U-Net size {cfg.model.size}, depth {cfg.model.depth}, base {cfg.model.base_filters}, "
             f"{cfg.train.epochs} epochs; test-time views of the ensemble: {', '.join(cfg.tta) or 'none'}", "",
             f"Validation of each fold's best model on its own patients (mean over images; HD and MAD in {unit}):", "",
             "| fold | structure | Dice | HD | MAD |", "|---|---|---|---|---|"]
    for k in per_fold:
        lines += [f"| {k} | {STRUCTURE_TITLES[s]} | {cell(per_fold[k][s])} |" for s in STRUCTURES]
    lines += [f"| mean of folds | {STRUCTURE_TITLES[s]} | {cell(over[s])} |" for s in STRUCTURES]
    lines += ["", f"Evaluate the fold ensemble on the test patients: `python -m cardigan_tf.evaluate {path}`", ""]
    return "\n".join(lines)
