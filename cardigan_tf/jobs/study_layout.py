"""Where a study's units live: the cells of its design (:class:`Cell`), their folders and claim
names, the GAN and synthetic set of each (training fraction, seed), and whether each is done."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from cardigan_tf.configs.study import StudyConfig
from cardigan_tf.runs import is_finished


def tag(x: float) -> str:
    return f"{x:g}"


def cell_done(path: Path) -> bool:
    return (path / "result.json").is_file()


def gan_dir(root: Path, frac: float, seed: int) -> Path:
    return root / "gans" / f"gan-f{tag(frac)}-seed{seed}"


def synth_path(root: Path, frac: float, seed: int) -> Path:
    return root / "synthetic" / f"synth-f{tag(frac)}-seed{seed}.h5"


class Cell(NamedTuple):
    """One U-Net of the design: training fraction, synthetic fraction, exposure arm ("" when
    the synthetic fraction is 0) and seed."""

    frac: float
    synth: float
    exposure: str
    seed: int

    @property
    def name(self) -> str:
        arm = f"-{self.exposure}" if self.synth > 0 else ""
        return f"seg-f{tag(self.frac)}-s{tag(self.synth)}{arm}-seed{self.seed}"


def cell_dir(root: Path, cell: Cell) -> Path:
    """``cells/<cell name>``; a ``replace`` cell of a study written before the exposure arms
    keeps its folder without the arm in its name."""
    path = root / "cells" / cell.name
    if cell.exposure == "replace" and not path.exists():
        legacy = root / "cells" / f"seg-f{tag(cell.frac)}-s{tag(cell.synth)}-seed{cell.seed}"
        if legacy.exists():
            return legacy
    return path


def gan_unit(frac: float, seed: int) -> str:
    return f"gan-f{tag(frac)}-seed{seed}"


def study_cells(cfg: StudyConfig) -> list[Cell]:
    """Every cell of the design: per seed and training fraction, the cell without synthetic
    data and each synthetic fraction > 0 in each exposure arm."""
    return [Cell(f, s, arm if s > 0 else "", seed) for seed in cfg.seeds for f in cfg.train_fractions
            for s in cfg.synthetic_fractions for arm in (cfg.exposures if s > 0 else [""])]


def gan_ready(root: Path, frac: float, seed: int) -> bool:
    return is_finished(gan_dir(root, frac, seed), "gan") and synth_path(root, frac, seed).is_file()
