"""Checks of a synthetic training set against the real data it is mixed with (data layer).

A synthetic set (written by :func:`cardigan_tf.jobs.generation.generate_set`, seed layout,
``train`` split only) may be mixed into the training batches of a U-Net only when:

- it exists and is a seed-layout .h5 file with labelled images in its ``train`` split;
- its images have the working size (when one is given);
- it was not made from the validation, test or unlabelled patients of the real data: its root
  attribute ``provenance.source_patients`` (the patients whose masks, and through the GAN,
  images it was made from) must not meet the held-out splits of ``data_path``. Otherwise the
  synthetic images leak held-out anatomy into training, and the validation Dice that model
  selection (tuning) or the study reports is optimistic.

Used before any training starts by ``tune``, ``train seg --synthetic`` and the study.

Example::

    info = check_synthetic_set("camusx.h5", "data/camus_256.h5", size=256)
    info["source_patients"]     # ['patient0001', ...] or None when the set does not record them
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cardigan_tf.data import h5layout
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.source import prepared_size

log = logging.getLogger(__name__)

HELD_OUT_SPLITS = ("valid", "test", "unlabelled")


def synthetic_source_patients(synthetic_path: str | Path) -> list[str] | None:
    """``provenance.source_patients`` of a synthetic set (None when it does not record them)."""
    attrs = h5layout.read_root_attrs(synthetic_path)
    prov = attrs.get("provenance")
    if not isinstance(prov, dict) or prov.get("source_patients") is None:
        return None
    patients = prov["source_patients"]
    if isinstance(patients, str):
        patients = [patients]
    return sorted(str(p) for p in patients)


def check_synthetic_set(synthetic_path: str | Path, data_path: str | Path | None, size: int | None = None) -> dict[str, Any]:
    """Raise DataError (naming the synthetic file) unless ``synthetic_path`` may be mixed into
    training on ``data_path``; return what was found.

    ``data_path``: the real data, a seed-layout .h5 file (None: skip the patient check, e.g.
    before the data is resolved; a TFRecord folder: skipped with a warning, it does not list
    patient ids). ``size``: the working image size the synthetic images must have (None: any).

    Returns ``{"path", "size", "n_images", "source_patients", "patients_checked"}``.
    """
    syn = Path(synthetic_path)
    if not syn.exists():
        raise DataError(syn, "synthetic set does not exist (expected a seed-layout .h5 file written by "
                             "`python -m cardigan_tf.generate`)")
    if syn.is_dir() or not h5layout.is_h5_layout(syn):
        raise DataError(syn, "synthetic set: not an HDF5 file in the seed layout (train/patientXXXX/{2CH,4CH}/{im,gt})")
    patients = h5layout.list_patients(syn)
    if not patients.get("train"):
        raise DataError(syn, f"synthetic set: no images in its 'train' split (splits present: {sorted(patients)})")

    syn_size = prepared_size(syn)
    if size is not None and syn_size != int(size):
        raise DataError(syn, f"synthetic images are {syn_size}x{syn_size} but the working size is {int(size)}x{int(size)}"
                        if syn_size else f"synthetic images are not square or of several sizes; expected {int(size)}x{int(size)}")
    n_images = sum(1 for _ in h5layout.iter_samples(syn, ["train"]))

    source = synthetic_source_patients(syn)
    checked = False
    if data_path is not None:
        data_path = Path(data_path)
        if source is None:
            log.warning("%s records no provenance.source_patients: cannot check that it was not made from the "
                        "validation/test patients of %s", syn, data_path)
        elif data_path.is_dir():
            log.warning("%s: the patients of a TFRecord folder are not listed; not checking %s against its "
                        "held-out patients", data_path, syn)
        else:
            held = h5layout.list_patients(data_path)
            leaked = {split: sorted(set(source) & set(held.get(split, []))) for split in HELD_OUT_SPLITS}
            leaked = {k: v for k, v in leaked.items() if v}
            if leaked:
                ids = sorted({p for v in leaked.values() for p in v})
                where = ", ".join(f"{len(v)} {k}" for k, v in leaked.items())
                raise DataError(syn, f"synthetic set was made from held-out patients of {data_path} ({where}): "
                                     f"{ids}; generate it from a GAN trained on the training patients only")
            checked = True
    return {"path": str(syn), "size": syn_size, "n_images": n_images, "source_patients": source,
            "patients_checked": checked}
