"""Simulated two-arm studies of known truth, for calibrating and planning the comparisons of
:mod:`cardigan_tf.stats_hierarchical`.

Per image: ``value = mean + arm effect + patient + patient x arm + seed + image noise`` with

- a patient effect ``N(0, sd_patient)`` shared by both arms (it cancels in the paired difference),
- a patient x arm effect ``N(0, sd_patient_arm)`` per (arm, patient): patients who gain more
  than others from an arm,
- a seed effect ``N(0, sd_seed)`` per (arm, seed): the training run, and ``N(0, sd_seed_shared)``
  per seed shared by both arms' seed k (what ``paired_seeds`` pairs: a GAN, a data order),
- image noise ``N(0, sd_image)`` per (arm, seed, patient, image).

:data:`REGIMES` are the settings the calibration tests and ``docs/statistics.md`` use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Design:
    """A study's shape and variance components (Dice-like scale)."""

    n_patients: int = 10
    n_seeds: int = 3
    n_images: int = 4
    mean: float = 0.9
    sd_patient: float = 0.02
    sd_patient_arm: float = 0.0
    sd_seed: float = 0.005
    sd_seed_shared: float = 0.0
    sd_image: float = 0.01


#: reference: seed effects of the size seen when retraining the baseline; seed-dominated: large
#: seed effects beside small patient x arm effects; seeds-stable: no seed effect at all;
#: shared-seeds: most of the seed effect shared by both arms' seed k
REGIMES = {
    "reference": Design(),
    "seed-dominated": Design(sd_seed=0.01, sd_patient_arm=0.002),
    "seeds-stable": Design(sd_seed=0.0, sd_patient_arm=0.003),
    "shared-seeds": Design(sd_seed=0.002, sd_seed_shared=0.008),
}


def simulate_images(design: Design, n_studies: int, rng: np.random.Generator,
                    effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image values of ``n_studies`` studies: arrays ``(n_studies, seeds, patients, images)``
    of arm A and arm B (B is shifted by ``effect``)."""
    n, s, p, i = n_studies, design.n_seeds, design.n_patients, design.n_images
    patient = rng.normal(0.0, design.sd_patient, (n, 1, p, 1))
    shared_seed = rng.normal(0.0, design.sd_seed_shared, (n, s, 1, 1))
    arms = []
    for shift in (0.0, effect):
        arms.append(design.mean + shift + patient + shared_seed
                    + rng.normal(0.0, design.sd_patient_arm, (n, 1, p, 1))
                    + rng.normal(0.0, design.sd_seed, (n, s, 1, 1))
                    + rng.normal(0.0, design.sd_image, (n, s, p, i)))
    return arms[0], arms[1]


def long_table(images_a: np.ndarray, images_b: np.ndarray, arms: tuple[str, str] = ("A", "B")) -> dict[str, list]:
    """One study's per-image arrays ``(seeds, patients, images)`` as the long table of
    :func:`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison` (columns arm, seed,
    patient, image, value; patients ``p00``, ``p01``, ...)."""
    table: dict[str, list] = {"arm": [], "seed": [], "patient": [], "image": [], "value": []}
    for arm, images in zip(arms, (images_a, images_b)):
        for (s, p, i), v in np.ndenumerate(images):
            table["arm"].append(arm)
            table["seed"].append(s)
            table["patient"].append(f"p{p:02d}")
            table["image"].append(i)
            table["value"].append(float(v))
    return table
