"""Anatomical quality control of one predicted label map (NumPy / SciPy reference).

A label map is a 2-D integer array (H, W) with the CAMUS labels of :mod:`cardigan_tf.labels`
(0 background, 1 LV cavity, 2 myocardium, 3 left atrium; LV epicardium = 1 | 2), apex at the
top and depth increasing down the rows. :func:`check_anatomy` returns one boolean per check
(True = the check failed, the prediction is suspect), the bitmask ``qc_flags`` and the names of
the failed checks. :mod:`cardigan_tf.metrics.anatomy_graph` computes the same flags as a graph
(keras.ops) for the serving signatures; the tests hold the two equal.

The checks (:data:`QC_FLAGS`; bit ``i`` of ``qc_flags`` is ``QC_FLAGS[i]``):

=================  =====  ==================================================================
flag               bit    set when
=================  =====  ==================================================================
``lv_empty``       0      no LV cavity pixel
``myo_empty``      1      no myocardium pixel
``la_empty``       2      no left-atrium pixel
``lv_components``  3      the LV cavity is in more than one 8-connected piece: more than
                          ``max_debris_fraction`` of its pixels lie outside its largest piece
``myo_components`` 4      the same for the myocardium
``la_components``  5      the same for the LA
``lv_holes``       6      the LV cavity encloses pixels of another label
``myo_holes``      7      the myocardium encloses any pixel: a hole, or a ring closed around
                          the cavity (in an apical view the cavity opens onto the LA)
``la_holes``       8      the LA encloses pixels of another label
``epi_holes``      9      the LV epicardium (1 | 2) encloses pixels of another label
``lv_exposed``     10     the myocardium does not enclose the cavity: more than
                          ``max_exposed_fraction`` of the cavity's border pixels touch
                          background directly
``la_detached``    11     the LA does not touch the LV cavity
``long_axis``      12     the LV cavity's long axis is implausible: its length / width ratio
                          is outside ``elongation``, or it leans more than ``max_axis_angle``
                          degrees from the image's depth axis (the rows)
``lv_at_border``   13     the LV epicardium's largest piece lies on the image's edge
                          along more than ``max_border_fraction`` of its longer side: in an
                          apical view the whole LV lies inside the sector, so a frame that
                          cuts it (cropped, shifted, too shallow) is flagged
=================  =====  ==================================================================

Definitions. Pieces are 8-connected; specks outside a structure's largest piece that hold at
most ``max_debris_fraction`` (5 %) of its pixels are not a second piece (a small network's
predictions often carry a few stray pixels; the LV long axis of
:mod:`cardigan_tf.metrics.long_axis` drops the same debris); holes are found with the complementary 4-connectivity: a
pixel outside a structure is enclosed when no 4-connected path of pixels outside the structure
leads from it out of the image. The border of the cavity is its pixels with a 4-neighbour
outside it, the image's outside counting as background; a border pixel touches background when
one of its 4-neighbours is background (label 0 or outside the image). At the base the cavity
meets the LA (the mitral plane), which is not background, so an anatomical mask exposes only
the few pixels where the mitral plane reaches background; the threshold allows for them. LA
contact is 8-neighbourhood. The long axis comes from the second moments of the cavity, each
pixel a rectangle of ``spacing`` (row, col) mm (so one pixel is round, not a line): the length
/ width ratio is the square root of the ratio of the eigenvalues, the lean is the angle of the
major eigenvector from the row axis. Flags of a structure's shape are only raised when it is
present; an empty structure raises its ``*_empty`` flag, ``lv_exposed`` and ``la_detached``
need the LV (and the LA) present, and a missing myocardium leaves the cavity exposed.

Example::

    qc = check_anatomy(mask, spacing=(0.154, 0.308))
    qc.qc_flags, qc.failed            # 0, [] for a plausible heart
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from cardigan_tf.labels import LA, LV, MYO
from cardigan_tf.metrics.long_axis import MAX_DEBRIS_FRACTION
from cardigan_tf.metrics.segmentation import check_spacing

#: The QC flags in bit order: bit i of ``qc_flags`` is QC_FLAGS[i] (module docstring).
QC_FLAGS = ("lv_empty", "myo_empty", "la_empty",
            "lv_components", "myo_components", "la_components",
            "lv_holes", "myo_holes", "la_holes", "epi_holes",
            "lv_exposed", "la_detached", "long_axis", "lv_at_border")

_EIGHT = ndimage.generate_binary_structure(2, 2)
_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclasses.dataclass(frozen=True)
class QCRules:
    """Thresholds of the anatomical checks (module docstring).

    ``max_debris_fraction``: the share of a structure's pixels that may lie outside its largest
    piece before it counts as fragmented. ``max_exposed_fraction``: the largest fraction of the
    LV cavity's border pixels that may touch background. ``elongation``: (low, high) of the
    cavity's length / width ratio. ``max_axis_angle``: degrees the cavity's long axis may lean
    from the depth axis. ``max_border_fraction``: how many LV epicardium pixels may lie on the
    image's edge, as a fraction of its longer side (stray pixels of a prediction; a cut heart
    lies on the edge along its width).
    """

    max_debris_fraction: float = MAX_DEBRIS_FRACTION
    max_exposed_fraction: float = 0.25
    elongation: tuple[float, float] = (1.2, 4.5)
    max_axis_angle: float = 45.0
    max_border_fraction: float = 0.05

    def __post_init__(self):
        lo, hi = self.elongation
        if not 0.0 <= self.max_debris_fraction < 1.0:
            raise ValueError(f"QCRules.max_debris_fraction: expected a fraction in [0, 1), "
                             f"got {self.max_debris_fraction}")
        if not 0.0 <= self.max_exposed_fraction <= 1.0:
            raise ValueError(f"QCRules.max_exposed_fraction: expected a fraction in [0, 1], "
                             f"got {self.max_exposed_fraction}")
        if not 1.0 <= lo <= hi:
            raise ValueError(f"QCRules.elongation: expected (low, high) with 1 <= low <= high, got {self.elongation}")
        if not 0.0 <= self.max_axis_angle <= 90.0:
            raise ValueError(f"QCRules.max_axis_angle: expected degrees in [0, 90], got {self.max_axis_angle}")
        if not 0.0 <= self.max_border_fraction < 1.0:
            raise ValueError(f"QCRules.max_border_fraction: expected a fraction in [0, 1), got {self.max_border_fraction}")


@dataclasses.dataclass(frozen=True)
class AnatomyQC:
    """The result of :func:`check_anatomy`: ``flags`` {name: failed} in :data:`QC_FLAGS` order,
    ``qc_flags`` (their bitmask), ``failed`` (names of the set flags) and ``measures`` (the
    numbers the flags come from)."""

    flags: dict[str, bool]
    qc_flags: int
    failed: list[str]
    measures: dict[str, float]


def qc_bitmask(flags: Mapping[str, bool]) -> int:
    """The int bitmask of named flags (bit i = :data:`QC_FLAGS` [i]); unknown names are refused."""
    unknown = sorted(set(flags) - set(QC_FLAGS))
    if unknown:
        raise ValueError(f"qc flags: unknown name(s) {unknown}; expected names from {list(QC_FLAGS)}")
    return sum(1 << i for i, name in enumerate(QC_FLAGS) if flags.get(name, False))


def flag_names(qc_flags: int) -> list[str]:
    """The names of the flags set in a bitmask, in bit order."""
    qc_flags = int(qc_flags)
    if not 0 <= qc_flags < 1 << len(QC_FLAGS):
        raise ValueError(f"qc_flags: expected an int in [0, {(1 << len(QC_FLAGS)) - 1}], got {qc_flags}")
    return [name for i, name in enumerate(QC_FLAGS) if qc_flags >> i & 1]


def _label_map(mask) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"label map: expected shape (H, W), got {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"label map: expected integer labels 0..3, got dtype {m.dtype}")
    if m.size and (m.min() < 0 or m.max() > LA):
        raise ValueError(f"label map: expected labels 0..3, got range [{m.min()}, {m.max()}]")
    return m


def _spacing(spacing) -> tuple[float, float]:
    return (1.0, 1.0) if spacing is None else check_spacing(spacing)


def _pieces(region: np.ndarray) -> tuple[int, int]:
    """(number of 8-connected pieces, pixels outside the largest)."""
    lab, n = ndimage.label(region, structure=_EIGHT)
    sizes = np.bincount(lab.ravel())[1:]
    return int(n), int(sizes.sum() - sizes.max()) if n else 0


def _largest(region: np.ndarray) -> np.ndarray:
    """The pixels of the largest 8-connected piece of ``region`` (of each, when several tie)."""
    lab, n = ndimage.label(region, structure=_EIGHT)
    if not n:
        return region.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.isin(lab, np.flatnonzero(sizes == sizes.max()))


def _enclosed(region: np.ndarray) -> np.ndarray:
    """Pixels outside ``region`` with no 4-connected path outside it to the image's outside."""
    return ndimage.binary_fill_holes(region, structure=_FOUR) & ~region


def _exposed_fraction(lv: np.ndarray, background: np.ndarray) -> float:
    """Fraction of the cavity's border pixels with a 4-neighbour in background (outside = background)."""
    lv_p = np.pad(lv, 1, constant_values=False)
    bg_p = np.pad(background, 1, constant_values=True)
    inner = ndimage.binary_erosion(lv_p, structure=_FOUR, border_value=0)
    border = lv_p & ~inner
    touching = lv_p & ndimage.binary_dilation(bg_p, structure=_FOUR)
    return float(touching.sum()) / max(int(border.sum()), 1)


def long_axis_shape(region: np.ndarray, spacing=None) -> tuple[float, float]:
    """(length / width ratio, lean from the row axis in degrees) of a region's second moments,
    each pixel a ``spacing`` (row, col) rectangle; (nan, nan) for an empty region."""
    sy, sx = _spacing(spacing)
    rows, cols = np.nonzero(region)
    if len(rows) == 0:
        return float("nan"), float("nan")
    r = rows * sy
    c = cols * sx
    a = np.mean((r - r.mean()) ** 2) + sy * sy / 12.0
    cc = np.mean((c - c.mean()) ** 2) + sx * sx / 12.0
    b = np.mean((r - r.mean()) * (c - c.mean()))
    half = math.hypot((a - cc) / 2.0, b)
    major, minor = (a + cc) / 2.0 + half, (a + cc) / 2.0 - half
    ratio = math.sqrt(major / minor) if minor > 0 else float("inf")
    lean = abs(math.degrees(0.5 * math.atan2(2.0 * b, a - cc)))
    return ratio, lean


def check_anatomy(mask, spacing=None, rules: QCRules | None = None) -> AnatomyQC:
    """The anatomical checks of one label map (H, W) with pixel ``spacing`` (row, col) mm
    (None: square pixels); see the module docstring."""
    rules = rules or QCRules()
    m = _label_map(mask)
    spacing = _spacing(spacing)
    lv, myo, la = m == LV, m == MYO, m == LA
    epi = lv | myo
    present = {"lv": bool(lv.any()), "myo": bool(myo.any()), "la": bool(la.any())}
    regions = {"lv": lv, "myo": myo, "la": la}
    measures: dict[str, float] = {}
    flags = {name: False for name in QC_FLAGS}
    for key, region in regions.items():
        flags[f"{key}_empty"] = not present[key]
        pieces, debris = _pieces(region)
        measures[f"{key}_pieces"] = float(pieces)
        measures[f"{key}_debris_fraction"] = debris / max(int(region.sum()), 1)
        flags[f"{key}_components"] = debris > rules.max_debris_fraction * int(region.sum())
    holes = {"lv": _enclosed(lv), "myo": _enclosed(myo), "la": _enclosed(la), "epi": _enclosed(epi)}
    for key, hole in holes.items():
        measures[f"{key}_hole_pixels"] = float(hole.sum())
        flags[f"{key}_holes"] = bool(hole.any())
    if present["lv"]:
        measures["lv_exposed_fraction"] = _exposed_fraction(lv, m == 0)
        flags["lv_exposed"] = measures["lv_exposed_fraction"] > rules.max_exposed_fraction
        ratio, lean = long_axis_shape(lv, spacing)
        measures["lv_elongation"], measures["lv_axis_angle"] = ratio, lean
        lo, hi = rules.elongation
        flags["long_axis"] = not (lo <= ratio <= hi) or lean > rules.max_axis_angle
    else:
        measures.update(lv_exposed_fraction=float("nan"), lv_elongation=float("nan"), lv_axis_angle=float("nan"))
    contact = la & ndimage.binary_dilation(lv, structure=_EIGHT)
    measures["la_lv_contact_pixels"] = float(contact.sum())
    flags["la_detached"] = present["lv"] and present["la"] and not contact.any()
    heart = _largest(epi)  # stray pixels of a prediction do not count
    edges = np.concatenate([heart[0], heart[-1], heart[:, 0], heart[:, -1]])
    measures["epi_border_pixels"] = float(edges.sum())
    flags["lv_at_border"] = bool(edges.sum() > rules.max_border_fraction * max(m.shape))
    failed = [name for name in QC_FLAGS if flags[name]]
    return AnatomyQC(flags=flags, qc_flags=qc_bitmask(flags), failed=failed, measures=measures)


def qc_flags_batch(masks: Iterable, spacings: Sequence | None = None, rules: QCRules | None = None) -> np.ndarray:
    """int32 ``qc_flags`` [B] of label maps (a [B, H, W] array or a list of (H, W) maps), each
    with its spacing (None: square pixels)."""
    masks = list(masks)
    spacings = [None] * len(masks) if spacings is None else list(spacings)
    if len(spacings) != len(masks):
        raise ValueError(f"spacings: expected one per label map ({len(masks)}), got {len(spacings)}")
    return np.array([check_anatomy(m, s, rules).qc_flags for m, s in zip(masks, spacings)], dtype=np.int32)
