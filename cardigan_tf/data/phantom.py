"""Procedural apical echocardiogram phantom: the built-in default dataset of every command.

The anatomy (parameters, shapes, reference volumes) is :mod:`cardigan_tf.data.phantom_anatomy`;
this module renders it and writes datasets.

Each image is an apical two- or four-chamber view rendered from a few analytic shapes, in mm,
on the pixel grid of the requested size:

- a sector-shaped field of view (apex at the top centre, 15 or 17 cm deep by style, black outside);
- the LV cavity (label 1): an ellipse cut at the mitral base, elongated from the apex down;
- the myocardium (label 2): a band around the cavity, open at the mitral base;
- the left atrium (label 3): an ellipse below the base, touching the LV cavity;
- in 4CH, right-heart cavities (RV, RA) that are dark in the image but labelled background.

Per-patient variation: LV length and width, wall thickness, tilt, lateral position, LA size,
ED -> ES contraction (ES: shorter, narrower cavity and thicker wall), image quality (Good /
Medium / Poor) and acquisition style (``A`` / ``B``). Image formation
(:mod:`cardigan_tf.data.phantom_imaging`): echogenicity map, wall dropout, blurred borders,
Rayleigh speckle of the quality's grain size, depth attenuation against the style's TGC,
acoustic shadows, near-field haze, clutter in cavities, noise, gain and log compression.

Masks are exact (computed from the same shapes) and each structure is one connected
component. Everything is deterministic for a ``numpy.random.Generator`` / seed.

Example::

    rng = np.random.default_rng(0)
    image, mask = make_pair(rng, "4CH", "ED", size=256)   # float32 (256,256), uint8 (256,256)
    samples = make_patient(3, seed=0)                     # 4 Samples: 2CH/4CH x ED/ES
    write_h5("phantom.h5", n_patients=50)                 # seed layout + phantom.png preview
    write_h5("shift.h5", n_patients=50,                   # poorer images, test patients in style B
             phantom=PhantomConfig(quality_mix=[0.2, 0.5, 0.3], style="A", test_style="B"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from cardigan_tf import viz
from cardigan_tf.data.h5layout import H5Writer
from cardigan_tf.data.phantom_anatomy import LA_CENTRE, draw_patient, frame_geometry, simpson_volumes
from cardigan_tf.data.phantom_imaging import PhantomConfig, grid, render, spacing_for
from cardigan_tf.data.sample import Sample
from cardigan_tf.data.splits import seeded_split
from cardigan_tf.files import refuse_overwrite
from cardigan_tf.labels import LA, LV, MYO, PHASES, VIEWS

__all__ = ["make_pair", "make_patient", "write_h5", "phantom_attrs", "draw_patient", "simpson_volumes",
           "spacing_for", "PhantomConfig"]


# ----------------------------------------------------------------------------- rendering
def _labels(g: dict[str, float], size: int, view: str, v: dict[str, float],
            style: str = "A") -> tuple[np.ndarray, np.ndarray]:
    """Exact label mask and a tissue-class map (0 tissue, 1 thin walls, 2 pericardium, 3 myo, 4 blood)."""
    G = grid(size, style)
    u8 = np.uint8
    rows, cols = _heart_box(g, size, view, v, style)  # every labelled or class > 0 pixel lies inside
    full_mask, full_cls = np.zeros((size, size), u8), np.zeros((size, size), u8)
    dx, dy = G["X"][rows, cols] - g["ax"], G["Y"][rows, cols] - g["ay"]
    s = dx * g["ux"] + dy * g["uy"]
    t = dx * g["nx"] + dy * g["ny"]
    c, W, T, L = g["c"], g["W"], g["T"], g["L"]
    above = s < L
    below = ~above
    q_in = ((s - c) * (1.0 / c)) ** 2 + (t * (1.0 / W)) ** 2
    q_out = ((s - c) * (1.0 / (c + g["t_apex"]))) ** 2 + (t * (1.0 / (W + T))) ** 2
    cavity = above & (q_in <= 1.0)
    outer = above & (q_out <= 1.0)
    myo = outer & ~cavity
    la_a, la_b = g["la_a"], g["la_b"]
    tl = t - g["la_e"] - g["la_k"] * (s - L)
    q_la = ((s - (L + LA_CENTRE * la_a)) * (1.0 / la_a)) ** 2 + (tl * (1.0 / la_b)) ** 2
    la = below & (q_la <= 1.0)
    sector = G["sector"][rows, cols]
    mask = (cavity & sector).view(u8) * u8(LV) + (myo & sector).view(u8) * u8(MYO) + (la & sector).view(u8) * u8(LA)
    full_mask[rows, cols] = mask
    _keep_largest(full_mask)
    blood = cavity | la
    walls = below & (q_la <= (1.0 + 2.5 / la_b) ** 2)
    if view == "4CH":
        # right ventricle hugging the septum (t < 0), right atrium below it; both labelled background
        wr, s0 = v["rv_width"], v["rv_start"] * L
        tc = -(W + T) - 0.35 * wr
        q_rv = ((s - L) * (1.0 / (L - s0))) ** 2 + ((t - tc) * (1.0 / wr)) ** 2
        ra_a, ra_b = v["ra_a"], v["ra_b"]
        q_ra = ((s - (L + LA_CENTRE * ra_a)) * (1.0 / ra_a)) ** 2 + ((tl + (la_b + ra_b + 3.0)) * (1.0 / ra_b)) ** 2
        rv = above & (q_rv <= 1.0) & (q_out > (1.0 + 1.5 / (W + T)) ** 2)
        ra = below & (q_ra <= 1.0) & (q_la > (1.0 + 3.0 / la_b) ** 2)
        blood |= rv | ra
        walls |= (above & (q_rv <= (1.0 + 4.0 / wr) ** 2)) | (below & (q_ra <= (1.0 + 2.5 / ra_b) ** 2))
    cls = walls.view(u8).copy()
    np.maximum(cls, (above & (q_out <= (1.0 + 3.0 / (W + T)) ** 2)).view(u8) * u8(2), out=cls)
    np.maximum(cls, myo.view(u8) * u8(3), out=cls)
    np.maximum(cls, blood.view(u8) * u8(4), out=cls)
    full_cls[rows, cols] = cls
    return full_mask, full_cls


def _heart_box(g: dict[str, float], size: int, view: str, v: dict[str, float], style: str) -> tuple[slice, slice]:
    """Pixel rows and columns of a box that holds every structure of :func:`_labels` (cavity,
    myocardium and pericardium band, LA and its wall, in 4CH the RV and RA with their walls):
    a rectangle in the (s along the axis, t across) frame around all their ellipses, mapped to
    the image, plus 2 pixels. Rendering the labels there only is ~2x cheaper than on the grid."""
    c, W, T, L, ta = g["c"], g["W"], g["T"], g["L"], g["t_apex"]
    wall = 1.0 + 3.0 / (W + T)
    s_lo, s_hi = c - (c + ta) * wall, L
    t_half = W + T + 3.0
    la_a, la_b = g["la_a"], g["la_b"]
    s_hi = max(s_hi, L + LA_CENTRE * la_a + la_a * (1.0 + 2.5 / la_b))
    t_lo, t_hi = -t_half, t_half
    la_t = la_b + 2.5
    if view == "4CH":
        wr = v["rv_width"]
        tc = -(W + T) - 0.35 * wr
        s_lo = min(s_lo, L - (L - v["rv_start"] * L) * (1.0 + 4.0 / wr))
        t_lo = min(t_lo, tc - wr - 4.0)
        ra_a, ra_b = v["ra_a"], v["ra_b"]
        s_hi = max(s_hi, L + LA_CENTRE * ra_a + ra_a * (1.0 + 2.5 / ra_b))
        la_t = max(la_t, la_b + 2.0 * ra_b + 5.5)  # the RA centre sits la_b + ra_b + 3 off the LA's
    shift = abs(g["la_k"]) * (s_hi - L) + abs(g["la_e"])  # sheared atrial frame: t = tl + e + k (s - L)
    t_lo, t_hi = min(t_lo, -la_t - shift), max(t_hi, la_t + shift)
    ss = np.array([s_lo, s_lo, s_hi, s_hi])
    tt = np.array([t_lo, t_hi, t_lo, t_hi])
    x = g["ax"] + ss * g["ux"] + tt * g["nx"]
    y = g["ay"] + ss * g["uy"] + tt * g["ny"]
    sr, sc = spacing_for(size, style)
    c0, c1 = x.min() / sc + size / 2 - 0.5, x.max() / sc + size / 2 - 0.5
    r0, r1 = y.min() / sr - 0.5, y.max() / sr - 0.5
    clip = lambda a: int(min(max(a, 0), size))  # noqa: E731
    return slice(clip(np.floor(r0) - 2), clip(np.ceil(r1) + 3)), slice(clip(np.floor(c0) - 2), clip(np.ceil(c1) + 3))


def _keep_largest(mask: np.ndarray) -> None:
    """Drop stray pixels (diagonal-only corners of the rasterised shapes): one component per label."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # a view: labelling the box is enough
    for lab in (LV, MYO, LA):
        comp, n = ndimage.label(box == lab)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            box[(comp > 0) & (comp != 1 + int(np.argmax(sizes)))] = 0


def _pair_from_params(rng: np.random.Generator, p: dict[str, Any], view: str, phase: str, size: int):
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    if int(size) < 32:
        raise ValueError(f"size: expected at least 32 pixels, got {size}")
    v = p["views"][view]
    mask, cls = _labels(frame_geometry(p, v, phase), int(size), view, v, p["style"])
    return render(rng, p, cls, int(size), view), mask


def make_pair(rng: np.random.Generator, view: str, phase: str, size: int = 256,
              phantom: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32 (size, size) in [0, 1], mask uint8 (size, size)) of a new random
    patient (quality drawn from ``phantom.quality_mix``, style ``phantom.style``)."""
    phantom = _checked(phantom)
    return _pair_from_params(rng, draw_patient(rng, phantom.quality_mix, phantom.style), view, phase, size)


def make_patient(index: int, seed: int = 0, size: int = 256, phantom: PhantomConfig | None = None,
                 split: str = "train") -> list[Sample]:
    """The four frames (2CH/4CH x ED/ES) of phantom patient ``index`` (deterministic), its
    quality drawn from ``phantom.quality_mix`` and acquired in the style of ``split``
    (``phantom.style_of(split)``). ``meta["style"]`` names the style."""
    phantom = _checked(phantom)
    rng = np.random.default_rng([int(seed), int(index)])
    style = phantom.style_of(split)
    p = draw_patient(rng, phantom.quality_mix, style)
    vols = simpson_volumes(p)
    meta = {"phantom": _public_params(p), "cfg": {"ImageQuality": p["quality"], **{k: round(x, 3) for k, x in vols.items()}},
            "source_layout": "phantom", "seed": int(seed), "index": int(index), "style": style}
    out = []
    for view in VIEWS:
        for phase in PHASES:
            image, mask = _pair_from_params(rng, p, view, phase, size)
            out.append(Sample(image=image[..., None], mask=mask, patient=f"phantom{index:04d}", view=view, phase=phase,
                              spacing=spacing_for(size, style), original_shape=(int(size), int(size)),
                              quality=p["quality"], meta=dict(meta)))
    return out


def _checked(phantom: PhantomConfig | None) -> PhantomConfig:
    phantom = PhantomConfig() if phantom is None else phantom
    phantom.validate()
    return phantom


def _public_params(p: dict[str, Any]) -> dict[str, Any]:
    def rnd(d):
        if isinstance(d, dict):
            return {k: rnd(x) for k, x in d.items()}
        if isinstance(d, (list, tuple)):
            return [rnd(x) for x in d]
        return round(d, 4) if isinstance(d, float) else d
    return rnd(p)


def phantom_attrs(n_patients: int, seed: int, size: int, phantom: PhantomConfig | None = None) -> dict[str, Any]:
    """The root attributes that describe a phantom file (what :func:`write_h5` records and what
    a written file is matched on before it is reused)."""
    return {"kind": "phantom", "size": int(size), "seed": int(seed), "n_patients": int(n_patients),
            **_checked(phantom).attrs()}


def write_h5(path: str | Path, n_patients: int = 50, seed: int = 0, size: int = 256,
             overwrite: bool = False, preview: bool = True, phantom: PhantomConfig | None = None,
             fractions: Sequence[float] | None = None) -> Path:
    """Write ``n_patients`` phantom patients in the seed HDF5 layout (seeded split: 80/10/10, or
    ``fractions`` of train, valid and test, :func:`cardigan_tf.data.splits.seeded_split`).

    ``phantom``: the quality mix and the acquisition styles (the test patients in
    ``phantom.test_style``). Each view group records its patient's ``quality`` and ``style``.
    A preview grid (images | colour masks | overlays) is written to ``path.with_suffix(".png")``.
    """
    path = Path(path)
    refuse_overwrite(path, overwrite, "dataset")
    if int(n_patients) < 1:
        raise ValueError(f"n_patients: expected at least 1, got {n_patients}")
    phantom = _checked(phantom)
    ids = [f"phantom{i:04d}" for i in range(int(n_patients))]
    splits = seeded_split(ids, seed) if fractions is None else seeded_split(ids, seed, fractions)
    split_of = {pid: name for name, pids in splits.items() for pid in pids}
    method = f"seeded:{int(seed)}" + ("" if fractions is None else f" fractions {[float(f) for f in fractions]}")
    attrs = {"source_layout": "phantom", **phantom_attrs(n_patients, seed, size, phantom),
             "split_method": method, "n_skipped": 0}
    shown: list[Sample] = []
    it = tqdm(range(int(n_patients)), desc="phantom", unit="patient", leave=False)
    with H5Writer(path, attrs=attrs, overwrite=overwrite) as w:
        for i in it:
            split = split_of[ids[i]]
            samples = make_patient(i, seed=seed, size=size, phantom=phantom, split=split)
            if len(shown) < 8:
                shown.extend(samples[:8 - len(shown)])
            for view in VIEWS:
                vs = [s for s in samples if s.view == view]
                w.write_view(split, ids[i], view,
                             np.stack([s.image[..., 0] for s in vs]), np.stack([s.mask for s in vs]),
                             phases=[s.phase for s in vs], spacing=vs[0].spacing, original_shape=vs[0].original_shape,
                             quality=vs[0].quality, cfg=vs[0].meta["cfg"],
                             attrs={"style": vs[0].meta["style"], "phantom": vs[0].meta["phantom"]})
    if preview:
        viz.save_sample_grid(path.with_suffix(".png"), {
            "image": [s.image for s in shown],
            "mask": [s.mask for s in shown],
            "overlay": [viz.overlay(s.image, s.mask, contour_only=True) for s in shown],
        }, max_rows=8)
    return path
