"""Mask deformation: new plausible anatomies from training masks (numpy/scipy only).

One call of :func:`deform_mask` applies, in this order:

1. **per-structure scaling** around the centre of the mitral base (the LV cavity pixels that
   touch the LA, else the basal end of the cavity): the epicardium (LV + MYO) by ``s_epi``,
   the LV cavity by ``s_epi * s_rel`` (``s_rel < 1`` thickens the wall, ``> 1`` thins it) and
   the LA by ``s_la``. Scaling about the base keeps the LA attached and the base open. Labels
   are re-composited in the order LA, myocardium (the scaled epicardium), LV cavity (clipped
   to the scaled epicardium), so the myocardium stays around the cavity;
2. a random **affine** map about the image centre (rotation, isotropic scale, shear,
   translation);
3. a smooth **elastic** displacement field: Gaussian noise on a coarse ``elastic_grid`` x
   ``elastic_grid`` grid, upsampled to the image with cubic interpolation, with a standard
   deviation of ``elastic_sigma`` times the image size (in pixels).

Steps 2 and 3 are composed into one sampling grid and the labels are resampled once, with
nearest neighbour (``interpolation="nearest"``) or by linear interpolation of the one-hot
channels followed by argmax (``"onehot"``, smoother borders). Outside the image is background.
With ``clean=True`` (default) stray one-pixel specks and pinholes left by the resampling are
removed with :func:`cardigan_tf.data.masks.clean_mask` (largest component per label kept).

:func:`deform_until_valid` retries until :func:`cardigan_tf.data.masks.check_mask` passes and
counts the rejected draws; :func:`deform_set` does it for a whole set of training masks and
counts rejects per rule.

Example::

    rng = np.random.default_rng(0)
    new_mask, n_rejected = deform_until_valid(mask, rng, DeformConfig(), max_tries=20)
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from cardigan_tf.data.masks import MaskRules, check_mask, clean_mask, rule_of
from cardigan_tf.labels import LA, LV, MYO, NUM_CLASSES


@dataclasses.dataclass
class DeformConfig:
    """Ranges of the random deformation (each drawn uniformly in [-x, x] unless noted)."""

    rotation_deg: float = 8.0
    scale: float = 0.08  # global isotropic scale: 1 +- scale
    shear: float = 0.05
    translate: float = 0.04  # fraction of the image size
    elastic_sigma: float = 0.015  # std of the elastic displacement, fraction of the image size
    elastic_grid: int = 5  # coarse control grid (points per side)
    epi_scale: float = 0.08  # epicardium scale: 1 +- epi_scale
    lv_rel_scale: float = 0.06  # LV cavity scale relative to the epicardium: 1 +- lv_rel_scale
    la_scale: float = 0.15  # LA scale: 1 +- la_scale
    interpolation: str = "nearest"  # "nearest" | "onehot"
    clean: bool = True  # drop stray specks / fill pinholes (masks.clean_mask) after resampling

    def validate(self) -> None:
        for name in ("scale", "epi_scale", "lv_rel_scale", "la_scale"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"DeformConfig.{name}: expected 0 <= value < 1, got {v}")
        for name in ("rotation_deg", "shear", "translate", "elastic_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"DeformConfig.{name}: expected >= 0, got {getattr(self, name)}")
        if self.elastic_grid < 2:
            raise ValueError(f"DeformConfig.elastic_grid: expected >= 2, got {self.elastic_grid}")
        if self.interpolation not in ("nearest", "onehot"):
            raise ValueError(f"DeformConfig.interpolation: expected 'nearest' or 'onehot', got {self.interpolation!r}")

    def __post_init__(self) -> None:
        self.validate()


class NoValidMaskError(RuntimeError):
    """No valid deformation was found within ``max_tries``; ``n_rejected`` counts the draws."""

    def __init__(self, n_rejected: int, last_problems: list[str]):
        self.n_rejected = n_rejected
        self.last_problems = last_problems
        super().__init__(
            f"no anatomically valid deformation in {n_rejected} tries; last failures: {last_problems}"
        )


def base_anchor(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the centre of the mitral base; the image centre when the LV is missing."""
    lv = mask == LV
    if not lv.any():
        return (np.array(mask.shape, np.float64) - 1) / 2
    near_la = lv & ndimage.binary_dilation(mask == LA)
    if near_la.any():
        return np.argwhere(near_la).mean(axis=0)
    pts = np.argwhere(lv).astype(np.float64)
    c = pts.mean(axis=0)
    la = np.argwhere(mask == LA)
    if len(la):
        u = la.mean(axis=0) - c
    else:  # basal end = the cavity end that touches no myocardium
        u = np.linalg.eigh(np.cov((pts - c).T))[1][:, -1]
    u = u / max(np.linalg.norm(u), 1e-9)
    proj = (pts - c) @ u
    return pts[proj >= proj.max() - 1.0].mean(axis=0)


def _scale_about(region: np.ndarray, factor: float, anchor: np.ndarray) -> np.ndarray:
    """Binary ``region`` scaled by ``factor`` about ``anchor`` (nearest neighbour)."""
    if abs(factor - 1.0) < 1e-6:
        return region.copy()
    matrix = np.eye(2) / factor  # output -> input coordinates
    offset = anchor - matrix @ anchor
    out = ndimage.affine_transform(region.astype(np.uint8), matrix, offset=offset, order=0, mode="constant", cval=0)
    return out.astype(bool)


def scale_structures(mask: np.ndarray, s_epi: float, s_rel: float, s_la: float) -> np.ndarray:
    """Per-structure scaling about the mitral base, re-composited LA -> MYO -> LV."""
    anchor = base_anchor(mask)
    epi = _scale_about(np.isin(mask, (LV, MYO)), s_epi, anchor)
    lv = _scale_about(mask == LV, s_epi * s_rel, anchor) & epi
    la = _scale_about(mask == LA, s_la, anchor)
    out = np.zeros_like(mask, dtype=np.uint8)
    out[la] = LA
    out[epi] = MYO
    out[lv] = LV
    return out


def _elastic_field(shape: tuple[int, int], rng: np.random.Generator, sigma_px: float, grid: int) -> np.ndarray:
    """(2, H, W) smooth displacement in pixels: coarse Gaussian grid, cubic upsampling."""
    if sigma_px <= 0:
        return np.zeros((2, *shape))
    coarse = rng.normal(0.0, sigma_px, size=(2, grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    field = np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest", grid_mode=True) for c in coarse])
    return field[:, : shape[0], : shape[1]]


def _affine_matrix(rng: np.random.Generator, cfg: DeformConfig) -> np.ndarray:
    """2x2 output -> input matrix (row, col) of a random rotation x scale x shear."""
    theta = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale)
    shear = rng.uniform(-cfg.shear, cfg.shear)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    return np.linalg.inv(forward)


def resample_labels(mask: np.ndarray, coords: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
    """Sample label ``mask`` at ``coords`` (2, H, W) (input row, col per output pixel)."""
    if interpolation == "nearest":
        return ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    onehot = [
        ndimage.map_coordinates((mask == k).astype(np.float32), coords, order=1, mode="constant", cval=float(k == 0))
        for k in range(NUM_CLASSES)
    ]
    return np.argmax(np.stack(onehot), axis=0).astype(np.uint8)


def deform_mask(mask: np.ndarray, rng: np.random.Generator, cfg: DeformConfig | None = None) -> np.ndarray:
    """Randomly deformed copy of label ``mask`` (H, W) uint8 (see the module docstring)."""
    cfg = cfg or DeformConfig()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"deform_mask: expected a label mask of shape (H, W), got shape {mask.shape}")
    mask = mask.astype(np.uint8)
    h, w = mask.shape
    s_epi = 1.0 + rng.uniform(-cfg.epi_scale, cfg.epi_scale)
    s_rel = 1.0 + rng.uniform(-cfg.lv_rel_scale, cfg.lv_rel_scale)
    s_la = 1.0 + rng.uniform(-cfg.la_scale, cfg.la_scale)
    scaled = scale_structures(mask, s_epi, s_rel, s_la)

    matrix = _affine_matrix(rng, cfg)
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * np.array([h, w])
    centre = (np.array([h, w], np.float64) - 1) / 2
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).astype(np.float64)
    rel = grid.reshape(2, -1) - centre[:, None] - shift[:, None]
    coords = (matrix @ rel + centre[:, None]).reshape(2, h, w)
    coords += _elastic_field((h, w), rng, cfg.elastic_sigma * max(h, w), cfg.elastic_grid)
    out = resample_labels(scaled, coords, cfg.interpolation)
    return clean_mask(out) if cfg.clean else out


def _deform_tries(mask, rng, cfg, max_tries, rules, by_rule: Counter) -> tuple[np.ndarray | None, int, list[str]]:
    problems: list[str] = []
    for n in range(max_tries):
        out = deform_mask(mask, rng, cfg)
        problems = check_mask(out, rules)
        if not problems:
            return out, n, []
        by_rule.update({rule_of(p) for p in problems})
    return None, max_tries, problems


def deform_until_valid(
    mask: np.ndarray,
    rng: np.random.Generator,
    cfg: DeformConfig | None = None,
    max_tries: int = 20,
    rules: MaskRules | None = None,
) -> tuple[np.ndarray, int]:
    """Deform until the result passes :func:`check_mask`; return (mask, number rejected).

    Raises NoValidMaskError (with ``n_rejected``) when ``max_tries`` draws all fail.
    """
    if max_tries < 1:
        raise ValueError(f"deform_until_valid: max_tries must be >= 1, got {max_tries}")
    out, n, problems = _deform_tries(mask, rng, cfg, max_tries, rules, Counter())
    if out is None:
        raise NoValidMaskError(n, problems)
    return out, n


def deform_set(
    masks: np.ndarray,
    per_mask: int,
    rng: np.random.Generator,
    cfg: DeformConfig | None = None,
    max_tries: int = 20,
    rules: MaskRules | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``per_mask`` valid deformations of each mask of ``masks`` (N, H, W).

    Returns ``(new_masks (M, H, W) uint8, source_index (M,) int, stats)`` with ``stats =
    {"drawn", "accepted", "rejected", "failed", "by_rule"}``: ``failed`` counts the requested
    masks given up after ``max_tries`` rejected draws (those are left out, so M <= N * per_mask);
    ``by_rule`` counts the failed rules over all rejected draws.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"deform_set: expected masks (N, H, W), got shape {masks.shape}")
    by_rule: Counter = Counter()
    out, source = [], []
    rejected = failed = 0
    jobs = [(i, k) for i in range(len(masks)) for k in range(per_mask)]
    iterator = jobs
    if progress:
        iterator = tqdm(jobs, desc="deforming masks", unit="mask")
    for i, _ in iterator:
        new, n, _ = _deform_tries(masks[i], rng, cfg, max_tries, rules, by_rule)
        rejected += n
        if new is None:
            failed += 1
            continue
        out.append(new)
        source.append(i)
    h, w = masks.shape[1:]
    stacked = np.stack(out) if out else np.zeros((0, h, w), np.uint8)
    stats = {"drawn": rejected + len(out), "accepted": len(out), "rejected": rejected, "failed": failed,
             "by_rule": dict(by_rule)}
    return stacked, np.asarray(source, dtype=np.int64), stats
