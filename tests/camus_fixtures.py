"""Small CAMUS datasets written in the REAL file formats, for tests (shared by several test modules).

- :func:`write_2019_tree`: ``training/`` + ``testing/`` MetaImage (.mhd/.raw, 3-D one slice,
  ElementSpacing x=0.308 y=0.154), ``Info_*.cfg``, sequences, ``listSubGroups`` fold lists.
- :func:`write_2023_tree`: ``database_nifti/`` (2-D NIfTI for 2CH, 3-D one-slice for 4CH,
  labelled half sequences) + ``database_split/subgroup_*.txt``.
- :func:`write_creatis_h5`: CREATIS' HDF5 layout with 4-D ``im`` (2, S, S, 1) and ``im_ref`` /
  ``gt_ref`` at a non-square original size.

Each returns an ``expected`` dict describing exactly what was written::

    {"patients": {pid: {"group", "labelled", "shape" (rows, cols), "spacing" (row, col),
                        "cfg": {view: dict}, "quality": {view: str},
                        "images": {(view, phase): uint8 (H, W)}, "masks": {... or None}}},
     "folds"/"split": official lists, "root": Path}

Images are non-square and differ per patient: (rows, cols) = (70 + 2 i, 48 + i).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


VIEWS = ("2CH", "4CH")
PHASES = ("ED", "ES")
SPACING_XY = (0.308, 0.154)  # ElementSpacing order: x (lateral, cols), y (depth, rows)
SPACING_RC = (0.154, 0.308)  # what readers must return: (row, col)
QUALITIES = ("Good", "Medium", "Poor")


def shape_for(i: int) -> tuple[int, int]:
    return (70 + 2 * i, 48 + i)


def make_pair(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image and a uint8 label mask holding all four labels."""
    h, w = shape
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[h // 4 : h // 2, w // 4 : 3 * w // 4] = 2
    mask[h // 4 + 3 : h // 2 - 3, w // 4 + 3 : 3 * w // 4 - 3] = 1
    mask[h // 2 + 2 : 3 * h // 4, w // 3 : 2 * w // 3] = 3
    return image, mask


def _sitk_image(arr: np.ndarray, spacing_xy, one_slice: bool):
    import SimpleITK as sitk

    if one_slice:
        img = sitk.GetImageFromArray(arr[None] if arr.ndim == 2 else arr)
        img.SetSpacing((spacing_xy[0], spacing_xy[1], 1.54))
    else:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(spacing_xy))
    return img


def write_image(path: Path, arr: np.ndarray, spacing_xy=SPACING_XY, one_slice: bool = True,
                compressed: bool = False) -> None:
    """Write (H, W) as a 3-D one-slice (or 2-D) image, or (T, H, W) as a sequence."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_sitk_image(arr, spacing_xy, one_slice or arr.ndim == 3), str(path), compressed)


def _cfg_text(cfg: dict) -> str:
    lines = [f"{k}: {v}" for k, v in cfg.items()]
    lines.insert(3, "")  # a blank line in the middle, like hand-edited files
    return "\n".join(lines) + "\n\n"


def _patient(rng, i: int, nframes: int, labelled_cfg: bool, q_case: str = "title"):
    shape = shape_for(i)
    images, masks, cfgs, quality = {}, {}, {}, {}
    for v, view in enumerate(VIEWS):
        q = QUALITIES[(i + v) % 3]
        cfg = {"ED": 1, "ES": nframes, "NbFrame": nframes, "Sex": "F" if i % 2 else "M", "Age": 50 + i,
               "ImageQuality": q.lower() if q_case == "lower" else q}
        if labelled_cfg:
            cfg.update({"LVedv": 90.5 + i, "LVesv": 40.25 + i, "LVef": 47.13})
        cfgs[view], quality[view] = cfg, q
        for phase in PHASES:
            images[(view, phase)], masks[(view, phase)] = make_pair(rng, shape)
    return shape, images, masks, cfgs, quality


def _sequence(images, masks, view, nframes, rng):
    shape = images[(view, "ED")].shape
    frames = rng.integers(0, 256, size=(nframes, *shape), dtype=np.uint8)
    seg = np.zeros((nframes, *shape), np.uint8)
    frames[0], frames[-1] = images[(view, "ED")], images[(view, "ES")]
    seg[0], seg[-1] = masks[(view, "ED")], masks[(view, "ES")]
    return frames, seg


def write_2019_tree(root: str | Path, n_train: int = 4, n_test: int = 2, *, sequences: bool = True,
                    lists: bool = True, n_folds: int = 2, compressed: bool = False, seed: int = 0) -> dict:
    """Write a fake CAMUS 2019 release under ``root``; return what was written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = {"root": root, "patients": {}, "folds": {}}
    nframes = 3
    for i in range(1, n_train + n_test + 1):
        pid = f"patient{i:04d}"
        group = "training" if i <= n_train else "testing"
        labelled = group == "training"
        shape, images, masks, cfgs, quality = _patient(rng, i, nframes, labelled, "lower" if i == 2 else "title")
        pdir = root / group / pid
        for view in VIEWS:
            (pdir).mkdir(parents=True, exist_ok=True)
            (pdir / f"Info_{view}.cfg").write_text(_cfg_text(cfgs[view]))
            for phase in PHASES:
                write_image(pdir / f"{pid}_{view}_{phase}.mhd", images[(view, phase)], compressed=compressed)
                if labelled:
                    write_image(pdir / f"{pid}_{view}_{phase}_gt.mhd", masks[(view, phase)], compressed=compressed)
            if sequences:
                frames, _ = _sequence(images, masks, view, nframes, rng)
                write_image(pdir / f"{pid}_{view}_sequence.mhd", frames, compressed=compressed)
        expected["patients"][pid] = {
            "group": group, "labelled": labelled, "shape": shape, "spacing": SPACING_RC, "cfg": cfgs,
            "quality": quality, "images": images, "masks": masks if labelled else None,
        }
    train_ids = [p for p, e in expected["patients"].items() if e["labelled"]]
    if lists:
        ldir = root / "listSubGroups"
        ldir.mkdir(parents=True, exist_ok=True)
        for k in range(1, n_folds + 1):
            test = [train_ids[(k - 1) % len(train_ids)]]
            valid = [train_ids[k % len(train_ids)]]
            train = [p for p in train_ids if p not in test + valid]
            fold = {"train": train, "valid": valid, "test": test}
            for name, split in (("training", "train"), ("validation", "valid"), ("testing", "test")):
                (ldir / f"subGroup{k}_{name}.txt").write_text("\n".join(fold[split]) + "\n")
            expected["folds"][k] = fold
    return expected


def write_2023_tree(root: str | Path, n: int = 5, *, split: bool = True, seed: int = 1) -> dict:
    """Write a fake CAMUS 2023 release (NIfTI) under ``root``; return what was written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected = {"root": root, "patients": {}, "split": None}
    nframes = 4
    for i in range(1, n + 1):
        pid = f"patient{i:04d}"
        shape, images, masks, cfgs, quality = _patient(rng, i, nframes, False)
        pdir = root / "database_nifti" / pid
        pdir.mkdir(parents=True, exist_ok=True)
        for view in VIEWS:
            cfg = dict(cfgs[view], EF=55 + i, FrameRate=50)
            cfgs[view] = cfg
            (pdir / f"Info_{view}.cfg").write_text(_cfg_text(cfg))
            one_slice = view == "4CH"  # 2CH as true 2-D NIfTI, 4CH as 3-D with one slice
            for phase in PHASES:
                write_image(pdir / f"{pid}_{view}_{phase}.nii.gz", images[(view, phase)], one_slice=one_slice)
                write_image(pdir / f"{pid}_{view}_{phase}_gt.nii.gz", masks[(view, phase)], one_slice=one_slice)
            frames, seg = _sequence(images, masks, view, nframes, rng)
            write_image(pdir / f"{pid}_{view}_half_sequence.nii.gz", frames)
            write_image(pdir / f"{pid}_{view}_half_sequence_gt.nii.gz", seg)
        expected["patients"][pid] = {
            "group": "database_nifti", "labelled": True, "shape": shape, "spacing": SPACING_RC, "cfg": cfgs,
            "quality": quality, "images": images, "masks": masks,
        }
    if split:
        ids = list(expected["patients"])
        lists = {"train": ids[:-2], "valid": ids[-2:-1], "test": ids[-1:]}
        sdir = root / "database_split"
        sdir.mkdir(parents=True, exist_ok=True)
        for name, s in (("training", "train"), ("validation", "valid"), ("testing", "test")):
            (sdir / f"subgroup_{name}.txt").write_text("\n".join(lists[s]) + "\n")
        expected["split"] = lists
    return expected


def write_creatis_h5(path: str | Path, splits: dict[str, int] | None = None, size: int = 32,
                     ref_shape: tuple[int, int] = (40, 30), seed: int = 2) -> dict:
    """CREATIS' layout: {train,valid,test}/patientXXXX/{2CH,4CH}/{im (2,S,S,1) float, gt (2,S,S),
    im_ref (2,H0,W0) uint8, gt_ref (2,H0,W0)}; no spacing attributes."""
    import h5py

    path = Path(path)
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 3, "valid": 1, "test": 1}
    expected = {"root": path, "patients": {}, "split": {}}
    i = 0
    with h5py.File(path, "w") as f:
        for split, n in splits.items():
            expected["split"][split] = []
            for _ in range(n):
                i += 1
                pid = f"patient{i:04d}"
                expected["split"][split].append(pid)
                images, masks = {}, {}
                for view in VIEWS:
                    pairs = [make_pair(rng, ref_shape) for _ in PHASES]
                    small = [make_pair(rng, (size, size)) for _ in PHASES]
                    g = f.create_group(f"{split}/{pid}/{view}")
                    g["im"] = np.stack([s[0] for s in small]).astype(np.float32)[..., None] / 255.0
                    g["gt"] = np.stack([s[1] for s in small])
                    g["im_ref"] = np.stack([p[0] for p in pairs])
                    g["gt_ref"] = np.stack([p[1] for p in pairs])
                    for k, phase in enumerate(PHASES):
                        images[(view, phase)], masks[(view, phase)] = pairs[k]
                expected["patients"][pid] = {"group": split, "labelled": True, "shape": ref_shape,
                                             "spacing": (1.0, 1.0), "images": images, "masks": masks}
    return expected
