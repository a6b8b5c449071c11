"""Procedural apical echocardiogram phantom: the built-in default dataset of every command.

The anatomy (parameters, shapes, reference volumes) is :mod:`cardigan_tf.data.phantom_anatomy`;
this module renders it and writes datasets.

Each image is an apical two- or four-chamber view rendered from a few analytic shapes, in mm,
on the pixel grid of the requested size:

- a sector-shaped field of view (apex at the top centre, ~15 cm deep, black outside);
- the LV cavity (label 1): an ellipse cut at the mitral base, elongated from the apex down;
- the myocardium (label 2): a band around the cavity, open at the mitral base;
- the left atrium (label 3): an ellipse below the base, touching the LV cavity;
- in 4CH, right-heart cavities (RV, RA) that are dark in the image but labelled background.

Per-patient variation: LV length and width, wall thickness, tilt, lateral position, LA size,
ED -> ES contraction (ES: shorter, narrower cavity and thicker wall), image quality. Image
formation: echogenicity map, blurred borders, multiplicative Rayleigh-like speckle, depth
attenuation, near-field haze, clutter in cavities, random gain, log compression.

Masks are exact (computed from the same shapes) and each structure is one connected
component. Everything is deterministic for a ``numpy.random.Generator`` / seed.

Example::

    rng = np.random.default_rng(0)
    image, mask = make_pair(rng, "4CH", "ED", size=256)   # float32 (256,256), uint8 (256,256)
    samples = make_patient(3, seed=0)                     # 4 Samples: 2CH/4CH x ED/ES
    write_h5("phantom.h5", n_patients=50)                 # seed layout + phantom.png preview
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtri
from tqdm import tqdm

from cardigan_tf import viz
from cardigan_tf.data.h5layout import H5Writer
from cardigan_tf.data.phantom_anatomy import (
    DEPTH_MM,
    LA_CENTRE,
    SECTOR_HALF_ANGLE,
    SECTOR_RADIUS_MM,
    draw_patient,
    frame_geometry,
    simpson_volumes,
    spacing_for,
)
from cardigan_tf.data.sample import Sample
from cardigan_tf.data.splits import seeded_split
from cardigan_tf.files import refuse_overwrite
from cardigan_tf.labels import LA, LV, MYO, PHASES, VIEWS

__all__ = ["make_pair", "make_patient", "write_h5", "draw_patient", "simpson_volumes", "spacing_for"]


@lru_cache(maxsize=8)
def _grid(size: int) -> dict[str, np.ndarray]:
    sr, sc = spacing_for(size)
    y = ((np.arange(size) + 0.5) * sr).astype(np.float32)
    x = ((np.arange(size) + 0.5 - size / 2) * sc).astype(np.float32)
    Y, X = np.meshgrid(y, x, indexing="ij")
    r = np.hypot(X, Y)
    th = np.arctan2(X, Y)
    sector = (r <= SECTOR_RADIUS_MM) & (np.abs(th) <= SECTOR_HALF_ANGLE)
    for a in (X, Y, r, th, sector):
        a.setflags(write=False)
    return {"X": X, "Y": Y, "r": r, "th": th, "sector": sector}


# ----------------------------------------------------------------------------- rendering
def _labels(g: dict[str, float], size: int, view: str, v: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Exact label mask and a tissue-class map (0 tissue, 1 thin walls, 2 pericardium, 3 myo, 4 blood)."""
    G = _grid(size)
    u8 = np.uint8
    rows, cols = _heart_box(g, size, view, v)  # every labelled or class > 0 pixel lies inside
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


def _heart_box(g: dict[str, float], size: int, view: str, v: dict[str, float]) -> tuple[slice, slice]:
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
    sr, sc = spacing_for(size)
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


@lru_cache(maxsize=8)
def _upsampler(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Linear interpolation from a coarse k-point grid (~20 mm cells): left index, weight, k."""
    k = max(4, int(round(DEPTH_MM / 20.0)) + 1)
    pos = (np.arange(size) + 0.5) / size * (k - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), k - 2)
    w = (pos - i0).astype(np.float32)
    i0.setflags(write=False)
    w.setflags(write=False)
    return i0, w, k


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency N(0, ~1) field (size, size), bilinear from a coarse grid (no BLAS threads)."""
    i0, w, k = _upsampler(size)
    coarse = rng.standard_normal((k, k), dtype=np.float32)
    rows = coarse[i0] * (1.0 - w)[:, None] + coarse[i0 + 1] * w[:, None]
    return rows[:, i0] * (1.0 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


def _render(rng: np.random.Generator, p: dict[str, Any], cls: np.ndarray, size: int) -> np.ndarray:
    G = _grid(size)
    sr, sc = spacing_for(size)
    f32 = np.float32
    poor = {"Good": 0.0, "Medium": 0.5, "Poor": 1.0}[p["quality"]]
    # echogenicity map: level * (1 + texture * low) + clutter * max(low, 0), per tissue class
    low = _smooth_noise(rng, size)
    level = np.array([p["tissue_level"], 0.5, 0.9, p["myo_level"], 0.02], f32)
    texture = np.array([0.35, 0.2, 0.1, 0.15, 0.0], f32)
    clutter = np.array([0.0, 0.0, 0.0, 0.0, 0.05 + 0.08 * poor], f32)
    # np.take: ~3x cheaper than fancy indexing; level * (1 + texture * low) = level + (level * texture) * low
    E = np.take(level, cls) + np.take(level * texture, cls) * low + np.take(clutter, cls) * np.maximum(low, 0.0)
    np.maximum(E, 0.0, out=E)
    # blurred borders
    sig = 1.2 + 0.6 * poor
    E = _blur(E, sig / sr, axis=0)
    E = _blur(E, sig / sc, axis=1)
    # multiplicative Rayleigh-like speckle (inverse-CDF draws), grains elongated laterally
    ray = _draw(rng, _rayleigh_table(), (size, size + 1))
    speck = (ray[:, 1:] + ray[:, :-1]) * f32(0.5 / 1.2533)
    r = G["r"]
    haze = f32(0.25 + 0.2 * poor) * _haze(size)
    I = E * speck * np.exp(-f32(p["atten"]) * r) + haze
    if poor > 0:
        I += f32(0.04 * poor) * _draw(rng, _half_normal_table(), (size, size))
    comp = f32(5.0 * p["gain"])
    img = np.log1p(comp * I) * f32(1.0 / np.log1p(5.0))
    np.clip(img, 0.0, 1.0, out=img)
    img *= G["sector"]
    return img


def _blur(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Approximate Gaussian blur along ``axis``: two passes of a box of ~sigma*sqrt(6) taps
    (edge-replicated borders). Each box sum is built from pairwise sums of doubling width
    (~log2(taps) + 1 adds instead of taps - 1)."""
    k = max(1, int(round(sigma * 1.2)))  # box half-width; two boxes of 2k+1 taps ~ sigma
    for _ in range(2):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k, k)
        x = _box_sum(np.pad(x, pad, mode="edge"), 2 * k + 1, axis) * np.float32(1.0 / (2 * k + 1))
    return x


def _box_sum(xp: np.ndarray, taps: int, axis: int) -> np.ndarray:
    """Sums of ``taps`` consecutive values along ``axis`` (output shorter by taps - 1)."""
    n_out = xp.shape[axis] - taps + 1
    acc, off, part, width, left = None, 0, xp, 1, taps
    while left:
        if left & 1:  # add the sums of `width` values starting at `off`
            term = _slice(part, off, off + n_out, axis)
            acc = term.copy() if acc is None else acc + term
            off += width
        left >>= 1
        if left:  # pairwise: sums of 2 * width values
            m = part.shape[axis] - width
            part = _slice(part, 0, m, axis) + _slice(part, width, width + m, axis)
            width *= 2
    return acc


def _slice(x: np.ndarray, a: int, b: int, axis: int) -> np.ndarray:
    return x[a:b] if axis == 0 else x[:, a:b]


@lru_cache(maxsize=1)
def _rayleigh_table() -> np.ndarray:
    """sqrt(-2 ln u) at the 65,536 midpoints u = (i + 1/2) / 65536: inverse-CDF Rayleigh(1)."""
    u = (np.arange(65536) + 0.5) / 65536.0
    return np.sqrt(-2.0 * np.log(u)).astype(np.float32)


@lru_cache(maxsize=1)
def _half_normal_table() -> np.ndarray:
    """|N(0, 1)| by its inverse CDF at the 65,536 midpoints: Phi^-1((1 + u) / 2)."""
    u = (np.arange(65536) + 0.5) / 65536.0
    return ndtri(0.5 + 0.5 * u).astype(np.float32)


def _draw(rng: np.random.Generator, table: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``shape`` draws of the distribution tabulated by ``table`` (inverse CDF on a 16-bit grid:
    the same distribution up to the grid, tails cut beyond probability 2^-17) from 16 random
    bits each, ~3x cheaper than drawing floats and transforming them."""
    bits = np.frombuffer(rng.bytes(2 * shape[0] * shape[1]), np.uint16).reshape(shape)
    return np.take(table, bits)


@lru_cache(maxsize=8)
def _haze(size: int) -> np.ndarray:
    h = np.exp(-_grid(size)["r"] / np.float32(9.0))
    h.setflags(write=False)
    return h


def _pair_from_params(rng: np.random.Generator, p: dict[str, Any], view: str, phase: str, size: int):
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    if phase not in PHASES:
        raise ValueError(f"phase: expected one of {PHASES}, got {phase!r}")
    if int(size) < 32:
        raise ValueError(f"size: expected at least 32 pixels, got {size}")
    v = p["views"][view]
    mask, cls = _labels(frame_geometry(p, v, phase), int(size), view, v)
    return _render(rng, p, cls, int(size)), mask


def make_pair(rng: np.random.Generator, view: str, phase: str, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32 (size, size) in [0, 1], mask uint8 (size, size)) of a new random patient."""
    return _pair_from_params(rng, draw_patient(rng), view, phase, size)


def make_patient(index: int, seed: int = 0, size: int = 256) -> list[Sample]:
    """The four frames (2CH/4CH x ED/ES) of phantom patient ``index`` (deterministic)."""
    rng = np.random.default_rng([int(seed), int(index)])
    p = draw_patient(rng)
    vols = simpson_volumes(p)
    meta = {"phantom": _public_params(p), "cfg": {"ImageQuality": p["quality"], **{k: round(x, 3) for k, x in vols.items()}},
            "source_layout": "phantom", "seed": int(seed), "index": int(index)}
    out = []
    for view in VIEWS:
        for phase in PHASES:
            image, mask = _pair_from_params(rng, p, view, phase, size)
            out.append(Sample(image=image[..., None], mask=mask, patient=f"phantom{index:04d}", view=view, phase=phase,
                              spacing=spacing_for(size), original_shape=(int(size), int(size)), quality=p["quality"],
                              meta=dict(meta)))
    return out


def _public_params(p: dict[str, Any]) -> dict[str, Any]:
    def rnd(d):
        return {k: (rnd(x) if isinstance(x, dict) else (round(x, 4) if isinstance(x, float) else x)) for k, x in d.items()}
    return rnd(p)


def write_h5(path: str | Path, n_patients: int = 50, seed: int = 0, size: int = 256,
             overwrite: bool = False, preview: bool = True) -> Path:
    """Write ``n_patients`` phantom patients in the seed HDF5 layout (seeded 80/10/10 split).

    A preview grid (images | colour masks | overlays) is written to ``path.with_suffix(".png")``.
    """
    path = Path(path)
    refuse_overwrite(path, overwrite, "dataset")
    if int(n_patients) < 1:
        raise ValueError(f"n_patients: expected at least 1, got {n_patients}")
    ids = [f"phantom{i:04d}" for i in range(int(n_patients))]
    split_of = {pid: name for name, pids in seeded_split(ids, seed).items() for pid in pids}
    attrs = {"source_layout": "phantom", "kind": "phantom", "size": int(size), "seed": int(seed),
             "n_patients": int(n_patients), "split_method": f"seeded:{int(seed)}", "n_skipped": 0}
    shown: list[Sample] = []
    it = tqdm(range(int(n_patients)), desc="phantom", unit="patient", leave=False)
    with H5Writer(path, attrs=attrs, overwrite=overwrite) as w:
        for i in it:
            samples = make_patient(i, seed=seed, size=size)
            if len(shown) < 8:
                shown.extend(samples[:8 - len(shown)])
            for view in VIEWS:
                vs = [s for s in samples if s.view == view]
                w.write_view(split_of[ids[i]], ids[i], view,
                             np.stack([s.image[..., 0] for s in vs]), np.stack([s.mask for s in vs]),
                             phases=[s.phase for s in vs], spacing=vs[0].spacing, original_shape=vs[0].original_shape,
                             quality=vs[0].quality, cfg=vs[0].meta["cfg"], attrs={"phantom": vs[0].meta["phantom"]})
    if preview:
        viz.save_sample_grid(path.with_suffix(".png"), {
            "image": [s.image for s in shown],
            "mask": [s.mask for s in shown],
            "overlay": [viz.overlay(s.image, s.mask, contour_only=True) for s in shown],
        }, max_rows=8)
    return path
