"""The files of ``predict``: which inputs, how they are read, how their masks are written.

- :func:`collect_inputs`: image files (.mhd/.mha, .nii/.nii.gz, .png, .npy) and CAMUS patient
  folders (``patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}.{mhd,nii.gz}``; ``*_gt`` and sequences
  are skipped), or a folder of patient folders -> :class:`InputFile` items.
- :func:`read_input` -> :class:`Image` (float32 in [0, 1], spacing, the geometry a MetaImage or
  NIfTI writer needs); a file that cannot be used is a DataError naming it.
- :func:`write_mask`: the mask in the input's format, size and geometry, written atomically.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from cardigan_tf.data.camus_io import read_frames, to_unit
from cardigan_tf.data.sample import DataError
from cardigan_tf.files import atomic_path
from cardigan_tf.labels import PHASES, VIEWS

__all__ = ["FORMATS", "InputFile", "Image", "collect_inputs", "read_input", "write_mask"]

#: input extensions (lower case) -> output extension of the mask
FORMATS = {".mhd": ".mhd", ".mha": ".mha", ".nii.gz": ".nii.gz", ".nii": ".nii", ".png": ".png", ".npy": ".npy"}
FRAME_RE = re.compile(r"^(?P<patient>patient\d+)_(?P<view>2CH|4CH)_(?P<phase>ED|ES)$", re.IGNORECASE)
PATIENT_EXTS = (".mhd", ".nii.gz", ".nii", ".mha")


# ----------------------------------------------------------------------------- inputs
@dataclass
class InputFile:
    """One image to segment and where its outputs go (``subdir`` under the output folder)."""

    path: Path
    ext: str
    stem: str
    subdir: str = ""
    patient: str | None = None
    view: str | None = None
    phase: str | None = None

    @property
    def mask_name(self) -> str:
        return f"{self.stem}_mask{FORMATS[self.ext]}"

    @property
    def overlay_name(self) -> str:
        return f"{self.stem}_overlay.png"


def _ext(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


def _item(path: Path, subdir: str = "") -> InputFile:
    ext = _ext(path)
    if ext is None:
        raise DataError(path, f"unsupported file type (expected one of {', '.join(FORMATS)}, or a CAMUS patient folder)")
    stem = path.name[: -len(ext)]
    m = FRAME_RE.match(stem)
    frame = {} if m is None else {"patient": m["patient"].lower(), "view": m["view"].upper(), "phase": m["phase"].upper()}
    return InputFile(path=path, ext=ext, stem=stem, subdir=subdir, **frame)


def _patient_frames(folder: Path) -> list[Path]:
    """The ED/ES frames of one CAMUS patient folder (one format per frame, MetaImage first)."""
    out = []
    for view in VIEWS:
        for phase in PHASES:
            for ext in PATIENT_EXTS:
                f = folder / f"{folder.name}_{view}_{phase}{ext}"
                if f.is_file():
                    out.append(f)
                    break
    return out


def collect_inputs(paths) -> list[InputFile]:
    """Expand ``paths`` (files, patient folders, folders of patient folders) into inputs.

    Raises FileNotFoundError for a missing path and DataError for an unsupported file or a
    folder without CAMUS frames; nothing is read here."""
    items: list[InputFile] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_file():
            items.append(_item(p))
            continue
        frames = _patient_frames(p)
        if frames:
            items.extend(_item(f, p.name) for f in frames)
            continue
        patients = [d for d in sorted(p.iterdir()) if d.is_dir() and _patient_frames(d)]
        if not patients:
            raise DataError(p, "a folder without CAMUS frames (expected patientXXXX_{2CH,4CH}_{ED,ES}.mhd or "
                               ".nii.gz files, or patient folders holding them)")
        for d in patients:
            items.extend(_item(f, d.name) for f in _patient_frames(d))
    if not items:
        raise DataError("inputs", "no input given")
    return items


@dataclass
class Image:
    """A read input: float32 (H, W) in [0, 1], spacing (row, col) mm or None (PNG, NPY, a
    MetaImage without ElementSpacing), and what a MetaImage/NIfTI writer needs to reproduce the
    geometry."""

    pixels: np.ndarray
    spacing: tuple[float, float] | None = None
    geometry: dict[str, Any] = field(default_factory=dict)


def _sitk_geometry(path: Path) -> dict[str, Any]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {"dimension": reader.GetDimension(), "size": reader.GetSize(), "spacing": reader.GetSpacing(),
            "origin": reader.GetOrigin(), "direction": reader.GetDirection()}


def read_input(item: InputFile) -> Image:
    """Read one input (DataError naming the file when it cannot be used)."""
    path = item.path
    if item.ext in (".mhd", ".mha", ".nii", ".nii.gz"):
        arr, spacing, _ = read_frames(path, single=True)
        return Image(to_unit(arr, path), None if spacing is None else tuple(float(s) for s in spacing),
                     _sitk_geometry(path))
    if item.ext == ".png":
        try:
            with PILImage.open(path) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(path, f"not a readable PNG ({exc})") from None
        if arr.ndim == 3:
            if mode in ("RGB", "RGBA") and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
                arr = arr[..., 0]
            elif mode == "LA":
                arr = arr[..., 0]
            else:
                raise DataError(path, f"expected a grey-level PNG, got mode {mode} with different colour channels")
        return Image(to_unit(np.ascontiguousarray(arr), path))
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(path, f"not a readable .npy array ({exc})") from None
    shape = arr.shape
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2 or 0 in arr.shape:
        raise DataError(path, f"expected a 2-D image (H, W), (1, H, W) or (H, W, 1), got shape {shape}")
    return Image(to_unit(arr, path))


# ----------------------------------------------------------------------------- outputs
def _write_sitk(path: Path, mask: np.ndarray, geometry: dict[str, Any]) -> None:
    """Write a uint8 mask with the input's geometry, atomically (MetaImage: .raw, then .mhd)."""
    arr = mask.astype(np.uint8)
    if geometry["dimension"] > 2:
        arr = arr.reshape((1,) * (geometry["dimension"] - 2) + arr.shape)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(geometry["spacing"])
    img.SetOrigin(geometry["origin"])
    img.SetDirection(geometry["direction"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(img, str(tmp / path.name), False)
        written = sorted(tmp.iterdir(), key=lambda f: f.name == path.name)  # data file(s) first, header last
        for f in written:
            f.replace(path.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_mask(item: InputFile, mask: np.ndarray, image: Image, folder: Path) -> Path:
    """Write ``mask`` (uint8 (H, W)) as ``folder/<stem>_mask.<ext>`` in the input's format."""
    path = Path(folder) / item.mask_name
    if item.ext in (".mhd", ".mha", ".nii", ".nii.gz"):
        _write_sitk(path, mask, image.geometry)
    elif item.ext == ".png":
        with atomic_path(path) as tmp:
            PILImage.fromarray(mask.astype(np.uint8), mode="L").save(tmp, format="PNG")
    else:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, mask.astype(np.uint8))
    return path
