"""The units of distances and volumes, and how every table names them.

A dataset either records the pixel spacing of its original images (the CAMUS MetaImage and
NIfTI releases, the phantom) or does not (CREATIS' ``camus05_256.hdf5``). Without a spacing,
HD and MAD are in pixels of the original grid (``px``) and volumes are not reported: a volume
in cubic pixels is no volume. Whether the spacing is known travels with the data (the
``spacing_known`` marker of the seed layout, the TFRecord feature of the same name, a synthetic
image's mask) and every table that holds HD or MAD, or derives from them, has a
:data:`DISTANCE_COLUMN` column naming the unit of its distances on every row; column names stay
unit-free (``lv_endo_hd``).
"""

from __future__ import annotations

from typing import Iterable

MM = "mm"
PX = "px"
DISTANCE_UNITS = (MM, PX)
#: the column (or JSON key) naming the unit of the HD / MAD values beside it
DISTANCE_COLUMN = "distance_unit"
#: the marker that a spacing is the image's own: a seed-layout attribute, a TFRecord feature,
#: ``Sample.meta`` key and ``summary.json`` key (False: the spacing is (1, 1), in pixels)
SPACING_KNOWN = "spacing_known"
#: the spacing of an image whose spacing is unknown: distances measured with it are in pixels
UNKNOWN_SPACING = (1.0, 1.0)
#: the unit of LV volumes when the spacing is known (none otherwise)
VOLUME_UNIT = "ml"


def distance_unit(spacing_known: bool) -> str:
    """``mm`` when the spacing is known, else ``px`` (pixels of the original grid)."""
    return MM if spacing_known else PX


def volume_unit(spacing_known: bool) -> str | None:
    """``ml`` when the spacing is known, else None (volumes are not reported)."""
    return VOLUME_UNIT if spacing_known else None


def joined(units: Iterable[str]) -> str:
    """One label for the units of several tables: ``mm``, ``px``, or ``mm/px`` when they differ."""
    return "/".join(sorted(set(units)))


def distances_sentence(unit: str) -> str:
    """What a report's distances are in, for ``unit`` = ``mm``, ``px`` or a :func:`joined` mix."""
    if unit == MM:
        return "Distances (HD, MAD) in mm, measured with the pixel spacing the data records."
    if unit == PX:
        return ("Distances (HD, MAD) in px, pixels of the original grid: the data records no pixel spacing. "
                "Volumes are not reported, and EF is measured on the pixel grid (distorted where pixels are not square).")
    return (f"Distances (HD, MAD) in {unit}: some cells' data records a pixel spacing and some do not; "
            "their distances are not compared.")
