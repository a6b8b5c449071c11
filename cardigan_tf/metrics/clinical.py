"""Clinical indices: LV volumes by Simpson's biplane method of disks, EF, agreement statistics.

Method (as the CAMUS organisers compute it; our own code):

1.-5. The LV cavity of each view is checked and cleaned, its mitral base, apex, long axis and
   ``n_disks`` disk diameters are measured: :mod:`cardigan_tf.metrics.long_axis` (method there).
6. ``V = sum(d2CH * d4CH) * pi / 4 * L / n_disks``, in ml (mm^3 / 1000). The disk height comes
   from the convention ``simpson``:

   - ``"per_phase"`` (default, the ASE/EACVI method of disks): each phase's volume uses its
     own long axis, the longer of its 2CH and 4CH axes (exact for ellipsoids whose long axis
     shortens in systole);
   - ``"camus"``: one common height for ED and ES, the longest of the four axes / n_disks, as
     the CAMUS organisers' script (the ``vital`` library) does; it inflates ESV and lowers EF
     when the LV shortens. Kept for comparison with published CAMUS figures.

Bad masks: :func:`lv_long_axis` and :func:`simpson_biplane` raise :class:`LVMissingError`
(a ValueError) with the reason; :func:`patient_indices` never raises on a bad mask: it returns
NaN volumes/EF and the reason (``"reason"``, "" when all four views were measured).
:func:`iter_patient_indices` / :func:`patients_indices` run many patients with a progress
hook. EF is in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.metrics.long_axis import (
    DEFAULT_BASE_TOL_MM,
    MAX_CONTOUR_POINTS,
    MAX_DEBRIS_FRACTION,
    MAX_HOLE_FRACTION,
    N_DISKS,
    LongAxis,
    LVMissingError,
    lv_long_axis,
    lv_mask_problem,
)

__all__ = ["LVMissingError", "LongAxis", "lv_mask_problem", "lv_long_axis", "disks_volume_ml",
           "phase_volumes", "simpson_biplane", "patient_indices", "iter_patient_indices",
           "patients_indices", "agreement", "N_DISKS", "DEFAULT_BASE_TOL_MM",
           "SIMPSON_CONVENTIONS", "DEFAULT_SIMPSON", "MAX_DEBRIS_FRACTION", "MAX_HOLE_FRACTION",
           "MAX_CONTOUR_POINTS"]

#: Disk-height conventions: see the module docstring.
SIMPSON_CONVENTIONS = ("per_phase", "camus")
DEFAULT_SIMPSON = "per_phase"


def _check_simpson(simpson: str) -> str:
    if simpson not in SIMPSON_CONVENTIONS:
        raise ValueError(f"simpson: expected one of {SIMPSON_CONVENTIONS}, got {simpson!r}")
    return simpson


def disks_volume_ml(d2ch, d4ch, length_mm: float) -> float:
    """Biplane method of disks: ``sum(d2ch * d4ch) * pi / 4 * length_mm / n`` in ml.

    ``d2ch``, ``d4ch``: the n disk diameters (mm) of the two views; ``length_mm``: the long axis
    whose n-th part is the disk height.
    """
    d2 = np.asarray(d2ch, dtype=np.float64)
    d4 = np.asarray(d4ch, dtype=np.float64)
    if d2.shape != d4.shape or d2.ndim != 1 or d2.size == 0:
        raise ValueError(f"disks_volume_ml: expected two equal 1-D diameter arrays, got {d2.shape} and {d4.shape}")
    return float(np.sum(d2 * d4) * math.pi / 4.0 * float(length_mm) / d2.size / 1000.0)


def phase_volumes(diameters: Mapping[tuple[str, str], Sequence[float]],
                  lengths: Mapping[tuple[str, str], float],
                  simpson: str = DEFAULT_SIMPSON) -> dict:
    """EDV, ESV (ml) and EF (%) from the disk diameters and long axes of the four views.

    ``diameters`` / ``lengths``: keyed by (view, phase); a phase lacking a view gets NaN.
    ``simpson``: "per_phase" (each phase's disk height is the longer of its two axes / n) or
    "camus" (the longest of the available axes / n for both phases). This is the one place the
    convention is applied (patients, and the phantom's reference volumes).

    Returns ``{"edv", "esv", "ef", "simpson"}``.
    """
    _check_simpson(simpson)
    nan = float("nan")
    common = max((float(v) for v in lengths.values()), default=nan)
    out = {"edv": nan, "esv": nan, "ef": nan, "simpson": simpson}
    for phase, key in (("ED", "edv"), ("ES", "esv")):
        k2, k4 = ("2CH", phase), ("4CH", phase)
        if not all(k in diameters and k in lengths for k in (k2, k4)):
            continue
        length = common if simpson == "camus" else max(float(lengths[k2]), float(lengths[k4]))
        out[key] = disks_volume_ml(diameters[k2], diameters[k4], length)
    if math.isfinite(out["edv"]) and math.isfinite(out["esv"]) and out["edv"] > 0:
        out["ef"] = 100.0 * (out["edv"] - out["esv"]) / out["edv"]
    return out


def simpson_biplane(mask_2ch, mask_4ch, spacing_2ch, spacing_4ch, step: float | None = None,
                    n_disks: int = N_DISKS, **kwargs) -> float:
    """LV volume (ml) from the 2CH and 4CH masks of one phase by the biplane method of disks.

    ``step`` (mm): disk height; default the longer of the two long axes / ``n_disks`` (the
    per-phase convention). Extra keyword arguments go to :func:`lv_long_axis`.
    Raises LVMissingError (with the reason) if a view has no measurable LV.
    """
    ax2 = lv_long_axis(mask_2ch, spacing_2ch, n_disks=n_disks, name="2CH", **kwargs)
    ax4 = lv_long_axis(mask_4ch, spacing_4ch, n_disks=n_disks, name="4CH", **kwargs)
    length = max(ax2.length_mm, ax4.length_mm) if step is None else float(step) * n_disks
    return disks_volume_ml(ax2.diameters_mm, ax4.diameters_mm, length)


def patient_indices(masks: Mapping[tuple[str, str], np.ndarray],
                    spacings: Mapping[tuple[str, str], Sequence[float]],
                    simpson: str = DEFAULT_SIMPSON, on_missing: str = "nan",
                    n_disks: int = N_DISKS, **kwargs) -> dict:
    """EDV, ESV (ml) and EF (%) of one patient from its four LV masks.

    Args:
        masks: ``{("2CH", "ED"): mask, ("2CH", "ES"): ..., ("4CH", "ED"): ..., ("4CH", "ES"): ...}``.
        spacings: the (row, col) mm spacing of each mask, same keys.
        simpson: "per_phase" (default, clinical) or "camus" (the organisers' common step),
            see :func:`phase_volumes`.
        on_missing: "nan" -> a view without a measurable LV (missing, empty, fragmented, holed,
            cut off, too ragged, no base, or any other failure of its measurement) gives NaN
            for what depends on it, and the reason; never raises on a bad mask.
            "raise" -> LVMissingError / ValueError.
        Extra keyword arguments go to :func:`lv_long_axis`.

    Returns:
        ``{"edv", "esv", "ef", "simpson": convention, "reason": "" or "2CH/ES: why; ...",
        "missing": ["2CH/ES", ...], "lengths": {"2CH/ED": mm, ...}}``.
    """
    _check_simpson(simpson)
    if on_missing not in ("nan", "raise"):
        raise ValueError(f"on_missing: expected 'nan' or 'raise', got {on_missing!r}")
    axes, missing, reasons = {}, [], []
    for view in VIEWS:
        for phase in PHASES:
            key = f"{view}/{phase}"
            if (view, phase) not in masks or (view, phase) not in spacings:
                if on_missing == "raise":
                    raise ValueError(f"masks/spacings: no entry for ({view!r}, {phase!r})")
                missing.append(key)
                reasons.append(f"{key}: no mask")
                continue
            try:
                axes[(view, phase)] = lv_long_axis(masks[(view, phase)], spacings[(view, phase)],
                                                   n_disks=n_disks, name=key, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a bad mask must not stop an evaluation
                if on_missing == "raise":
                    raise
                missing.append(key)
                msg = str(exc)
                if not isinstance(exc, LVMissingError):
                    msg = f"{key}: {type(exc).__name__}: {msg}"
                reasons.append(msg if msg.startswith(key) else f"{key}: {msg}")
    out = phase_volumes({k: a.diameters_mm for k, a in axes.items()},
                        {k: a.length_mm for k, a in axes.items()}, simpson)
    out.update(reason="; ".join(reasons), missing=missing,
               lengths={f"{v}/{p}": a.length_mm for (v, p), a in axes.items()})
    return out


def iter_patient_indices(patients, simpson: str = DEFAULT_SIMPSON,
                         **kwargs) -> Iterator[tuple[Hashable, dict]]:
    """Lazily ``(patient_id, patient_indices(masks, spacings, simpson, **kwargs))`` per patient.

    ``patients``: a mapping ``{patient_id: (masks, spacings)}`` or an iterable of
    ``(patient_id, masks, spacings)``. Wrap the result in any progress bar
    (``len(patients)`` gives its total); never raises on a bad mask (see ``on_missing``).
    """
    _check_simpson(simpson)
    items = ((pid, *v) for pid, v in patients.items()) if isinstance(patients, Mapping) else patients
    for pid, masks, spacings in items:
        yield pid, patient_indices(masks, spacings, simpson=simpson, **kwargs)


def patients_indices(patients, simpson: str = DEFAULT_SIMPSON,
                     progress: Callable[[int, int | None, Hashable], None] | None = None,
                     **kwargs) -> dict:
    """:func:`patient_indices` of many patients: ``{patient_id: result}`` in input order.

    ``patients`` as for :func:`iter_patient_indices`. ``progress(done, total, patient_id)`` is
    called after each patient (``total`` is None when ``patients`` has no length).
    """
    total = len(patients) if hasattr(patients, "__len__") else None
    out = {}
    for done, (pid, res) in enumerate(iter_patient_indices(patients, simpson=simpson, **kwargs), 1):
        out[pid] = res
        if progress is not None:
            progress(done, total, pid)
    return out


def agreement(pred, ref) -> dict:
    """Agreement of paired values, ignoring pairs where either is NaN.

    Returns ``{"corr": Pearson r, "bias": mean(pred - ref), "sd": SD of the differences
    (ddof 1), "mae": mean |pred - ref|, "n": pairs used}``; statistics that need more pairs
    (or non-constant values, for r) are NaN.
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"agreement: pred has {p.size} values, ref has {r.size}")
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    n = int(p.size)
    nan = float("nan")
    diff = p - r
    corr = nan
    if n >= 2 and p.std() > 0 and r.std() > 0:
        corr = float(np.corrcoef(p, r)[0, 1])
    return {"corr": corr, "bias": float(diff.mean()) if n else nan,
            "sd": float(diff.std(ddof=1)) if n >= 2 else nan,
            "mae": float(np.abs(diff).mean()) if n else nan, "n": n}
