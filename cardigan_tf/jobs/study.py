"""The synthetic-data study: ``python -m cardigan_tf.train study [--config FILE.yaml]``.

For every training-set fraction x synthetic fraction x seed:

1. the training patients are a seeded subset of the train split (validation and test patients
   never reach the GAN, the generated set or the U-Net's training data);
2. a GAN is trained on that subset only (one per training fraction and seed, shared by the
   synthetic fractions > 0), and a synthetic set is generated from the subset's masks;
3. a U-Net is trained on the subset, mixing in synthetic images with the cell's synthetic
   fraction (the expected share of synthetic images in each batch);
4. the U-Net is evaluated on the fixed test split (Dice, HD, MAD in mm, EF).

Output in ``runs/study-<name>-<UTC>/``: ``results.csv`` / ``results.md`` (mean and SD per cell
over seeds), ``cells.csv`` (one row per trained U-Net), ``wilcoxon.csv`` (synthetic fraction 0 vs
each other fraction, per test patient: mean Dice/HD/MAD difference with a bootstrap interval, each
seed's difference, signed-rank p-values Holm-corrected; see study_report), ``dice_vs_synthetic.png``,
``report.md``; ``gans/<gan>/quality/`` (GAN quality report: segmentation consistency with the
same (training fraction, seed) U-Net trained without synthetic images, FID/KID; see
cardigan_tf.gan_quality). Resumable: ``--resume STUDY_DIR`` skips finished cells, GANs,
synthetic sets and quality reports.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cardigan_tf import runtime  # noqa: F401  (KERAS_BACKEND before keras)
from cardigan_tf.config import ConfigError, load_config, save_config
from cardigan_tf.jobs.gan import GanConfig
from cardigan_tf.jobs.gan import preset_config as gan_preset_config
from cardigan_tf.jobs.seg import SegConfig
from cardigan_tf.jobs.seg import preset_config as seg_preset_config
from cardigan_tf.runs import new_run_dir, write_json

log = logging.getLogger(__name__)
STRUCTS = ("lv_endo", "lv_epi", "la")
METRICS = ("dice", "hd", "mad")


@dataclasses.dataclass
class StudyConfig:
    """Design of the study; ``gan`` and ``seg`` are full job configs (their data paths, training
    patients, synthetic set and seeds are filled in per cell)."""

    name: str = "study"
    data: str | None = None
    n_phantom: int = 60
    data_seed: int = 0
    train_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.1, 0.25, 1.0])
    synthetic_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    masks: str = "real"
    per_mask: int = 1
    synthetic_multiplier: int = 2  # synthetic images = multiplier x training images
    split: str = "test"
    gan_preset: str = "tiny"  # base of the ``gan`` section (tiny | cardigan | spade)
    seg_preset: str = "tiny"  # base of the ``seg`` section (tiny | camus)
    gan: GanConfig = dataclasses.field(default_factory=lambda: gan_preset_config("tiny"))
    seg: SegConfig = dataclasses.field(default_factory=lambda: seg_preset_config("tiny"))
    inception_weights: str | None = None  # local InceptionV3 no-top weights for FID/KID (else U-Net encoder)

    def validate(self) -> None:
        if not self.train_fractions or any(not 0 < f <= 1 for f in self.train_fractions):
            raise ConfigError(f"train_fractions: expected values in (0, 1], got {self.train_fractions}")
        if not self.synthetic_fractions or any(not 0 <= f < 1 for f in self.synthetic_fractions):
            raise ConfigError(f"synthetic_fractions: expected values in [0, 1), got {self.synthetic_fractions}")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        if self.masks not in ("real", "deformed", "sampled"):
            raise ConfigError(f"masks: expected real, deformed or sampled, got {self.masks!r}")
        if self.gan.model.size != self.seg.model.size:
            raise ConfigError(f"gan.model.size ({self.gan.model.size}) must equal seg.model.size "
                              f"({self.seg.model.size}): synthetic images feed the U-Net")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="study design (see experiments/)")
    parser.add_argument("--data", help="CAMUS folder or seed-layout .h5 (default: built-in phantom)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. seeds=[0] or gan.train.steps=200")
    parser.add_argument("--resume", metavar="STUDY_DIR", help="continue a study folder (finished cells are kept)")
    parser.add_argument("--runs-dir", default="runs", help="parent folder of run folders")
    parser.add_argument("--name", help="study name")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """Defaults <- presets named by ``gan_preset``/``seg_preset`` <- YAML file <- ``--set``."""
    from cardigan_tf.config import load_yaml, parse_override

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "data", None):
        overrides.append(f"data={args.data}")
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    path = getattr(args, "config", None)
    chosen = {"gan_preset": "tiny", "seg_preset": "tiny"}
    if path:
        chosen.update({k: v for k, v in load_yaml(path).items() if k in chosen})
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] in chosen and len(keys) == 1:
            chosen[keys[0]] = value
    base = StudyConfig(gan_preset=chosen["gan_preset"], seg_preset=chosen["seg_preset"],
                       gan=gan_preset_config(chosen["gan_preset"]), seg=seg_preset_config(chosen["seg_preset"]))
    return load_config(StudyConfig, path, overrides, base=base)


def run(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.resume:
        return run_study(None, resume=args.resume)
    return run_study(config_from_args(args), runs_dir=args.runs_dir)


def _tag(x: float) -> str:
    return f"{x:g}"


def _done(path: Path) -> bool:
    return (path / "result.json").is_file()


def _seg_finished(path: Path) -> bool:
    """A seg run has finished training when its metrics.json exists (written last)."""
    return (path / "metrics.json").is_file() and ((path / "best.keras").is_file() or (path / "final.keras").is_file())


def _gan_dir(root: Path, frac: float, seed: int) -> Path:
    return root / "gans" / f"gan-f{_tag(frac)}-seed{seed}"


def _synth_path(root: Path, frac: float, seed: int) -> Path:
    return root / "synthetic" / f"synth-f{_tag(frac)}-seed{seed}.h5"


def _cell_dir(root: Path, frac: float, synth: float, seed: int) -> Path:
    return root / "cells" / f"seg-f{_tag(frac)}-s{_tag(synth)}-seed{seed}"


def _gan_config(cfg: "StudyConfig", data: Path, patients: list[str], seed: int) -> GanConfig:
    """The GAN config of one (training fraction, seed): only ``patients`` of the train split."""
    gcfg = copy.deepcopy(cfg.gan)
    gcfg.train.seed = seed
    gcfg.data.data = str(data)
    gcfg.data.train_patients = sorted(patients)
    return gcfg


def gan_train_patients(gan_dir: Path) -> list[str]:
    """The train-split patients a study GAN was trained on (from its config.yaml)."""
    from cardigan_tf.data.h5layout import list_patients

    gcfg = load_config(GanConfig, gan_dir / "config.yaml")
    train = list_patients(gcfg.data.data).get("train", [])
    listed = gcfg.data.train_patients
    return sorted(set(listed) & set(train)) if listed is not None else train


def _gan_done(path: Path) -> bool:
    return (path / "generator_ema.keras").is_file() and (path / "metrics.json").is_file()


def _cell_result(cell_dir: Path, split: str) -> dict[str, Any]:
    """Per-cell means from the evaluation's per-image CSV (NaN ignored) + EF MAE."""
    import json

    eval_dir = cell_dir / f"eval-{split}"
    with open(eval_dir / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((eval_dir / "summary.json").read_text())
    out: dict[str, Any] = {"n_images": len(rows)}
    for s in STRUCTS:
        for m in METRICS:
            vals = np.array([float(r[f"{s}_{m}"]) for r in rows], float)
            out[f"{s}_{m}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    ef = summary.get("clinical_agreement", {}).get("ef_vs_gt", {})
    out["ef_mae"] = float(ef.get("mae", float("nan")))
    out["per_image_dice"] = {f"{r['patient']}/{r['view']}/{r['phase']}": {s: float(r[f"{s}_dice"]) for s in STRUCTS}
                             for r in rows}
    return out


def run_study(cfg: StudyConfig | None, resume: str | Path | None = None, runs_dir: str | Path = "runs",
              study_dir: str | Path | None = None) -> Path:
    """Run (or resume) the study; return its folder."""
    from cardigan_tf.data.h5layout import list_patients
    from cardigan_tf.data.source import resolve_data
    from cardigan_tf.data.splits import subset_patients
    from cardigan_tf.evaluate import evaluate_run
    from cardigan_tf.generate import generate_set
    from cardigan_tf.jobs.gan import train_gan
    from cardigan_tf.jobs.seg import train_seg

    if resume is not None:
        root = Path(resume)
        if not (root / "config.yaml").is_file():
            raise FileNotFoundError(f"{root}: not a study folder (no config.yaml)")
        cfg = load_config(StudyConfig, root / "config.yaml")
    else:
        assert cfg is not None
        cfg.validate()
        root = Path(study_dir) if study_dir else new_run_dir(runs_dir, "study", cfg.name)
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("checkpoints", "tensorboard", "samples"):  # a study has no use for them
            if (root / sub).is_dir() and not any((root / sub).iterdir()):
                (root / sub).rmdir()
        save_config(cfg, root / "config.yaml")
    for sub in ("gans", "synthetic", "cells"):
        (root / sub).mkdir(exist_ok=True)

    data = resolve_data(cfg.data, root / "data", size=cfg.seg.model.size, seed=cfg.data_seed, n_phantom=cfg.n_phantom)
    train_patients = list_patients(data).get("train", [])
    if not train_patients:
        raise ConfigError(f"{data}: no patient in the train split")
    cells = [(f, s, seed) for seed in cfg.seeds for f in cfg.train_fractions for s in cfg.synthetic_fractions]
    log.info("study %s: %d cells on %s (%d training patients)", root.name, len(cells), data, len(train_patients))
    t0 = time.time()
    for i, (frac, synth, seed) in enumerate(cells, 1):
        cell_dir = _cell_dir(root, frac, synth, seed)
        if _done(cell_dir):
            continue
        log.info("[%d/%d] train fraction %g, synthetic fraction %g, seed %d (%.0f s so far)",
                 i, len(cells), frac, synth, seed, time.time() - t0)
        patients = subset_patients(train_patients, frac, seed=seed)
        synth_path = None
        if synth > 0:
            gan_dir = _gan_dir(root, frac, seed)
            if not _gan_done(gan_dir):
                if (gan_dir / "config.yaml").is_file():
                    train_gan(None, resume=gan_dir)
                else:
                    train_gan(_gan_config(cfg, data, patients, seed), run_dir=gan_dir)
            synth_path = _synth_path(root, frac, seed)
            if not synth_path.is_file():
                frames = len(cfg.gan.data.views or ("2CH", "4CH")) * len(cfg.gan.data.phases or ("ED", "ES"))
                n_images = cfg.synthetic_multiplier * frames * len(patients)
                generate_set(gan_dir, synth_path, masks=cfg.masks, per_mask=cfg.per_mask, n=n_images, seed=seed)
        if _seg_finished(cell_dir):
            pass
        elif (cell_dir / "config.yaml").is_file():
            train_seg(load_config(SegConfig, cell_dir / "config.yaml"), resume=cell_dir)
        else:
            scfg = copy.deepcopy(cfg.seg)
            scfg.data.data = str(data)
            scfg.data.train_patients = patients
            scfg.data.synthetic = str(synth_path) if synth_path else None
            scfg.data.synthetic_fraction = synth
            scfg.train.seed = seed
            train_seg(scfg, run_dir=cell_dir)
        if not (cell_dir / f"eval-{cfg.split}").is_dir():
            evaluate_run(cell_dir, split=cfg.split)
        result = _cell_result(cell_dir, cfg.split)
        result.update(train_fraction=frac, synthetic_fraction=synth, seed=seed, n_train_patients=len(patients))
        write_json(cell_dir / "result.json", result)
    write_quality_reports(root, cfg, data)
    from cardigan_tf.jobs.study_report import write_study_report

    return write_study_report(root, cfg)


def write_quality_reports(root: Path, cfg: StudyConfig, data: Path) -> None:
    """``gans/<gan>/quality/`` for every GAN whose synthetic set exists, scored by the U-Net of
    the same (training fraction, seed) trained without synthetic images (synthetic fraction 0).
    Without such a cell the GAN is skipped and ``gans/<gan>/quality_skipped.txt`` says why."""
    from cardigan_tf.gan_quality import gan_quality_report
    from cardigan_tf.runs import atomic_write_text

    for seed in cfg.seeds:
        for frac in cfg.train_fractions:
            gan_dir, synth = _gan_dir(root, frac, seed), _synth_path(root, frac, seed)
            if not synth.is_file() or (gan_dir / "quality").is_dir():
                continue
            base = _cell_dir(root, frac, 0.0, seed)
            if not _seg_finished(base):
                atomic_write_text(gan_dir / "quality_skipped.txt",
                                  f"no finished U-Net trained without synthetic images for training fraction "
                                  f"{frac:g}, seed {seed} (add 0 to synthetic_fractions): quality report skipped\n")
                log.info("GAN quality of %s skipped: no synthetic fraction 0 cell", gan_dir.name)
                continue
            log.info("GAN quality of %s (segmenter %s)", gan_dir.name, base.name)
            gan_quality_report(synth, base, real_data=data, out_dir=gan_dir / "quality",
                               inception_weights=cfg.inception_weights, split=cfg.split)
            (gan_dir / "quality_skipped.txt").unlink(missing_ok=True)
