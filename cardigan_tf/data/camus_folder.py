"""Read one patient folder of the CAMUS 2019 (MetaImage) or 2023 (NIfTI) release.

Used by :mod:`cardigan_tf.data.camus`; see its docstring for the meta keys and the errors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cardigan_tf.data import camus_io as io
from cardigan_tf.data.sample import DataError, Sample
from cardigan_tf.labels import PHASES, VIEWS
from cardigan_tf.units import SPACING_KNOWN, UNKNOWN_SPACING


@dataclass
class PatientEntry:
    patient: str
    group: str  # "training" / "testing" / "database_nifti" / h5 split name
    folder: Path | None = None
    labelled: bool = True


@dataclass
class SequenceRecord:
    """The frames of one view's sequence file (ED to ES in both releases); ``ed`` / ``es`` are
    the cfg's 1-based frame indices into it.

    ``frames`` float32 (T, H, W, 1) in [0, 1]; ``masks`` uint8 (T, H, W) or None (2019)."""

    patient: str
    view: str
    frames: np.ndarray
    masks: np.ndarray | None
    spacing: tuple[float, float]
    ed: int
    es: int
    source_files: dict[str, str] = field(default_factory=dict)


class _Listing:
    """Case-insensitive file lookup in one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}

    def find(self, stems: tuple[str, ...], exts: tuple[str, ...] = io.IMAGE_EXTS) -> Path | None:
        for stem in stems:
            for ext in exts:
                p = self.names.get(f"{stem}{ext}".lower())
                if p is not None:
                    return p
        return None


def read_patient_folder(entry: PatientEntry, root: Path, layout: str, with_sequences: bool = False) -> list[Sample]:
    """Read the 2 views x 2 phases of one patient folder (2019 or 2023 release)."""
    pid, folder = entry.patient, entry.folder
    assert folder is not None
    files = _Listing(folder)
    main_ext = ".mhd" if layout == "camus2019" else ".nii.gz"
    hashes: dict[Path, str] = {}

    def rel(p: Path) -> str:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return p.as_posix()

    def digest(paths: list[Path]) -> dict[str, str]:
        for p in paths:
            if p not in hashes:
                hashes[p] = io.sha256_file(p)
        return {rel(p): hashes[p] for p in paths}

    samples: list[Sample] = []
    for view in VIEWS:
        cfg_path = files.find((f"Info_{view}",), (".cfg",)) or folder / f"Info_{view}.cfg"
        cfg = io.parse_cfg(cfg_path)
        ed, es = io.cfg_frame(cfg, "ED", cfg_path), io.cfg_frame(cfg, "ES", cfg_path)
        raw_quality = io.cfg_get(cfg, "ImageQuality", "Quality", default="")
        quality = io.normalise_quality(raw_quality)
        if raw_quality not in ("", None) and not quality:
            warnings.warn(f"{cfg_path}: ImageQuality {raw_quality!r} is not Good/Medium/Poor; quality left unknown")
        common = {
            "source_layout": layout, "group": entry.group, "cfg": cfg, "ed_frame": ed, "es_frame": es,
            "nb_frames": io.cfg_get(cfg, "NbFrame", "NbFrames"), "ef": io.cfg_get(cfg, "LVef", "EF"),
            "edv": io.cfg_get(cfg, "LVedv", "EDV"), "esv": io.cfg_get(cfg, "LVesv", "ESV"),
            "sex": io.cfg_get(cfg, "Sex"), "age": io.cfg_get(cfg, "Age"),
            "frame_rate": io.cfg_get(cfg, "FrameRate"),
        }
        seq = (_read_sequence(files, pid, view, ed, es, common["nb_frames"], entry.labelled, digest)
               if with_sequences else None)
        for phase in PHASES:
            img_path = files.find((f"{pid}_{view}_{phase}",))
            if img_path is None:
                raise DataError(folder / f"{pid}_{view}_{phase}{main_ext}",
                                f"missing: patient {pid} has no {view} {phase} image (expected 2CH and 4CH, ED and ES)")
            arr, spacing, used = io.read_frames(img_path, single=True)
            image = io.to_unit(arr, img_path)
            mask = None
            if entry.labelled:
                gt_path = files.find((f"{pid}_{view}_{phase}_gt",))
                if gt_path is None:
                    raise DataError(folder / f"{pid}_{view}_{phase}_gt{main_ext}",
                                    f"missing ground truth for {view} {phase} (patient {pid} is in a labelled group)")
                gt, gt_spacing, gt_used = io.read_frames(gt_path, single=True)
                mask = io.check_labels(gt, gt_path)
                if mask.shape != image.shape:
                    raise DataError(gt_path, f"ground truth shape {mask.shape} (rows, cols) differs from image "
                                             f"{img_path.name} {image.shape}")
                if spacing is not None and gt_spacing is not None and not np.allclose(gt_spacing, spacing, rtol=1e-3):
                    warnings.warn(f"{gt_path}: spacing {gt_spacing} differs from image spacing {spacing}; using the image's")
                used = used + gt_used
            if seq is not None and seq.frames.shape[1:3] != image.shape:
                raise DataError(img_path, f"shape {image.shape} differs from the {view} sequence {seq.frames.shape[1:3]}")
            meta = dict(common, frame=ed if phase == "ED" else es, source_files=digest(used + [cfg_path]))
            meta[SPACING_KNOWN] = spacing is not None  # no ElementSpacing: distances in pixels
            if seq is not None:
                meta["sequence"] = seq
            samples.append(Sample(image=image[..., None], mask=mask, patient=pid, view=view, phase=phase,
                                  spacing=spacing or UNKNOWN_SPACING, original_shape=tuple(image.shape), quality=quality,
                                  meta=meta).validate(str(img_path)))
        ed_s, es_s = samples[-2], samples[-1]
        if ed_s.image.shape != es_s.image.shape:
            raise DataError(img_path, f"{view} ES image shape {es_s.image.shape[:2]} differs from ED "
                                      f"{ed_s.image.shape[:2]} (expected one size per view)")
    return samples


def _read_sequence(files: _Listing, pid: str, view: str, ed: int, es: int, nb_frames, labelled: bool,
                   digest) -> SequenceRecord:
    stems = (f"{pid}_{view}_half_sequence", f"{pid}_{view}_sequence")
    path = files.find(stems)
    if path is None:
        raise DataError(files.folder / f"{stems[1]}.mhd", f"missing {view} sequence (asked for with_sequences)")
    arr, spacing, used = io.read_frames(path, single=False)
    frames = io.to_unit(arr, path)[..., None]
    masks = None
    gt_path = files.find(tuple(f"{s}_gt" for s in stems))
    if gt_path is not None and labelled:
        gt, _, gt_used = io.read_frames(gt_path, single=False)
        masks = io.check_labels(gt, gt_path)
        if masks.shape != frames.shape[:3]:
            raise DataError(gt_path, f"sequence ground truth shape {masks.shape} differs from {path.name} {frames.shape[:3]}")
        used = used + gt_used
    expected = nb_frames if isinstance(nb_frames, int) else abs(es - ed) + 1
    if frames.shape[0] != expected or max(ed, es) > frames.shape[0]:
        warnings.warn(f"{path}: {frames.shape[0]} frames, but the cfg says NbFrame={nb_frames}, ED={ed}, ES={es}")
    return SequenceRecord(pid, view, frames, masks, spacing or UNKNOWN_SPACING, ed, es, digest(used))
