"""Image formation of the echo phantom: acquisition styles, image-quality levels, rendering.

:mod:`cardigan_tf.data.phantom` draws the labels and tissue classes of a frame
(:mod:`cardigan_tf.data.phantom_anatomy` its shapes); this module turns the tissue classes into
an ultrasound-like image and holds the two things a phantom dataset is configured with:

- **image quality** (``Good`` / ``Medium`` / ``Poor``, as CAMUS' ``ImageQuality``), drawn per
  patient from :attr:`PhantomConfig.quality_mix` (default 35 / 50 / 15 %, close to CAMUS' 500
  patients). The levels differ in blood-tissue contrast, haze in the cavities (clutter) and in
  the near field, wall dropout, acoustic shadowing, speckle grain size, border blur and noise
  (:data:`QUALITY_LEVELS`).
- **acquisition style** (:data:`STYLES`, ``A`` and ``B``: two scanner presets, as "site A /
  site B" in domain-shift studies): image depth and sector width (hence pixel spacing and the
  size of the heart in the image), gain, time-gain compensation (TGC), log compression and
  electronic noise. :attr:`PhantomConfig.style` is the style of the training and validation
  patients, :attr:`PhantomConfig.test_style` that of the test patients (default: the same).

Speckle is physical: a complex Gaussian field correlated over the style's grain size (the
resolution cell, mm), its magnitude (Rayleigh) averaged over the pixel, so that a grain smaller
than a pixel gives a smoother pixel (``std / mean = 0.52 / sqrt(grains per pixel)``) and a
phantom rendered at 256 and area-resized to 64 looks like one rendered at 64.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import ndtri

from cardigan_tf.config import ConfigError
from cardigan_tf.labels import QUALITIES

__all__ = ["Acquisition", "QualityLevel", "STYLES", "QUALITY_LEVELS", "DEFAULT_QUALITY_MIX", "PhantomConfig",
           "spacing_for", "grid", "draw_imaging", "render"]


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """A scanner preset: field of view, gain chain, noise."""

    depth_mm: float  # image height (rows)
    width_mm: float  # image width (cols)
    radius_mm: float  # sector radius from the probe at the top centre
    half_angle_deg: float  # sector half-width
    gain: float  # overall gain, times the patient's
    tgc_per_mm: float  # time-gain compensation: intensity x exp(tgc * depth), against the tissue's attenuation
    compression: float  # log compression log1p(c I) / log1p(c): higher = brighter, flatter
    noise: float  # additive electronic noise (half-normal scale, before compression)

    @property
    def half_angle(self) -> float:
        return math.radians(self.half_angle_deg)


STYLES: dict[str, Acquisition] = {
    # A: 15 cm deep, 71 degree sector, no TGC beyond the patient's attenuation, little noise
    "A": Acquisition(depth_mm=150.0, width_mm=170.0, radius_mm=146.0, half_angle_deg=35.5, gain=1.0,
                     tgc_per_mm=0.0, compression=5.0, noise=0.01),
    # B: 17 cm deep (a smaller heart in the image), 60 degree sector, low gain with a steep TGC
    # (dark near field, bright far field), harder compression, more noise
    "B": Acquisition(depth_mm=170.0, width_mm=170.0, radius_mm=166.0, half_angle_deg=30.0, gain=0.7,
                     tgc_per_mm=0.009, compression=12.0, noise=0.05),
}


@dataclasses.dataclass(frozen=True)
class QualityLevel:
    """How one image-quality level renders."""

    contrast: float  # blood-tissue contrast: 1 = anechoic blood; less raises blood towards myocardium
    clutter: float  # haze inside the cavities (times the positive part of a smooth field)
    haze: float  # near-field haze amplitude ...
    haze_mm: float  # ... and its depth scale (mm)
    blur_mm: float  # border blur (Gaussian sigma, mm)
    grain_mm: float  # speckle grain, lateral (mm); axial is 0.4 x this
    dropout: float  # wall signal lost at the centre of smooth dropout patches (fraction)
    shadows: tuple[int, int]  # fewest and most acoustic shadows per view
    shadow_strength: float  # signal removed inside a shadow (fraction)
    noise: float  # additive noise on top of the style's


QUALITY_LEVELS: dict[str, QualityLevel] = {
    "Good": QualityLevel(contrast=1.0, clutter=0.05, haze=0.25, haze_mm=9.0, blur_mm=1.2, grain_mm=1.5,
                         dropout=0.0, shadows=(0, 0), shadow_strength=0.0, noise=0.0),
    "Medium": QualityLevel(contrast=0.8, clutter=0.15, haze=0.35, haze_mm=14.0, blur_mm=1.5, grain_mm=2.5,
                           dropout=0.45, shadows=(0, 1), shadow_strength=0.5, noise=0.02),
    "Poor": QualityLevel(contrast=0.65, clutter=0.2, haze=0.45, haze_mm=20.0, blur_mm=1.8, grain_mm=3.5,
                         dropout=0.65, shadows=(1, 2), shadow_strength=0.6, noise=0.04),
}
DEFAULT_QUALITY_MIX = (0.35, 0.50, 0.15)  # Good, Medium, Poor


@dataclasses.dataclass
class PhantomConfig:
    """How the built-in phantom is drawn (a config section: ``data.phantom`` of a U-Net or GAN
    run, ``phantom`` of a study). ``quality_mix``: fractions of Good, Medium, Poor patients (in
    that order, summing to 1). ``style``: acquisition style of the training and validation
    patients; ``test_style``: that of the test patients (null: ``style``)."""

    quality_mix: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_QUALITY_MIX))
    style: str = "A"
    test_style: str | None = None

    def validate(self) -> None:
        mix = self.quality_mix
        if len(mix) != len(QUALITIES) or any(not math.isfinite(f) or f < 0 for f in mix):
            raise ConfigError(f"phantom.quality_mix: expected {len(QUALITIES)} fractions >= 0 for "
                              f"{list(QUALITIES)}, got {mix}")
        if abs(sum(mix) - 1.0) > 1e-6:
            raise ConfigError(f"phantom.quality_mix: expected fractions of {list(QUALITIES)} summing to 1, "
                              f"got {mix} (sum {sum(mix):g})")
        for key in ("style", "test_style"):
            value = getattr(self, key)
            if not (value is None and key == "test_style") and value not in STYLES:
                raise ConfigError(f"phantom.{key}: expected one of {list(STYLES)}, got {value!r}")

    def style_of(self, split: str) -> str:
        """The acquisition style of a split's patients."""
        return (self.test_style or self.style) if split == "test" else self.style

    def attrs(self) -> dict[str, str]:
        """The root attributes a phantom file written with this config records (and that a
        written file is matched on before it is reused)."""
        return {"quality_mix": ",".join(f"{float(f):g}" for f in self.quality_mix), "style": self.style,
                "test_style": self.test_style or self.style}

    def tag(self) -> str:
        """A short file-name tag, "" for a config that draws the default phantom: ``q35-50-15_A-B``."""
        if self.attrs() == PhantomConfig().attrs():
            return ""
        styles = self.style if (self.test_style or self.style) == self.style else f"{self.style}-{self.test_style}"
        return "q" + "-".join(f"{round(100 * f):d}" for f in self.quality_mix) + "_" + styles


# ----------------------------------------------------------------------------- geometry
def spacing_for(size: int, style: str = "A") -> tuple[float, float]:
    """(row, col) pixel spacing in mm of a phantom image of ``size`` x ``size`` pixels."""
    acq = STYLES[style]
    return (acq.depth_mm / size, acq.width_mm / size)


@lru_cache(maxsize=16)
def grid(size: int, style: str = "A") -> dict[str, np.ndarray]:
    """Pixel-centre coordinates (mm: ``X`` lateral, ``Y`` depth), polar ``r`` / ``th`` from the
    probe, and the ``sector`` (field of view) of a style's image (read-only arrays)."""
    acq = STYLES[style]
    sr, sc = spacing_for(size, style)
    y = ((np.arange(size) + 0.5) * sr).astype(np.float32)
    x = ((np.arange(size) + 0.5 - size / 2) * sc).astype(np.float32)
    Y, X = np.meshgrid(y, x, indexing="ij")
    r = np.hypot(X, Y)
    th = np.arctan2(X, Y)
    sector = (r <= acq.radius_mm) & (np.abs(th) <= acq.half_angle)
    for a in (X, Y, r, th, sector):
        a.setflags(write=False)
    return {"X": X, "Y": Y, "r": r, "th": th, "sector": sector}


# ----------------------------------------------------------------------------- per-view draws
def draw_imaging(rng: np.random.Generator, quality: str, style: str) -> dict[str, Any]:
    """What stays put between the frames of one view (the probe does not move): the acoustic
    shadows, each ``(centre angle rad, half-width rad, start depth mm, strength)``."""
    q, acq = QUALITY_LEVELS[quality], STYLES[style]
    lo, hi = q.shadows
    n = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    span = acq.half_angle - math.radians(6.0)
    shadows = [(float(rng.uniform(-span, span)), math.radians(float(rng.uniform(3.0, 7.0))),
                float(rng.uniform(8.0, 35.0)), float(q.shadow_strength * rng.uniform(0.75, 1.0))) for _ in range(n)]
    return {"shadows": shadows}


# ----------------------------------------------------------------------------- rendering
_WALLS = np.array([0.0, 1.0, 1.0, 1.0, 0.0], np.float32)  # classes whose echo can drop out
_TEXTURE = np.array([0.35, 0.2, 0.1, 0.15, 0.0], np.float32)


def render(rng: np.random.Generator, p: dict[str, Any], cls: np.ndarray, size: int, view: str) -> np.ndarray:
    """The image (float32 (size, size) in [0, 1], black outside the sector) of a tissue-class map
    (0 tissue, 1 thin walls, 2 pericardium, 3 myocardium, 4 blood) of patient ``p``."""
    style, q = p["style"], QUALITY_LEVELS[p["quality"]]
    acq = STYLES[style]
    G = grid(size, style)
    sr, sc = spacing_for(size, style)
    f32 = np.float32
    # echogenicity: level * (1 + texture * low) + clutter * max(low, 0), per tissue class
    low = _smooth_noise(rng, size)
    blood = 0.02 + (1.0 - q.contrast) * 0.5 * p["myo_level"]
    level = np.array([p["tissue_level"], 0.5, 0.9, p["myo_level"], blood], f32)
    clutter = np.array([0.0, 0.0, 0.0, 0.0, q.clutter], f32)
    E = np.take(level, cls) + np.take(level * _TEXTURE, cls) * low + np.take(clutter, cls) * np.maximum(low, 0.0)
    np.maximum(E, 0.0, out=E)
    if q.dropout > 0:  # wall echo lost in smooth patches (~a third of the image)
        patch = np.clip((_smooth_noise(rng, size) - 0.45) * 1.5, 0.0, 1.0)
        E *= 1.0 - f32(q.dropout) * patch * np.take(_WALLS, cls)
    E = _blur(E, q.blur_mm / sr, axis=0)
    E = _blur(E, q.blur_mm / sc, axis=1)
    r = G["r"]
    I = E * _speckle(rng, size, q.grain_mm, sr, sc) * np.exp(f32(acq.tgc_per_mm - p["atten"]) * r)
    for centre, half, start, strength in p["imaging"][view]["shadows"]:
        across = np.clip((half - np.abs(G["th"] - f32(centre))) * f32(1.0 / math.radians(1.5)) + 0.5, 0.0, 1.0)
        I *= 1.0 - f32(strength) * across * np.clip((r - f32(start)) * f32(0.2), 0.0, 1.0)
    I += f32(q.haze) * _haze(size, style, q.haze_mm)
    I += f32(q.noise + acq.noise) * _draw(rng, _half_normal_table(), (size, size))
    img = np.log1p(f32(acq.compression * acq.gain * p["gain"]) * I) * f32(1.0 / np.log1p(acq.compression))
    np.clip(img, 0.0, 1.0, out=img)
    img *= G["sector"]
    return img


def _speckle(rng: np.random.Generator, size: int, grain_mm: float, sr: float, sc: float) -> np.ndarray:
    """Mean-1 speckle: the magnitude of a complex Gaussian field correlated over the grain
    (axial 0.4 x ``grain_mm``, lateral ``grain_mm``), averaged over the pixel: along an axis
    where the grain is larger than the pixel the field is averaged over a box of the grain's
    width; where it is smaller, the pixel averages ``pixel / grain`` grains and its fluctuation
    shrinks by ``sqrt`` of their number."""
    taps, grains = [], 1.0
    for grain, pixel in ((0.4 * grain_mm, sr), (grain_mm, sc)):
        taps.append(2 * int(round(0.5 * grain / pixel)) + 1)  # odd box ~ the grain (1: none)
        grains *= max(1.0, pixel / grain)
    shape = (size + taps[0] - 1, size + taps[1] - 1)  # drawn wider: the boxes need no padding
    z = np.empty(shape, np.complex64)
    z.real = _draw(rng, _normal_table(), shape)
    z.imag = _draw(rng, _normal_table(), shape)
    for axis, n in enumerate(taps):
        if n > 1:
            z = _box_sum(z, n, axis)
    power = z.real * z.real + z.imag * z.imag
    mag = np.sqrt(power) * np.float32(1.0 / math.sqrt(math.pi / 4.0 * float(power.mean())))
    if grains > 1.0:
        mag = 1.0 + (mag - 1.0) * np.float32(1.0 / math.sqrt(grains))
    return mag


@lru_cache(maxsize=8)
def _upsampler(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Linear interpolation from a coarse k-point grid (~20 mm cells of a 150 mm image): left
    index, weight, k."""
    k = 9
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
def _normal_table() -> np.ndarray:
    """N(0, 1) by its inverse CDF at the 65,536 midpoints u = (i + 1/2) / 65536."""
    u = (np.arange(65536) + 0.5) / 65536.0
    return ndtri(u).astype(np.float32)


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


@lru_cache(maxsize=32)
def _haze(size: int, style: str, depth_mm: float) -> np.ndarray:
    h = np.exp(-grid(size, style)["r"] / np.float32(depth_mm))
    h.setflags(write=False)
    return h
