"""Anatomical validity checks for CAMUS-style label masks.

A label mask is a 2-D integer array (H, W) with values in {0 background, 1 LV cavity,
2 myocardium, 3 left atrium} (:mod:`cardigan_tf.labels`). Synthetic masks (deformed or
decoded by the mask autoencoder) are only used to condition the GAN when they pass these
checks; the failed rules are reported so that rejects can be counted by reason.

Rules (each failure is one string ``"<rule>: <detail>"``; the rule names are stable):

``missing``       LV cavity, myocardium and LA are each present.
``components``    exactly one connected component per structure. Components use
                  **8-connectivity** by default (``MaskRules.connectivity``): nearest-neighbour
                  resampling of thin myocardium often leaves diagonal-only links, which are
                  still one structure. Holes are then found with the complementary
                  4-connectivity of the background, as digital topology requires.
``holes``         no structure encloses another region. For the LV cavity and the LA nothing
                  may be enclosed; for the myocardium the only region it may enclose is the LV
                  cavity; the LV epicardium (LV + MYO) may enclose nothing.
``exposed``       the myocardium surrounds the LV cavity except at the base: the fraction of LV
                  cavity boundary pixels that touch background (label 0, or the image border)
                  is at most ``max_exposed_fraction``, and every such pixel lies on the basal
                  side (see *long axis* below).
``open_base``     the LV cavity is open at the base (touches the LA or background there): the
                  myocardium is a U, not a closed ring (``require_open_base``).
``la_contact``    the LA touches the LV base: it lies within ``la_max_gap_px`` pixels of the LV
                  cavity or of the myocardium, and the contact is on the basal side.
``area``          each structure's area fraction of the image is within its range, the LV
                  cavity has at least ``min_lv_pixels`` pixels, and the MYO / LV and LA / LV
                  area ratios are within ``myo_to_lv`` and ``la_to_lv``.

*Long axis*: the principal axis of the LV cavity pixels, oriented towards the LA centroid.
A pixel's basal position is ``s = (p - c_LV) . u / max_LV (q - c_LV) . u``: 0 at the cavity
centroid, 1 at its basal end, negative towards the apex. "Basal side" means
``s >= base_min_position``.

Example::

    problems = check_mask(mask)          # [] when valid
    if not is_valid(mask, MaskRules(max_exposed_fraction=0.2)): ...
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterable

import numpy as np
from scipy import ndimage

from cardigan_tf.labels import LA, LABEL_NAMES, LV, MYO

RULES = ("missing", "components", "holes", "exposed", "open_base", "la_contact", "area")


@dataclasses.dataclass
class MaskRules:
    """Thresholds of the anatomical validity checks (see the module docstring).

    Area ranges are fractions of the whole image (H * W); ``myo_to_lv`` and ``la_to_lv`` bound
    the area ratios MYO / LV cavity and LA / LV cavity (a wall far thicker than the cavity is
    not a heart). ``skip`` lists rule names to turn off.
    """

    connectivity: int = 8
    max_exposed_fraction: float = 0.3
    base_min_position: float = 0.3
    require_open_base: bool = True
    la_max_gap_px: int = 1
    lv_area: tuple[float, float] = (0.01, 0.45)
    myo_area: tuple[float, float] = (0.005, 0.45)
    la_area: tuple[float, float] = (0.002, 0.35)
    min_lv_pixels: int = 12
    myo_to_lv: tuple[float, float] = (0.2, 3.0)
    la_to_lv: tuple[float, float] = (0.1, 4.0)
    skip: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.connectivity not in (4, 8):
            raise ValueError(f"MaskRules.connectivity: expected 4 or 8, got {self.connectivity}")
        for name in ("lv_area", "myo_area", "la_area", "myo_to_lv", "la_to_lv"):
            lo, hi = getattr(self, name)
            top = 1.0 if name.endswith("_area") else float("inf")
            if not 0.0 <= lo <= hi <= top:
                raise ValueError(f"MaskRules.{name}: expected 0 <= low <= high <= {top}, got {(lo, hi)}")
        if not 0.0 <= self.max_exposed_fraction <= 1.0:
            raise ValueError(f"MaskRules.max_exposed_fraction: expected [0, 1], got {self.max_exposed_fraction}")
        unknown = sorted(set(self.skip) - set(RULES))
        if unknown:
            raise ValueError(f"MaskRules.skip: unknown rule(s) {unknown}; expected names from {list(RULES)}")

    def __post_init__(self) -> None:
        self.skip = tuple(self.skip)
        self.validate()


def _structure(connectivity: int) -> np.ndarray:
    return ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)


def _enclosed(region: np.ndarray, connectivity: int) -> np.ndarray:
    """Pixels not in ``region`` that cannot reach the image border without crossing it."""
    background_conn = 4 if connectivity == 8 else 8
    filled = ndimage.binary_fill_holes(region, structure=_structure(background_conn))
    return filled & ~region


def _touches(a: np.ndarray, b: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """Pixels of ``a`` with a neighbour in ``b``."""
    return a & ndimage.binary_dilation(b, structure=_structure(connectivity))


def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it (the image border counts as outside)."""
    eroded = ndimage.binary_erosion(region, structure=_structure(4), border_value=0)
    return region & ~eroded


def basal_axis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(LV centroid (row, col), unit long axis towards the LA, basal extent) or None.

    None when the LV cavity or the LA is missing.
    """
    lv = np.argwhere(mask == LV).astype(np.float64)
    la = np.argwhere(mask == LA).astype(np.float64)
    if len(lv) < 2 or len(la) == 0:
        return None
    c = lv.mean(axis=0)
    towards_la = la.mean(axis=0) - c
    cov = np.cov((lv - c).T)
    evals, evecs = np.linalg.eigh(cov)
    u = evecs[:, -1]
    if evals[-1] < 1.2 * max(evals[0], 1e-9):  # nearly round cavity: no usable long axis
        norm = np.linalg.norm(towards_la)
        u = towards_la / norm if norm > 0 else u
    if np.dot(u, towards_la) < 0:
        u = -u
    extent = float(np.max((lv - c) @ u))
    return c, u, max(extent, 1.0)


def _positions(pixels: np.ndarray, axis: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    c, u, extent = axis
    return ((np.argwhere(pixels).astype(np.float64) - c) @ u) / extent


def check_mask(mask: np.ndarray, rules: MaskRules | None = None) -> list[str]:
    """Return the failed rules of ``mask`` as ``"<rule>: <detail>"`` strings ([] = valid)."""
    rules = rules or MaskRules()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"check_mask: expected a label mask of shape (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 3):
        raise ValueError(f"check_mask: labels must be in 0..3, got range [{mask.min()}, {mask.max()}]")
    skip = set(rules.skip)
    problems: list[str] = []
    regions = {lab: mask == lab for lab in (LV, MYO, LA)}
    present = {lab: bool(regions[lab].any()) for lab in regions}

    if "missing" not in skip:
        for lab in (LV, MYO, LA):
            if not present[lab]:
                problems.append(f"missing: {LABEL_NAMES[lab]}")

    if "components" not in skip:
        st = _structure(rules.connectivity)
        for lab in (LV, MYO, LA):
            if present[lab]:
                n = ndimage.label(regions[lab], structure=st)[1]
                if n != 1:
                    problems.append(f"components: {LABEL_NAMES[lab]} has {n} connected components")

    if "holes" not in skip:
        for lab, allowed in ((LV, ()), (LA, ()), (MYO, (LV,))):
            if not present[lab]:
                continue
            enclosed = _enclosed(regions[lab], rules.connectivity)
            bad = enclosed & ~np.isin(mask, allowed) if allowed else enclosed
            if bad.any():
                problems.append(f"holes: {LABEL_NAMES[lab]} encloses {int(bad.sum())} pixel(s) of other labels")
        epi = regions[LV] | regions[MYO]
        if epi.any():
            enclosed = _enclosed(epi, rules.connectivity)
            if enclosed.any():
                problems.append(f"holes: lv_epicardium encloses {int(enclosed.sum())} pixel(s)")

    axis = basal_axis(mask)
    if present[LV] and axis is not None:
        lv_boundary = _boundary(regions[LV])
        # pixels of the cavity boundary touching background or the image border
        outside = ~(np.isin(mask, (LV, MYO, LA)))
        exposed = lv_boundary & (_touches(lv_boundary, outside) | _image_border(mask.shape))
        if "exposed" not in skip and exposed.any():
            frac = exposed.sum() / max(lv_boundary.sum(), 1)
            if frac > rules.max_exposed_fraction:
                problems.append(
                    f"exposed: {frac:.2f} of the LV cavity boundary touches background "
                    f"(max {rules.max_exposed_fraction:.2f})"
                )
            s = _positions(exposed, axis)
            off = int(np.sum(s < rules.base_min_position))
            if off:
                problems.append(f"exposed: {off} LV cavity pixel(s) touch background away from the base")
        if "open_base" not in skip and rules.require_open_base:
            not_myo = ~np.isin(mask, (LV, MYO))
            opening = lv_boundary & (_touches(lv_boundary, not_myo) | _image_border(mask.shape))
            s = _positions(opening, axis) if opening.any() else np.zeros(0)
            if not np.any(s >= rules.base_min_position):
                problems.append("open_base: the myocardium closes the LV cavity at the base")

    if "la_contact" not in skip and present[LA] and present[LV]:
        epi = regions[LV] | regions[MYO]
        near_la = ndimage.binary_dilation(
            regions[LA], structure=_structure(8), iterations=max(rules.la_max_gap_px, 1)
        )
        contact = epi & near_la
        if not contact.any():
            problems.append(f"la_contact: the LA is more than {rules.la_max_gap_px} px from the LV")
        elif axis is not None:
            s = _positions(contact, axis)
            if np.median(s) < rules.base_min_position:
                problems.append("la_contact: the LA touches the LV away from its base")

    if "area" not in skip:
        total = float(mask.size)
        for lab, (lo, hi) in ((LV, rules.lv_area), (MYO, rules.myo_area), (LA, rules.la_area)):
            if not present[lab]:
                continue
            frac = regions[lab].sum() / total
            if not lo <= frac <= hi:
                problems.append(f"area: {LABEL_NAMES[lab]} covers {frac:.4f} of the image, expected [{lo}, {hi}]")
        if present[LV] and regions[LV].sum() < rules.min_lv_pixels:
            problems.append(f"area: lv_cavity has {int(regions[LV].sum())} px, expected >= {rules.min_lv_pixels}")
        if present[LV]:
            lv_area = float(regions[LV].sum())
            for lab, (lo, hi) in ((MYO, rules.myo_to_lv), (LA, rules.la_to_lv)):
                ratio = regions[lab].sum() / lv_area
                if present[lab] and not lo <= ratio <= hi:
                    problems.append(f"area: {LABEL_NAMES[lab]}/lv_cavity area ratio {ratio:.2f}, expected [{lo}, {hi}]")
    return problems


def _image_border(shape: tuple[int, ...]) -> np.ndarray:
    border = np.zeros(shape, dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return border


def is_valid(mask: np.ndarray, rules: MaskRules | None = None) -> bool:
    """True when ``mask`` passes every rule of :func:`check_mask`."""
    return not check_mask(mask, rules)


def rule_of(problem: str) -> str:
    """The rule name of one :func:`check_mask` message (the text before the colon)."""
    return problem.split(":", 1)[0]


def count_rejections(masks: Iterable[np.ndarray], rules: MaskRules | None = None) -> Counter:
    """Count failed rules over ``masks`` ("valid" counts the masks that pass)."""
    counts: Counter = Counter()
    for m in masks:
        problems = check_mask(m, rules)
        if not problems:
            counts["valid"] += 1
        for rule in sorted({rule_of(p) for p in problems}):
            counts[rule] += 1
    return counts


def clean_mask(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Keep the largest component of each label; give removed pixels the nearest kept label;
    fill holes of the LV cavity and LA with their own label and background holes of the
    epicardium with myocardium.

    Meant for decoded (autoencoder) masks, whose small specks would otherwise reject them.
    The result should still be checked with :func:`check_mask`.
    """
    mask = np.asarray(mask).astype(np.uint8).copy()
    st = _structure(connectivity)
    removed = np.zeros(mask.shape, dtype=bool)
    for lab in (LV, MYO, LA):
        lab_map, n = ndimage.label(mask == lab, structure=st)
        if n > 1:
            sizes = ndimage.sum(np.ones_like(lab_map), lab_map, index=np.arange(1, n + 1))
            keep = 1 + int(np.argmax(sizes))
            removed |= (lab_map > 0) & (lab_map != keep)
    if removed.any() and (~removed).any():
        idx = ndimage.distance_transform_edt(removed, return_distances=False, return_indices=True)
        mask[removed] = mask[idx[0][removed], idx[1][removed]]
    for lab in (LV, LA):
        mask[_enclosed(mask == lab, connectivity)] = lab
    epi_holes = _enclosed(np.isin(mask, (LV, MYO)), connectivity)
    mask[epi_holes] = MYO
    return mask


def validity_check(rules: "MaskRules | None" = None, clean: bool = True):
    """A ``check(mask) -> (mask, failed rule names)`` function for
    :func:`cardigan_tf.models.mask_ae.sample_valid_masks`: :func:`clean_mask` (when ``clean``),
    then :func:`check_mask` with ``rules``."""

    def check(mask):
        m = clean_mask(mask) if clean else mask
        return m, sorted({rule_of(p) for p in check_mask(m, rules)})

    return check
