"""The synthetic-data study (library; the command is ``python -m cardigan_tf.train study``).

For every training-set fraction x synthetic fraction x seed:

1. the training patients are a seeded subset of the train split (validation and test patients
   never reach the GAN, the generated set or the U-Net's training data);
2. a GAN is trained on that subset only (seeded with the cell's seed), and a synthetic set is
   generated from the subset's masks; it serves the synthetic fractions > 0 of its (training
   fraction, seed). Each seed trains its own GAN, so the seed-to-seed variance includes the
   GAN's; with ``shared_gan: true`` seeds whose subsets are equal share one (see
   :func:`gan_seeds`), and the report says so. No GAN ever serves a cell with fewer or other
   patients than it was trained on;
3. a U-Net is trained on the subset, with the cell's synthetic fraction of synthetic images in
   its stream, in each arm of ``exposures`` (:data:`cardigan_tf.configs.seg.EXPOSURES`):
   ``add`` sees as many real samples as the cell without synthetic data (more steps),
   ``replace`` as many steps (fewer real samples); each cell records the real and synthetic
   samples it saw;
4. the U-Net is evaluated on the fixed test split (Dice, HD, MAD in mm, EF).

Output in ``runs/study-<name>-<UTC>/``: ``results.csv`` / ``results.md`` (mean and SD per cell
over seeds), ``cells.csv`` (one row per trained U-Net), ``primary.csv`` (the config's primary
endpoint per (training fraction, synthetic fraction) contrast; see study_primary), ``wilcoxon.csv``
(secondary, exploratory: synthetic fraction 0 vs each other fraction, per test patient: mean Dice/HD/MAD difference with a bootstrap interval, each
seed's difference, signed-rank p-values Holm-corrected; see study_report), ``dice_vs_synthetic.png``,
``report.md``; ``gans/<gan>/quality/`` (GAN quality report: segmentation consistency with the
same (training fraction, seed) U-Net trained without synthetic images, FID/KID; see
cardigan_tf.gan_quality). Resumable: ``--resume STUDY_DIR`` skips finished cells, GANs,
synthetic sets and quality reports.

Several processes (or machines sharing the folder) can work on one study: each GAN (training
fraction, seed) and each cell is claimed atomically before it is worked on
(:mod:`cardigan_tf.jobs.study_claims`: ``claims/<unit>.claim``, created with O_CREAT|O_EXCL,
holding host, pid and time; removed when the unit is done). A claim of a dead process on the same host is taken over; a claim of another
host is honoured (delete the file by hand if that host died). A process that needs a GAN another
process is training takes other cells first, then waits for it (bounded by ``wait_s``).
Whichever process finds every cell finished writes the quality reports and the report;
``report_only`` writes the report of the cells finished so far. ``claims/work.log`` records
who worked on what (one JSON line per unit). Join a study with
``python -m cardigan_tf.train study --resume STUDY_DIR --worker``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cardigan_tf.config import ConfigError
from cardigan_tf.configs.gan import GanConfig
from cardigan_tf.configs.study import StudyConfig
from cardigan_tf.data.h5layout import list_patients
from cardigan_tf.data.source import check_data, resolve_data
from cardigan_tf.data.splits import subset_patients
from cardigan_tf.files import atomic_write_text, write_json
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.gan import train_gan
from cardigan_tf.jobs.gan_quality import gan_quality_report
from cardigan_tf.jobs.gan_selection import select_checkpoint
from cardigan_tf.jobs.generation import generate_set
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.jobs import study_layout as layout
from cardigan_tf.jobs.study_claims import claim, claims_dir, data_lock, release, work_log
from cardigan_tf.jobs.study_report import write_study_report
from cardigan_tf.labels import PHASES, STRUCTURES, VIEWS
from cardigan_tf.metrics.segmentation import METRICS
from cardigan_tf.run_plan import plan_run
from cardigan_tf.runs import create_run, is_finished, open_run

log = logging.getLogger(__name__)


class _Eta:
    """Estimated time left per stage (GANs with their synthetic sets; U-Net cells with their
    evaluation) from the mean duration of the units this process has finished."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {"gan": [], "cell": []}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage].append(seconds)

    def report(self, root: Path, cells, gan_seed) -> None:
        left = {"gan": sum(1 for f, seed in needed_gans(cells, gan_seed) if not layout.gan_ready(root, f, seed)),
                "cell": sum(1 for c in cells if not layout.cell_done(layout.cell_dir(root, c)))}
        parts, total, known = [], 0.0, True
        for stage, name in (("gan", "GANs"), ("cell", "U-Net cells")):
            done = self.seconds[stage]
            if not left[stage]:
                continue
            if done:
                mean = sum(done) / len(done)
                total += mean * left[stage]
                parts.append(f"{left[stage]} {name} x ~{mean / 60:.1f} min")
            else:
                known = False
                parts.append(f"{left[stage]} {name} (no estimate yet)")
        if parts:
            log.info("remaining: %s -> about %.0f min%s", ", ".join(parts), total / 60,
                     "" if known else " + the stages not yet timed")


def gan_seeds(root: Path, cfg: "StudyConfig", train_patients: list[str]) -> dict[tuple[float, int], int]:
    """(training fraction, seed) -> the seed whose GAN serves it: its own, or with
    ``cfg.shared_gan`` the first seed of ``cfg.seeds`` with exactly the same training patients
    (every seed at a fraction of 1 then shares one GAN). A finished GAN of the cell's own seed
    keeps serving its cells."""
    out = {}
    for frac in cfg.train_fractions:
        first: dict[tuple[str, ...], int] = {}
        for seed in cfg.seeds:
            key = tuple(subset_patients(train_patients, frac, seed=seed))
            canonical = first.setdefault(key, seed) if cfg.shared_gan else seed
            out[frac, seed] = seed if layout.gan_ready(root, frac, seed) else canonical
    return out


def _gan_config(cfg: "StudyConfig", data: Path, patients: list[str], seed: int) -> GanConfig:
    """The GAN config of one (training fraction, seed): only ``patients`` of the train split."""
    gcfg = copy.deepcopy(cfg.gan)
    gcfg.train.seed = seed
    gcfg.data.data = str(data)
    gcfg.data.seed = cfg.data_seed
    gcfg.data.n_phantom = cfg.n_phantom
    gcfg.data.phantom = cfg.phantom
    gcfg.data.train_patients = sorted(patients)
    return gcfg


def gan_train_patients(gan_dir: Path) -> list[str]:
    """The train-split patients a study GAN was trained on (from its config.yaml)."""
    gcfg = open_run(gan_dir, "gan").config
    train = list_patients(gcfg.data.data).get("train", [])
    listed = gcfg.data.train_patients
    return sorted(set(listed) & set(train)) if listed is not None else train


def _cell_result(cell_dir: Path, split: str) -> dict[str, Any]:
    """Per-cell means from the evaluation's per-image CSV (NaN ignored) + EF MAE."""
    eval_dir = cell_dir / f"eval-{split}"
    with open(eval_dir / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((eval_dir / "summary.json").read_text())
    out: dict[str, Any] = {"n_images": len(rows)}
    for s in STRUCTURES:
        for m in METRICS:
            vals = np.array([float(r[f"{s}_{m}"]) for r in rows], float)
            out[f"{s}_{m}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    ef = summary.get("clinical_agreement", {}).get("ef_vs_gt", {})
    out["ef_mae"] = float(ef.get("mae", float("nan")))
    out["per_image_dice"] = {f"{r['patient']}/{r['view']}/{r['phase']}": {s: float(r[f"{s}_dice"]) for s in STRUCTURES}
                             for r in rows}
    return out


def progress(root: Path, cfg: StudyConfig) -> tuple[int, int, int]:
    """(cells finished, cells in all, GANs finished) of the study in ``root``."""
    cells = layout.study_cells(cfg)
    gans = sum(1 for d in (root / "gans").glob("gan-*") if is_finished(d, "gan"))
    return sum(1 for c in cells if layout.cell_done(layout.cell_dir(root, c))), len(cells), gans


def needed_gans(cells, gan_seed: dict[tuple[float, int], int]) -> set[tuple[float, int]]:
    """The (training fraction, GAN seed) pairs that the cells with synthetic data need."""
    return {(c.frac, gan_seed[c.frac, c.seed]) for c in cells if c.synth > 0}


def create_study(cfg: StudyConfig, runs_dir: str | Path = "runs", study_dir: str | Path | None = None) -> Path:
    """Check ``cfg`` and its data, and create the study folder (config.yaml, provenance.json);
    nothing is trained. :func:`run_study` with ``resume=`` the folder (in one or several
    processes) does the work."""
    cfg.validate()
    check_data(cfg.data, "data")
    root = create_run("study", cfg, runs_dir=runs_dir, run_dir=study_dir, name=cfg.name)
    for sub in ("checkpoints", "tensorboard", "samples"):  # a study has no use for them
        if (root / sub).is_dir() and not any((root / sub).iterdir()):
            (root / sub).rmdir()
    return root


def run_study(cfg: StudyConfig | None, resume: str | Path | None = None, runs_dir: str | Path = "runs",
              study_dir: str | Path | None = None, report_only: bool = False, wait_s: float = 6 * 3600,
              poll_s: float = 5.0) -> Path:
    """Run (or resume, or join) the study; return its folder.

    Several processes may run this on one study folder at once (``resume=STUDY_DIR``): units
    are claimed (see the module docstring). ``report_only``: only write the report of the cells
    finished so far. ``wait_s``: how long to wait for units other processes hold before
    giving up (RuntimeError naming them)."""
    if resume is None:
        if cfg is None:
            raise ValueError("run_study: give a config or resume=STUDY_DIR")
        resume = create_study(cfg, runs_dir=runs_dir, study_dir=study_dir)
    elif cfg is not None:
        plan_run("study", cfg, resume=resume)  # a resumed study keeps its design: a changed value is refused
    run = open_run(resume, "study")
    root, cfg = run.path, run.config
    for sub in ("gans", "synthetic", "cells"):
        (root / sub).mkdir(exist_ok=True)

    with data_lock(root):
        data = resolve_data(cfg.data, root / "data", size=cfg.seg.model.size, seed=cfg.data_seed,
                            n_phantom=cfg.n_phantom, phantom=cfg.phantom)
    train_patients = list_patients(data).get("train", [])
    if not train_patients:
        raise ConfigError(f"{data}: no patient in the train split")
    cells = layout.study_cells(cfg)
    gan_seed = gan_seeds(root, cfg, train_patients)
    if report_only:
        return write_study_report(root, cfg)
    n_gans = len(needed_gans(cells, gan_seed))
    log.info("study %s: %d cells, %d GANs on %s (%d training patients)", root.name, len(cells), n_gans, data,
             len(train_patients))
    t0 = time.time()
    selecting = cfg.gan_checkpoint == "selected"
    waited_since = None
    eta = _Eta()
    while True:
        pending = [c for c in cells if not layout.cell_done(layout.cell_dir(root, c))]
        if not pending:
            break
        # cells whose GAN is still missing first: with several processes, the GANs (the long
        # units) start at once on different processes instead of one after another
        pending.sort(key=lambda c: not (c.synth > 0
                                        and not layout.gan_ready(root, c.frac, gan_seed[c.frac, c.seed])))
        progressed = False
        for cell in pending:
            frac, synth, seed = cell.frac, cell.synth, cell.seed
            if layout.cell_done(layout.cell_dir(root, cell)):
                continue
            patients = subset_patients(train_patients, frac, seed=seed)
            gseed = gan_seed[frac, seed]
            if synth > 0 and not layout.gan_ready(root, frac, gseed):
                if not claim(root, layout.gan_unit(frac, gseed)):
                    continue  # another process trains this GAN: take another cell first
                try:
                    if not layout.gan_ready(root, frac, gseed):
                        t_gan = time.time()
                        if not is_finished(layout.gan_dir(root, frac, gseed), "gan"):
                            train_gan(_gan_config(cfg, data, patients, gseed), run_dir=layout.gan_dir(root, frac, gseed))
                            progressed = True
                        if selecting and not layout.cell_done(layout.cell_dir(root, layout.Cell(frac, 0.0, "", gseed))):
                            continue  # its checkpoint is chosen once its scorer (share 0, same seed) is trained
                        _make_synthetic_set(root, cfg, data, patients, frac, gseed)
                        work_log(root, layout.gan_unit(frac, gseed), "done")
                        eta.add("gan", time.time() - t_gan)
                        eta.report(root, cells, gan_seed)
                        progressed = True
                finally:
                    release(root, layout.gan_unit(frac, gseed))
                if not layout.gan_ready(root, frac, gseed):
                    continue  # trained, waiting for its scorer
            unit = cell.name
            if not claim(root, unit):
                continue
            try:
                if not layout.cell_done(layout.cell_dir(root, cell)):
                    left = sum(1 for c in cells if not layout.cell_done(layout.cell_dir(root, c)))
                    log.info("[%d/%d cells left] train fraction %g, synthetic fraction %g%s, seed %d (%.0f s so far)",
                             left, len(cells), frac, synth, f" ({cell.exposure})" if synth else "", seed,
                             time.time() - t0)
                    t_cell = time.time()
                    _run_cell(root, cfg, data, patients, cell, gseed)
                    work_log(root, unit, "done")
                    eta.add("cell", time.time() - t_cell)
                    eta.report(root, cells, gan_seed)
            finally:
                release(root, unit)
            progressed = True
        if progressed:
            waited_since = None
            continue
        waited_since = waited_since or time.time()
        if time.time() - waited_since > wait_s:
            held = sorted(p.name for p in claims_dir(root).glob("*.claim"))
            raise RuntimeError(f"study {root}: waited {wait_s:.0f} s for units held by other processes: "
                               f"{', '.join(held) or 'none'} (delete a claim file whose process died on "
                               "another host)")
        time.sleep(poll_s)
    if not claim(root, "report"):
        log.info("another process is writing the report of %s", root)
        return root
    try:
        write_quality_reports(root, cfg, data, gan_seed)
        return write_study_report(root, cfg)
    finally:
        release(root, "report")


def _make_synthetic_set(root, cfg, data, patients, frac, seed) -> None:
    """The synthetic set of the trained GAN of (training fraction, seed) (``seed``: the GAN's
    seed, see :func:`gan_seeds`), drawn by its selected checkpoint or its last step."""
    gan_dir = layout.gan_dir(root, frac, seed)
    weights = "ema"
    if cfg.gan_checkpoint == "selected":
        select_checkpoint(gan_dir, layout.cell_dir(root, layout.Cell(frac, 0.0, "", seed)), data, seed=seed)
        weights = "selected"
    synth_path = layout.synth_path(root, frac, seed)
    if not synth_path.is_file():
        frames = len(cfg.gan.data.views or VIEWS) * len(cfg.gan.data.phases or PHASES)
        n_images = cfg.synthetic_multiplier * frames * len(patients)
        generate_set(gan_dir, synth_path, masks=cfg.masks, per_mask=cfg.per_mask, n=n_images, seed=seed,
                     weights=weights)


def _seg_config(cfg: StudyConfig, data: Path, patients: list[str], cell: layout.Cell, synth_path):
    """The U-Net config of one cell: ``patients`` of the train split, ``synth_path`` mixed in at
    the cell's synthetic fraction in its exposure arm."""
    synth, seed = cell.synth, cell.seed
    scfg = copy.deepcopy(cfg.seg)
    scfg.data.data = str(data)
    scfg.data.seed = cfg.data_seed
    scfg.data.n_phantom = cfg.n_phantom
    scfg.data.phantom = cfg.phantom
    scfg.data.train_patients = patients
    scfg.data.synthetic = str(synth_path) if synth_path else None
    scfg.data.synthetic_fraction = synth
    scfg.data.exposure = cell.exposure or "replace"
    scfg.train.seed = seed
    return scfg


def _run_cell(root, cfg, data, patients, cell: layout.Cell, gan_seed) -> None:
    """Train (or resume, or keep) and evaluate one cell's U-Net; write its result.json
    (``gan_seed``: the seed of the GAN whose synthetic set it uses, see :func:`gan_seeds`)."""
    frac, synth = cell.frac, cell.synth
    cell_dir = layout.cell_dir(root, cell)
    synth_path = layout.synth_path(root, frac, gan_seed) if synth > 0 else None
    train_seg(_seg_config(cfg, data, patients, cell, synth_path), run_dir=cell_dir)
    if not (cell_dir / f"eval-{cfg.split}").is_dir():
        evaluate_run(cell_dir, split=cfg.split, simpson=cfg.simpson, which=cfg.cell_model)
    result = _cell_result(cell_dir, cfg.split)
    metrics = json.loads((cell_dir / "metrics.json").read_text())
    seen = metrics.get("samples_seen" if cfg.cell_model == "final" else "samples_seen_best") or {}
    result.update(train_fraction=frac, synthetic_fraction=synth, exposure=cell.exposure, seed=cell.seed,
                  n_train_patients=len(patients), gan=layout.gan_unit(frac, gan_seed) if synth > 0 else None,
                  steps=metrics.get("epochs_completed", 0) * metrics.get("steps_per_epoch", 0),
                  real_samples_seen=seen.get("real"), synthetic_samples_seen=seen.get("synthetic"))
    write_json(cell_dir / "result.json", result)


def write_quality_reports(root: Path, cfg: StudyConfig, data: Path, gan_seed=None) -> None:
    """``gans/<gan>/quality/`` for every GAN whose synthetic set exists, scored by the U-Net of
    the same (training fraction, seed) trained without synthetic images (synthetic fraction 0).
    Without such a cell the GAN is skipped and ``gans/<gan>/quality_skipped.txt`` says why.
    ``gan_seed``: :func:`gan_seeds` (default: one GAN per seed)."""
    for seed in cfg.seeds:
        for frac in cfg.train_fractions:
            if gan_seed is not None and gan_seed[frac, seed] != seed:
                continue  # this seed's cells use another seed's GAN
            gan_dir, synth = layout.gan_dir(root, frac, seed), layout.synth_path(root, frac, seed)
            if not synth.is_file() or (gan_dir / "quality").is_dir():
                continue
            base = layout.cell_dir(root, layout.Cell(frac, 0.0, "", seed))
            if not is_finished(base, "seg"):
                atomic_write_text(gan_dir / "quality_skipped.txt",
                                  f"no finished U-Net trained without synthetic images for training fraction "
                                  f"{frac:g}, seed {seed} (add 0 to synthetic_fractions): quality report skipped\n")
                log.info("GAN quality of %s skipped: no synthetic fraction 0 cell", gan_dir.name)
                continue
            log.info("GAN quality of %s (segmenter %s)", gan_dir.name, base.name)
            gan_quality_report(synth, base, real_data=data, out_dir=gan_dir / "quality",
                               inception_weights=cfg.inception_weights, split=cfg.split)
            (gan_dir / "quality_skipped.txt").unlink(missing_ok=True)
