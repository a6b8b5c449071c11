"""The phantom's anatomy: per-patient and per-view parameters, the shapes of one frame, and
the phantom's reference volumes (see :mod:`cardigan_tf.data.phantom` for the whole phantom).

All lengths are in mm on the image plane: rows are depth from the probe at the top centre,
columns are lateral positions from the centre line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cardigan_tf.data.phantom_imaging import DEFAULT_QUALITY_MIX, STYLES, draw_imaging
from cardigan_tf.labels import PHASES, QUALITIES, VIEWS
from cardigan_tf.metrics.clinical import phase_volumes

__all__ = ["LA_CENTRE", "draw_patient", "frame_geometry", "lv_half_width", "simpson_volumes"]

LA_CENTRE = 0.55  # atrial ellipse centre below the base, in half-lengths: wide mitral opening


# ----------------------------------------------------------------------------- parameters
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _in_sector(px: np.ndarray, py: np.ndarray, style: str, margin: float = 2.0) -> bool:
    acq = STYLES[style]
    r = np.hypot(px, py)
    th = np.arctan2(px, py)
    return bool(np.all(r <= acq.radius_mm - margin) and np.all(np.abs(th) <= acq.half_angle - margin / np.maximum(r, 1.0)))


_VIEW_RANGES = {  # name: (2CH range, 4CH range); the 4CH LV sits right of the RV
    "tilt_deg": ((-4, 4), (2, 9)),  # added to the patient's tilt
    "apex_depth": ((20, 32), (20, 32)),
    "x0": ((-4, 4), (-2, 6)),
    "w_ratio": ((0.95, 1.08), (0.88, 1.0)),
    "l_ratio": ((0.97, 1.03), (0.97, 1.03)),
    "la_offset": ((-0.1, 0.1), (-0.1, 0.1)),
    "la_shear": ((-0.25, 0.25), (-0.25, 0.25)),
    "rv_width": ((13, 20), (13, 20)),
    "rv_start": ((0.25, 0.4), (0.25, 0.4)),
    "ra_a": ((15, 24), (15, 24)),
    "ra_b": ((14, 20), (14, 20)),
}


def _view_params(rng: np.random.Generator, view: str, base: dict[str, Any]) -> dict[str, float]:
    """Position and shape of one view; redrawn (apex 1 mm deeper each time) until the LV and
    myocardium of both phases lie inside the sector of the patient's style."""
    j = VIEWS.index(view)
    lo = np.array([r[j][0] for r in _VIEW_RANGES.values()])
    hi = np.array([r[j][1] for r in _VIEW_RANGES.values()])
    for attempt in range(60):
        v = dict(zip(_VIEW_RANGES, (float(x) for x in rng.uniform(lo, hi))))
        v["tilt_deg"] += base["tilt_deg"]
        v["apex_depth"] += 1.0 * attempt
        if all(_myo_inside(frame_geometry(base, v, phase), base["style"]) for phase in PHASES):
            return v
    return v  # pragma: no cover - the deeper apex guarantees success long before


_COS33, _SIN33 = np.cos(np.linspace(0, np.pi, 33)), np.sin(np.linspace(0, np.pi, 33))


def _myo_inside(g: dict[str, float], style: str) -> bool:
    s = g["c"] - (g["c"] + g["t_apex"]) * _COS33
    t = (g["W"] + g["T"]) * _SIN33
    keep = s <= g["L"]
    s, t = np.concatenate([s[keep], s[keep]]), np.concatenate([t[keep], -t[keep]])
    px = g["ax"] + s * g["ux"] + t * g["nx"]
    py = g["ay"] + s * g["uy"] + t * g["ny"]
    return _in_sector(px, py, style)


def draw_patient(rng: np.random.Generator, quality_mix=DEFAULT_QUALITY_MIX, style: str = "A") -> dict[str, Any]:
    """Per-patient parameters (mm, degrees, ratios) shared by both views and phases: the anatomy,
    the image quality (drawn with the probabilities ``quality_mix`` of Good, Medium, Poor), the
    acquisition ``style`` and, per view, what stays put between its frames (``imaging``).

    The quality takes one uniform draw whatever the mix, so a patient's anatomy does not depend
    on ``quality_mix``; it depends on ``style`` only where a view had to be redrawn to fit the
    style's sector."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {list(STYLES)}, got {style!r}")
    p: dict[str, Any] = {
        "L": _u(rng, 68, 90),  # ED cavity length, apex to mitral base
        "W": _u(rng, 19, 26),  # ED cavity half-width
        "kc": _u(rng, 0.62, 0.74),  # ellipse centre along the axis (fraction of L)
        "T": _u(rng, 6.5, 11.0),  # ED wall thickness
        "tilt_deg": _u(rng, -8, 5),
        "es_l": _u(rng, 0.82, 0.95),
        "es_w": _u(rng, 0.66, 0.9),
        "es_t": _u(rng, 1.25, 1.6),
        "la_a": _u(rng, 17, 28),  # LA half-length along the axis
        "la_b": _u(rng, 1.1, 1.35),  # LA half-width / (0.85 * ED cavity half-width)
        "la_es": _u(rng, 1.05, 1.22),
        "quality": str(rng.choice(QUALITIES, p=np.asarray(quality_mix, np.float64) / np.sum(quality_mix))),
        "gain": _u(rng, 0.8, 1.25),
        "atten": _u(rng, 0.002, 0.008),
        "myo_level": _u(rng, 0.5, 0.75),
        "tissue_level": _u(rng, 0.18, 0.32),
    }
    p["style"] = style
    p["views"] = {view: _view_params(rng, view, p) for view in VIEWS}
    p["imaging"] = {view: draw_imaging(rng, p["quality"], style) for view in VIEWS}
    return p


def frame_geometry(p: dict[str, Any], v: dict[str, float], phase: str) -> dict[str, float]:
    """The shapes of one frame (lengths in mm, axis directions) from the patient's and view's parameters."""
    es = phase == "ES"
    L = p["L"] * v["l_ratio"] * (p["es_l"] if es else 1.0)
    W = p["W"] * v["w_ratio"] * (p["es_w"] if es else 1.0)
    T = p["T"] * (p["es_t"] if es else 1.0)
    la_b = p["la_b"] * 0.85 * p["W"] * v["w_ratio"]
    phi = np.deg2rad(v["tilt_deg"])
    ux, uy = np.sin(phi), np.cos(phi)  # apex -> base
    nx, ny = np.cos(phi), -np.sin(phi)  # lateral (image right when untilted)
    g = {
        "L": L, "W": W, "T": T, "c": p["kc"] * L, "t_apex": 0.8 * T,
        "ax": v["x0"], "ay": v["apex_depth"],
        "ux": ux, "uy": uy, "nx": nx, "ny": ny,
        "la_a": p["la_a"] * (p["la_es"] if es else 1.0), "la_b": la_b,
        "la_e": v["la_offset"] * la_b, "la_k": v["la_shear"],
    }
    return {k: float(x) for k, x in g.items()}  # python floats keep the float32 grids float32


def lv_half_width(g: dict[str, float], s: np.ndarray) -> np.ndarray:
    """Cavity half-width (mm) at distance ``s`` from the apex along the LV axis."""
    z = np.clip((s - g["c"]) / g["c"], -1.0, 1.0)
    return g["W"] * np.sqrt(1.0 - z * z)


def simpson_volumes(p: dict[str, Any], n_discs: int = 20) -> dict[str, float]:
    """Reference EDV/ESV (ml) and EF (%) of the phantom by the biplane method of discs.

    Exact disc diameters of the analytic cavity (at the discs' mid-heights), summed by the
    evaluation's own code path and default convention (``metrics.clinical.phase_volumes``,
    per-phase long axis: the longer of each phase's 2CH and 4CH axes).
    """
    diameters, lengths = {}, {}
    f = (np.arange(n_discs) + 0.5) / n_discs
    for phase in PHASES:
        for view in VIEWS:
            g = frame_geometry(p, p["views"][view], phase)
            diameters[(view, phase)] = 2.0 * lv_half_width(g, f * g["L"])
            lengths[(view, phase)] = g["L"]
    v = phase_volumes(diameters, lengths)
    return {"LVedv": v["edv"], "LVesv": v["esv"], "LVef": v["ef"]}
