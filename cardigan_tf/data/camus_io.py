"""Low-level CAMUS file reading with clear errors (used by :mod:`cardigan_tf.data.camus`).

- :func:`read_frames`: MetaImage (.mhd/.mha, raw or zlib ``.zraw``) and NIfTI (.nii/.nii.gz)
  through SimpleITK. Before SimpleITK sees a .mhd, its header is parsed here and the data file
  is checked (present, and for uncompressed data at least ``prod(DimSize) * element size``
  bytes), so that a missing or truncated .raw gives a message that names the file.
- :func:`parse_cfg`: ``Info_{2CH,4CH}.cfg`` (``Key: value`` lines) into typed values.
- :func:`to_unit`, :func:`check_labels`: intensity and label checks of the data contract.
- :func:`sha256_file`.

Array conventions: SimpleITK gives arrays in (z, y, x) order and spacing in (x, y, z) order;
everything returned here is (rows=y, cols=x), spacing (row, col) in mm.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cardigan_tf.data.sample import DataError
from cardigan_tf.files import sha256_file  # noqa: F401  (re-exported: the readers hash their sources)
from cardigan_tf.labels import LABEL_VALUES, QUALITIES

MET_BYTES = {
    "MET_ASCII_CHAR": 1, "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
IMAGE_EXTS = (".mhd", ".mha", ".nii.gz", ".nii")
_INT_RE = re.compile(r"^[+-]?\d+$")
#: cfg keys (lower case, no separators) whose value must be a number when given
NUMERIC_CFG_KEYS = {"ed", "es", "nbframe", "nbframes", "age", "lvedv", "lvesv", "lvef", "ef", "framerate"}


def parse_mhd_header(path: Path) -> dict[str, str]:
    """``Key = Value`` lines of a MetaImage header (stops at ElementDataFile, the last key)."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        raw = f.read(64 * 1024)
    for lineno, line in enumerate(raw.decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DataError(path, f"line {lineno}: expected a MetaImage 'Key = Value' header line, got {line[:60]!r}")
        out[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    return out


def check_mhd(path: Path, single: bool = False) -> list[Path]:
    """Check a .mhd/.mha header and its data file; return the files it uses (header, data)."""
    hdr = parse_mhd_header(path)
    for key in ("dimsize", "elementtype", "elementdatafile"):
        if key not in hdr:
            raise DataError(path, f"MetaImage header has no {key!r} line (expected DimSize, ElementType, ElementDataFile)")
    try:
        dims = [int(v) for v in hdr["dimsize"].split()]
    except ValueError:
        raise DataError(path, f"DimSize: expected integers, got {hdr['dimsize']!r}") from None
    ndims = int(hdr.get("ndims", len(dims)) or len(dims))
    if len(dims) != ndims or ndims < 2:
        raise DataError(path, f"DimSize {dims} does not match NDims = {ndims} (expected 2 or 3 dimensions)")
    if single and any(d != 1 for d in dims[2:]):
        raise DataError(path, f"expected a 2-D image or a 3-D one with a single slice, got DimSize "
                              f"{' x '.join(map(str, dims))} (x, y, z)")
    etype = hdr["elementtype"].upper()
    if etype not in MET_BYTES:
        raise DataError(path, f"ElementType {etype!r} not supported (expected one of {sorted(MET_BYTES)})")
    datafile = hdr["elementdatafile"]
    if datafile.upper() == "LOCAL" or datafile.upper().startswith("LIST") or "%" in datafile:
        return [path]  # data inside the header file, or a file list: let SimpleITK check it
    data = Path(datafile) if Path(datafile).is_absolute() else path.parent / datafile
    if not data.is_file():
        raise DataError(data, f"missing data file (named by ElementDataFile in {path.name}; expected "
                              f"{' x '.join(map(str, dims))} {etype} values)")
    actual = data.stat().st_size
    channels = int(hdr.get("elementnumberofchannels", "1") or 1)
    expected = int(np.prod(dims)) * MET_BYTES[etype] * channels
    if hdr.get("compresseddata", "false").lower() in ("true", "1", "yes"):
        csize = hdr.get("compresseddatasize")
        if csize and csize.isdigit() and actual < int(csize):
            raise DataError(data, f"truncated compressed data: header {path.name} says CompressedDataSize = "
                                  f"{csize} bytes, file has {actual}")
        dec = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip stream
        try:
            n = len(dec.decompress(data.read_bytes())) + len(dec.flush())
        except zlib.error as exc:
            raise DataError(data, f"corrupt zlib-compressed data ({exc}); header {path.name}") from None
        if not dec.eof or n != expected:
            raise DataError(data, f"truncated or corrupt compressed data: expected {expected} bytes once "
                                  f"decompressed (DimSize {' x '.join(map(str, dims))} {etype} from {path.name}), got {n}"
                                  + ("" if dec.eof else " (stream ends early)"))
    else:
        header_size = int(hdr.get("headersize", "0") or 0)  # -1: data at the end of the file
        what = (f"DimSize {' x '.join(map(str, dims))} x {MET_BYTES[etype]} byte {etype} "
                f"from {path.name}" + (f" + HeaderSize {header_size}" if header_size > 0 else ""))
        if actual < expected + max(header_size, 0):
            raise DataError(data, f"truncated data file: expected {expected + max(header_size, 0)} bytes ({what}), "
                                  f"found {actual}")
        if header_size == 0 and actual != expected:
            raise DataError(data, f"data file size does not match its header: expected {expected} bytes ({what}), "
                                  f"found {actual}")
    return [path, data]


def check_nifti(path: Path) -> list[Path]:
    """Check that a .nii / .nii.gz holds as many voxel bytes as its header announces
    (SimpleITK zero-fills truncated NIfTI files silently)."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        dec = zlib.decompressobj(zlib.MAX_WBITS | 32)
        try:
            data = dec.decompress(raw) + dec.flush()
        except zlib.error as exc:
            raise DataError(path, f"corrupt gzip data ({exc}); expected a gzip-compressed NIfTI file") from None
        if not dec.eof:
            raise DataError(path, f"truncated gzip stream ({len(raw)} bytes on disk): the file ends early")
    else:
        data = raw
    if len(data) < 348:
        raise DataError(path, f"truncated NIfTI header: {len(data)} bytes, expected at least 348")
    for order in "<>":
        sizeof_hdr = int(np.frombuffer(data[:4], f"{order}i4")[0])
        if sizeof_hdr in (348, 540):
            break
    else:
        raise DataError(path, f"not a NIfTI-1/2 file (sizeof_hdr = {sizeof_hdr}, expected 348 or 540)")
    if sizeof_hdr == 348:
        dim = np.frombuffer(data[40:56], f"{order}i2").astype(np.int64)
        bitpix = int(np.frombuffer(data[72:74], f"{order}i2")[0])
        offset = int(np.frombuffer(data[108:112], f"{order}f4")[0])
    else:
        if len(data) < 540:
            raise DataError(path, f"truncated NIfTI-2 header: {len(data)} bytes, expected at least 540")
        dim = np.frombuffer(data[16:80], f"{order}i8").astype(np.int64)
        bitpix = int(np.frombuffer(data[14:16], f"{order}i2")[0])
        offset = int(np.frombuffer(data[168:176], f"{order}i8")[0])
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 1 for d in dim[1 : ndim + 1]):
        raise DataError(path, f"NIfTI header: invalid dim {dim.tolist()} / bitpix {bitpix}")
    expected = max(offset, sizeof_hdr) + int(np.prod(dim[1 : ndim + 1])) * bitpix // 8
    if len(data) < expected:
        raise DataError(path, f"truncated NIfTI data: expected {expected} bytes (dim {dim[1:ndim + 1].tolist()}, "
                              f"{bitpix} bits per voxel), found {len(data)}" + (" after decompression" if data is not raw else ""))
    return [path]


def read_frames(path: Path, single: bool) -> tuple[np.ndarray, tuple[float, float] | None, list[Path]]:
    """Read one image file with SimpleITK.

    ``single=True`` expects a 2-D image or a 3-D (or higher) one whose extra dimensions all
    have size 1, and returns an (H, W) array; ``single=False`` (sequences) returns (T, H, W).
    Returns ``(array, spacing (row, col) mm, [files read])``; the spacing is None when a
    MetaImage header records neither ElementSpacing nor ElementSize (SimpleITK would say 1 mm).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    name = path.name.lower()
    files = check_mhd(path, single) if name.endswith((".mhd", ".mha")) else check_nifti(path) if ".nii" in name else [path]
    recorded = not name.endswith((".mhd", ".mha")) or any(k in parse_mhd_header(path)
                                                          for k in ("elementspacing", "elementsize"))
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = " / ".join(ln for ln in lines if not ln.startswith(("Exception thrown", "/")))
        detail = detail or (lines[-1] if lines else str(exc))
        raise DataError(path, f"SimpleITK could not read the image: {detail}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(path, f"expected a grey-level image (1 component per pixel), got "
                              f"{img.GetNumberOfComponentsPerPixel()}")
    size = tuple(img.GetSize())  # (x, y, z, ...)
    spacing_xyz = tuple(float(v) for v in img.GetSpacing())
    extra = size[2:]
    if single and any(s != 1 for s in extra):
        raise DataError(path, f"expected a 2-D image or a 3-D one with a single slice, got size "
                              f"{' x '.join(map(str, size))} (x, y, z)")
    if not single and any(s != 1 for s in extra[1:]):
        raise DataError(path, f"expected a 2-D+time sequence (x, y, frames), got size {' x '.join(map(str, size))}")
    arr = sitk.GetArrayFromImage(img)
    h, w = size[1], size[0]
    arr = arr.reshape((h, w)) if single else arr.reshape((-1, h, w))
    spacing = (spacing_xyz[1], spacing_xyz[0])
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise DataError(path, f"ElementSpacing / pixdim: expected positive mm values, got {spacing_xyz}")
    return arr, (spacing if recorded else None), files


def to_unit(arr: np.ndarray, path: Any) -> np.ndarray:
    """Intensities to float32 in [0, 1]: 8-bit values are divided by 255; floats already in
    [0, 1] are kept; anything else is a DataError."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.size == 0:
        return arr.astype(np.float32)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if arr.dtype.kind in "iu":
        if lo < 0 or hi > 255:
            raise DataError(path, f"image: expected 8-bit intensities 0..255, got {arr.dtype} in [{lo:g}, {hi:g}]")
        return arr.astype(np.float32) / 255.0
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(path, "image: contains NaN or infinite values")
        if lo >= 0 and hi <= 1:
            return arr.astype(np.float32)
        if lo >= 0 and hi <= 255:
            return (arr / 255.0).astype(np.float32)
        raise DataError(path, f"image: expected values in [0, 1] or [0, 255], got [{lo:g}, {hi:g}]")
    raise DataError(path, f"image: unsupported pixel type {arr.dtype}")


def check_labels(arr: np.ndarray, path: Any) -> np.ndarray:
    """Ground truth to uint8, checking every value is one of {0, 1, 2, 3}."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise DataError(path, "ground truth: expected integer labels in {0,1,2,3}, got non-integer values")
    elif arr.dtype.kind not in "iub":
        raise DataError(path, f"ground truth: unsupported pixel type {arr.dtype}")
    values = np.unique(arr)
    bad = np.setdiff1d(values, LABEL_VALUES)
    if bad.size:
        raise DataError(path, f"ground truth value(s) {bad.tolist()[:10]} outside {{0,1,2,3}} "
                              "(expected 0 background, 1 LV, 2 myocardium, 3 LA)")
    return arr.astype(np.uint8)


def _typed(value: str) -> Any:
    if _INT_RE.match(value):
        return int(value)
    try:
        f = float(value)
    except ValueError:
        return value
    return f if np.isfinite(f) else value


def parse_cfg(path: Path) -> dict[str, Any]:
    """``Key: value`` lines -> dict with int / float / str values. Blank lines and ``#``
    comments are skipped; any other line without a ``:`` is a DataError naming its number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing cfg file (expected 'Key: value' lines: ED, ES, NbFrame, Sex, Age, ImageQuality, ...)")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_bytes().decode("latin-1")
    out: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        key, sep, value = s.partition(":")
        key = key.strip()
        if not sep or not key or not re.match(r"^[A-Za-z_][^:]*$", key):
            raise DataError(path, f"line {lineno}: expected 'Key: value', got {s[:80]!r}")
        typed = _typed(value.strip())
        norm = re.sub(r"[^a-z0-9]", "", key.lower())
        if norm in NUMERIC_CFG_KEYS and value.strip() and not isinstance(typed, (int, float)):
            raise DataError(path, f"line {lineno}: {key}: expected a number, got {value.strip()!r}")
        out[key] = typed
    return out


def cfg_get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    """Lookup of the first of ``names`` present in ``cfg``, ignoring case, spaces and underscores."""
    def norm(k: str) -> str:
        return re.sub(r"[^a-z0-9]", "", k.lower())

    lower = {norm(k): v for k, v in cfg.items()}
    for n in names:
        if norm(n) in lower:
            return lower[norm(n)]
    return default


def cfg_frame(cfg: dict[str, Any], key: str, path: Path) -> int:
    """A required 1-based frame index (``ED`` / ``ES``) from a cfg."""
    value = cfg_get(cfg, key)
    if value is None:
        raise DataError(path, f"cfg has no {key!r} line (expected '{key}: <1-based frame index>')")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 1:
        raise DataError(path, f"{key}: expected a positive integer frame index (1-based), got {value!r}")
    return value


def normalise_quality(value: Any) -> str:
    """'good' / 'GOOD' / 'Good' -> 'Good'; anything unknown -> ''."""
    s = str(value or "").strip().capitalize()
    return s if s in QUALITIES else ""
