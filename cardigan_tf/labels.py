"""Label ids and the anatomical structures evaluated on CAMUS.

CAMUS ground truth: 0 background, 1 LV cavity (endocardium), 2 myocardium, 3 left atrium.
The "LV epicardium" is the union of labels 1 and 2.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
LV = 1
MYO = 2
LA = 3
NUM_CLASSES = 4
LABEL_VALUES = (BACKGROUND, LV, MYO, LA)
LABEL_NAMES = {BACKGROUND: "background", LV: "lv_cavity", MYO: "myocardium", LA: "left_atrium"}
LABEL_DESCRIPTIONS = {BACKGROUND: "background", LV: "LV cavity (endocardium)", MYO: "myocardium", LA: "left atrium"}

VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
QUALITIES = ("Good", "Medium", "Poor")

#: Evaluated structures: name -> set of label ids forming it.
STRUCTURES: dict[str, tuple[int, ...]] = {
    "lv_endo": (LV,),
    "lv_epi": (LV, MYO),
    "la": (LA,),
}
#: Names of the evaluated structures in reports, tables and plots.
STRUCTURE_TITLES = {"lv_endo": "LV endo", "lv_epi": "LV epi", "la": "LA"}


def structure_mask(mask: np.ndarray, structure: str) -> np.ndarray:
    """Boolean mask of one structure ("lv_endo", "lv_epi", "la") from a label mask."""
    try:
        labels = STRUCTURES[structure]
    except KeyError:
        raise ValueError(f"unknown structure {structure!r}; expected one of {sorted(STRUCTURES)}") from None
    return np.isin(mask, labels)
