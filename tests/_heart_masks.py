"""Simple valid CAMUS-like label masks for the synthetic-set tests (no phantom needed).

Apex at the top, LV cavity as a truncated ellipse, myocardium as a U around it open at the
base, LA as an ellipse below touching the LV base.
"""

import numpy as np


def draw_heart(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    s = size / 64.0
    cy = size * rng.uniform(0.35, 0.42)
    cx = size * rng.uniform(0.45, 0.55)
    a = s * rng.uniform(12, 16)  # long semi-axis (rows)
    b = s * rng.uniform(6.5, 9)  # short semi-axis (cols)
    t = s * rng.uniform(2.5, 4)  # wall thickness
    base = cy + 0.55 * a
    lv = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
    epi = ((yy - cy) / (a + t)) ** 2 + ((xx - cx) / (b + t)) ** 2 <= 1
    lv &= yy <= base
    epi &= yy <= base
    ra = s * rng.uniform(6, 9)
    rb = s * rng.uniform(5, 8)
    la_c = base + ra - 0.5
    la = (((yy - la_c) / ra) ** 2 + ((xx - cx) / rb) ** 2 <= 1) & (yy > base)
    mask = np.zeros((size, size), np.uint8)
    mask[la] = 3
    mask[epi] = 2
    mask[lv] = 1
    return mask
