"""How a seed-layout view group records its pixel spacing, and whether it is known.

A view group written by :class:`cardigan_tf.data.h5layout.H5Writer` has ``spacing_known``:
True beside ``spacing`` (row, col mm), or False without a spacing when the source recorded none
(CREATIS' HDF5, a MetaImage without ElementSpacing; distances are then in pixels,
:mod:`cardigan_tf.units`). A group without ``spacing_known`` (CREATIS' files, files of
``format_version`` 1) knows its spacing when it has a ``spacing`` attribute, except a group
converted from CREATIS' layout (``source_layout`` attribute ``creatis_h5``) whose ``spacing`` is
(1, 1): in such a file (1, 1) stands for an unknown spacing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cardigan_tf.data.sample import DataError
from cardigan_tf.units import SPACING_KNOWN, UNKNOWN_SPACING

#: ``source_layout`` of a file in CREATIS' layout (no root attributes, no spacing)
CREATIS_LAYOUT = "creatis_h5"


def _valid(spacing) -> bool:
    return len(spacing) == 2 and all(np.isfinite(spacing)) and min(spacing) > 0


def write_spacing(attrs: Any, spacing, where: str) -> bool:
    """Record ``spacing`` (None: unknown) in a group's ``attrs``; return whether it is known.
    ValueError naming ``where`` unless it is two positive mm values."""
    if spacing is not None:
        spacing = np.asarray(spacing, np.float64).ravel()
        if not _valid(spacing):
            raise ValueError(f"{where}/spacing: expected two positive mm values (row, col), got {spacing.tolist()}")
        attrs["spacing"] = spacing
    attrs[SPACING_KNOWN] = spacing is not None
    return spacing is not None


def read_spacing(attrs: Any, where: str) -> tuple[tuple[float, float], bool]:
    """(spacing (row, col), whether it is known) of a group's ``attrs`` (see the module doc);
    DataError naming ``where`` and the attribute for a record that contradicts itself."""
    spacing = tuple(float(v) for v in np.ravel(attrs["spacing"])) if "spacing" in attrs else None
    if spacing is not None and not _valid(spacing):
        raise DataError(f"{where}.attrs[spacing]", f"expected two positive mm values (row, col), got {spacing}")
    if SPACING_KNOWN in attrs:
        known = bool(attrs[SPACING_KNOWN])
        if known and spacing is None:
            raise DataError(f"{where}.attrs", "spacing_known is True but there is no 'spacing' attribute "
                                              "(expected the (row, col) mm spacing beside it)")
    else:
        layout = attrs.get("source_layout", "")
        layout = layout.decode() if isinstance(layout, bytes) else str(layout)
        known = spacing is not None and not (layout == CREATIS_LAYOUT and spacing == UNKNOWN_SPACING)
    return (spacing if known else UNKNOWN_SPACING), known
