"""Readers for the three CAMUS layouts, with layout detection.

Entry points::

    detect_layout(path) -> "h5" | "camus2019" | "camus2023"
    ds = read_camus(path, layout=None, with_sequences=False, skip_invalid=False)
    for entry, samples in ds.iter_patients(): ...     # one patient at a time (4 Samples)
    for sample in ds: ...                             # or sample by sample

Layouts:

- ``h5``: the seed HDF5 layout (CREATIS' ``camus05_256.hdf5`` or a file written by
  ``prepare``), read through :func:`cardigan_tf.data.h5layout.iter_samples`; ``im_ref`` /
  ``gt_ref`` give the original resolution when present, otherwise the stored images are used.
- ``camus2019``: ``training/`` and ``testing/`` folders of ``patientXXXX/`` with MetaImage files
  (``patientXXXX_{2CH,4CH}_{ED,ES}[_gt].mhd``, ``..._sequence.mhd``) and ``Info_{2CH,4CH}.cfg``;
  optional ``listSubGroups/subGroup{k}_{training,validation,testing}.txt``. A folder that
  directly holds ``patientXXXX`` folders is accepted too. A ``testing/`` patient is labelled
  when its folder has ``_gt`` files (the full release; the public one has none), and
  ``prepare`` then makes those patients the test split.
- ``camus2023``: ``database_nifti/patientXXXX/`` with NIfTI files (``..._half_sequence[_gt]``)
  and ``database_split/subgroup_{training,validation,testing}.txt``.

Samples follow the data contract of :mod:`cardigan_tf.data.sample` at the ORIGINAL resolution.
``meta`` holds: ``source_layout``, ``group`` (training/testing/... or the h5 split), ``cfg``
(typed cfg values), ``ed_frame`` / ``es_frame`` / ``frame`` (1-based), ``nb_frames``, ``ef`` /
``edv`` / ``esv`` / ``sex`` / ``age`` / ``frame_rate`` when known, ``source_files`` (path
relative to the dataset root -> sha256). With ``with_sequences=True`` both samples of a view
share ``meta["sequence"]``, a :class:`SequenceRecord` (frames ED..ES; masks in 2023).

Invalid patients raise :class:`DataError` (file + what was expected). With
``skip_invalid=True`` they are skipped with a warning and listed in ``dataset.skipped``
(``{"patient", "group", "reason"}``); nothing is skipped silently.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cardigan_tf.data import camus_io as io
from cardigan_tf.data.camus_folder import PatientEntry, SequenceRecord, read_patient_folder
from cardigan_tf.data.h5layout import is_h5_layout, iter_samples, list_patients
from cardigan_tf.data.sample import DataError, EmptyDatasetError, Sample
from cardigan_tf.labels import PHASES, VIEWS

__all__ = ["CamusDataset", "PatientEntry", "SequenceRecord", "detect_layout", "read_camus", "read_patient_folder", "LAYOUTS"]
log = logging.getLogger(__name__)
LAYOUTS = ("h5", "camus2019", "camus2023")
PATIENT_RE = re.compile(r"^patient(\d+)$", re.IGNORECASE)
SPLIT_NAMES = {"training": "train", "validation": "valid", "testing": "test"}
_H5_KEY_RE = re.compile(r":(train|valid|test|unlabelled)/([^/]+)")
_EXPECTED = ("expected a CAMUS dataset: a folder with training/ and testing/ (2019 release), a folder "
             "with database_nifti/ (2023 release), a folder of patientXXXX folders, or an HDF5 file "
             "in the seed layout (train/valid/test groups)")


def patient_sort_key(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else 1 << 30, name)


def _patient_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and PATIENT_RE.match(p.name)),
                  key=lambda p: patient_sort_key(p.name))


def detect_layout(path: str | Path) -> str:
    """Return "h5", "camus2019" or "camus2023" for ``path``; DataError when it is none."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"does not exist ({_EXPECTED})")
    if path.is_file():
        if is_h5_layout(path):
            return "h5"
        raise DataError(path, f"not an HDF5 file in the seed layout ({_EXPECTED})")
    if (path / "database_nifti").is_dir() or path.name == "database_nifti":
        return "camus2023"
    if (path / "training").is_dir() or (path / "testing").is_dir():
        return "camus2019"
    for pdir in _patient_dirs(path):
        names = [f.name.lower() for f in pdir.iterdir()]
        if any(n.endswith((".nii", ".nii.gz")) for n in names):
            return "camus2023"
        if any(n.endswith((".mhd", ".mha")) for n in names):
            return "camus2019"
    raise DataError(path, _EXPECTED)


def _read_list(path: Path) -> list[str]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        tok = line.strip().split()
        if not tok:
            continue
        name = tok[0]
        if name.isdigit():
            name = f"patient{int(name):04d}"
        out.append(name)
    return out


class CamusDataset:
    """A discovered CAMUS dataset; patients are read lazily, one at a time."""

    def __init__(self, root: Path, layout: str, entries: list[PatientEntry], official: dict[Any, dict[str, list[str]]],
                 with_sequences: bool = False, skip_invalid: bool = False):
        self.root, self.layout, self.entries = root, layout, entries
        self.official = official  # None-key: the single official split; int keys: 2019 folds
        self.with_sequences, self.skip_invalid = with_sequences, skip_invalid
        self.skipped: list[dict[str, str]] = []

    @property
    def patients(self) -> list[str]:
        return [e.patient for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def folds(self) -> list[int]:
        return sorted(k for k in self.official if k is not None)

    def official_split(self, fold: int | None = None) -> dict[str, list[str]] | None:
        """The official split lists (fold ``k`` for the 2019 lists), or None when absent."""
        if fold is None:
            return self.official.get(None)
        if fold not in self.official:
            have = self.folds()
            raise DataError(self.root, f"fold {fold}: no listSubGroups/subGroup{fold}_*.txt lists "
                                       f"(folds available: {have or 'none'})")
        return self.official[fold]

    def _skip(self, entry: PatientEntry, exc: Exception) -> None:
        reason = str(exc)
        self.skipped.append({"patient": entry.patient, "group": entry.group, "reason": reason})
        msg = f"skipping patient {entry.patient} ({entry.group}): {reason}"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)

    def iter_patients(self) -> Iterator[tuple[PatientEntry, list[Sample]]]:
        """Yield ``(entry, samples)`` per valid patient (2 views x 2 phases, original size)."""
        self.skipped = []
        n = 0
        it = self._iter_h5() if self.layout == "h5" else self._iter_folders()
        for entry, samples in it:
            n += 1
            yield entry, samples
        if n == 0:
            raise EmptyDatasetError(self.root, f"no valid patient ({len(self.skipped)} skipped: "
                                               + "; ".join(s["reason"] for s in self.skipped[:3]) + ")")

    def __iter__(self) -> Iterator[Sample]:
        for _, samples in self.iter_patients():
            yield from samples

    # ----------------------------------------------------------------- folders (2019 / 2023)
    def _iter_folders(self) -> Iterator[tuple[PatientEntry, list[Sample]]]:
        for entry in self.entries:
            try:
                samples = read_patient_folder(entry, self.root, self.layout, self.with_sequences)
            except DataError as exc:
                exc.patient = entry.patient
                if not self.skip_invalid:
                    raise
                self._skip(entry, exc)
                continue
            yield entry, samples

    # ----------------------------------------------------------------- seed HDF5 layout
    def _iter_h5(self) -> Iterator[tuple[PatientEntry, list[Sample]]]:
        by_key = {(e.group, e.patient): e for e in self.entries}
        done: set[tuple[str, str]] = set()
        while True:
            cur, buf = None, []
            try:
                for split, s in iter_samples(self.root, splits=sorted({e.group for e in self.entries}), with_ref=True):
                    key = (split, s.patient)
                    if key in done or key not in by_key:
                        continue
                    if key != cur:
                        if buf:
                            done.add(cur)
                            out = self._finish_h5(by_key[cur], buf)
                            if out is not None:
                                yield by_key[cur], out
                        cur, buf = key, []
                    buf.append(s)
                if buf:
                    done.add(cur)
                    out = self._finish_h5(by_key[cur], buf)
                    if out is not None:
                        yield by_key[cur], out
                return
            except DataError as exc:
                m = _H5_KEY_RE.search(exc.path)
                if not self.skip_invalid or m is None or (m.group(1), m.group(2)) in done:
                    raise
                key = (m.group(1), m.group(2))
                done.add(key)
                self._skip(by_key.get(key, PatientEntry(key[1], key[0])), exc)

    def _finish_h5(self, entry: PatientEntry, samples: list[Sample]) -> list[Sample] | None:
        try:
            out = [_h5_original(s, self.root) for s in samples]
            _check_complete(out, f"{self.root}:{entry.group}/{entry.patient}", entry.patient)
            return out
        except DataError as exc:
            exc.patient = entry.patient
            if not self.skip_invalid:
                raise
            self._skip(entry, exc)
            return None


def _check_complete(samples: list[Sample], where: Any, patient: str) -> None:
    have = {(s.view, s.phase) for s in samples}
    missing = [f"{v} {p}" for v in VIEWS for p in PHASES if (v, p) not in have]
    if missing:
        raise DataError(where, f"patient {patient} is missing {', '.join(missing)} (expected 2CH and 4CH, ED and ES)",
                        patient=patient)


def _h5_original(s: Sample, root: Path) -> Sample:
    """Swap in the original-resolution arrays (im_ref / gt_ref) when the file has them."""
    im_ref, gt_ref = s.meta.pop("image_ref", None), s.meta.pop("mask_ref", None)
    where = f"{root}:{s.meta.get('h5_path')}"
    s.meta["resolution"] = "stored"
    if im_ref is not None and (gt_ref is not None or s.mask is None):
        image = io.to_unit(np.asarray(im_ref), f"{where}/im_ref")[..., None]
        mask = None
        if gt_ref is not None:
            mask = io.check_labels(np.asarray(gt_ref), f"{where}/gt_ref")
            if mask.shape != image.shape[:2]:
                raise DataError(f"{where}/gt_ref", f"shape {mask.shape} differs from im_ref {image.shape[:2]}")
        s.image, s.mask, s.meta["resolution"] = image, mask, "original"
        s.original_shape = tuple(image.shape[:2])
    s.meta.setdefault("cfg", {})
    s.meta["group"] = s.meta.get("split")
    return s.validate(where)


# --------------------------------------------------------------------- discovery
def _discover_2019(path: Path) -> tuple[Path, list[PatientEntry], dict]:
    groups = [(path / g, g) for g in ("training", "testing") if (path / g).is_dir()]
    root = path
    if not groups:
        groups = [(path, "testing" if path.name.lower() == "testing" else path.name)]
    entries = []
    for folder, group in groups:
        for pdir in _patient_dirs(folder):
            has_gt = any(n.endswith(("_gt.mhd", "_gt.mha", "_gt.nii.gz", "_gt.nii")) for n in
                         (f.name.lower() for f in pdir.iterdir()))
            entries.append(PatientEntry(pdir.name, group, pdir, labelled=group == "training" or has_gt))
    official: dict[Any, dict[str, list[str]]] = {}
    for cand in (path / "listSubGroups", path.parent / "listSubGroups"):
        if cand.is_dir():
            for f in sorted(cand.iterdir()):
                m = re.match(r"^subgroup(\d+)_(training|validation|testing)\.txt$", f.name, re.IGNORECASE)
                if m:
                    official.setdefault(int(m.group(1)), {})[SPLIT_NAMES[m.group(2).lower()]] = _read_list(f)
            break
    return root, entries, official


def _discover_2023(path: Path) -> tuple[Path, list[PatientEntry], dict]:
    if path.name == "database_nifti":
        nifti, root = path, path.parent
    elif (path / "database_nifti").is_dir():
        nifti, root = path / "database_nifti", path
    else:
        nifti, root = path, path
    entries = [PatientEntry(p.name, "database_nifti", p, True) for p in _patient_dirs(nifti)]
    official: dict[Any, dict[str, list[str]]] = {}
    split_dir = root / "database_split"
    if split_dir.is_dir():
        for f in sorted(split_dir.iterdir()):
            m = re.match(r"^subgroup_(training|validation|testing)\.txt$", f.name, re.IGNORECASE)
            if m:
                official.setdefault(None, {})[SPLIT_NAMES[m.group(1).lower()]] = _read_list(f)
    return root, entries, official


def read_camus(path: str | Path, *, layout: str | None = None, groups: Iterable[str] | None = None,
               patients: Iterable[str] | None = None, with_sequences: bool = False,
               skip_invalid: bool = False) -> CamusDataset:
    """Discover a CAMUS dataset (any layout); nothing is read before iteration.

    ``groups`` keeps only patients of those groups ("training"/"testing" for 2019, the split
    names for an .h5); ``patients`` keeps only those ids. Raises EmptyDatasetError when no
    patient is left, DataError for an unknown layout or a patient id found twice.
    """
    path = Path(path)
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} not one of {LAYOUTS}")
    if layout == "h5":
        lists = list_patients(path)
        entries = [PatientEntry(p, split, None, split != "unlabelled") for split, pats in lists.items() for p in pats]
        official = {None: {s: list(p) for s, p in lists.items()}}
        root = path
    elif layout == "camus2019":
        root, entries, official = _discover_2019(path)
    else:
        root, entries, official = _discover_2023(path)
    if groups is not None:
        keep = set(groups)
        entries = [e for e in entries if e.group in keep]
    if patients is not None:
        keep = set(patients)
        entries = [e for e in entries if e.patient in keep]
    if not entries:
        what = "" if groups is None and patients is None else f" matching groups={groups} patients={patients}"
        raise EmptyDatasetError(path, f"no patient found{what} ({_EXPECTED})")
    seen: dict[str, PatientEntry] = {}
    for e in entries:
        if e.patient in seen:
            raise DataError(e.folder or path, f"patient {e.patient} appears twice (also in {seen[e.patient].folder or seen[e.patient].group})")
        seen[e.patient] = e
    return CamusDataset(root, layout, entries, official, with_sequences, skip_invalid)
