"""The data contract shared by every reader, the pipeline, the models and the metrics.

A :class:`Sample` is one 2-D frame of one view of one patient:

- ``image``: float32 (H, W, 1) in [0, 1];
- ``mask``: uint8 (H, W) in {0, 1, 2, 3}, or None for unlabelled images;
- ``patient`` (str), ``view`` ("2CH"/"4CH"), ``phase`` ("ED"/"ES");
- ``spacing``: (row, col) in mm of the *original* image; (1, 1) with
  ``meta["spacing_known"] = False`` when the source records none (distances are then in pixels,
  :mod:`cardigan_tf.units`; :func:`spacing_known`, :func:`samples_unit`);
- ``original_shape``: (rows, cols) of the original image;
- ``quality``: "Good"/"Medium"/"Poor", or "" when unknown;
- ``meta``: everything else a reader knows (cfg values, 1-based ED/ES frame indices, source
  files and their hashes, source layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cardigan_tf.labels import LABEL_VALUES, PHASES, VIEWS
from cardigan_tf.units import SPACING_KNOWN, distance_unit


class DataError(ValueError):
    """Bad input data. The message names the file, the field and what was expected."""

    def __init__(self, path: Any, message: str, patient: str | None = None):
        self.path = str(path)
        self.patient = patient
        super().__init__(f"{path}: {message}")


class EmptyDatasetError(DataError):
    """A dataset (or a selection of it) holds no sample."""


@dataclass
class Sample:
    image: np.ndarray
    mask: np.ndarray | None
    patient: str
    view: str
    phase: str
    spacing: tuple[float, float]
    original_shape: tuple[int, int]
    quality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "sample") -> "Sample":
        """Check the contract; raise DataError naming ``where`` and the field."""
        img = self.image
        if img.dtype != np.float32 or img.ndim != 3 or img.shape[-1] != 1:
            raise DataError(where, f"image: expected float32 (H, W, 1), got {img.dtype} {img.shape}")
        if img.size and (float(img.min()) < 0.0 or float(img.max()) > 1.0):
            raise DataError(where, f"image: expected values in [0, 1], got [{img.min()}, {img.max()}]")
        if self.mask is not None:
            m = self.mask
            if m.dtype != np.uint8 or m.shape != img.shape[:2]:
                raise DataError(where, f"mask: expected uint8 {img.shape[:2]}, got {m.dtype} {m.shape}")
            bad = np.setdiff1d(np.unique(m), LABEL_VALUES)
            if bad.size:
                raise DataError(where, f"mask: values {bad.tolist()} outside {{0,1,2,3}}")
        if self.view not in VIEWS:
            raise DataError(where, f"view: expected one of {VIEWS}, got {self.view!r}")
        if self.phase not in PHASES:
            raise DataError(where, f"phase: expected one of {PHASES}, got {self.phase!r}")
        if len(self.spacing) != 2 or min(self.spacing) <= 0:
            raise DataError(where, f"spacing: expected two positive mm values, got {self.spacing}")
        return self


def spacing_known(sample: Sample) -> bool:
    """Whether ``sample.spacing`` is its image's spacing in mm (False: (1, 1), in pixels)."""
    return bool(sample.meta.get(SPACING_KNOWN, True))


def samples_unit(samples) -> str:
    """The unit of distances measured on ``samples``: ``mm`` when every one knows its spacing,
    else ``px``."""
    return distance_unit(all(spacing_known(s) for s in samples))
