"""What a prepared dataset holds: frames and patients per split, view, phase and image quality
and acquisition style (a seed-layout .h5 read from its metadata only, a TFRecord folder from its
index, or arrays), and its frames as :class:`~cardigan_tf.data.sample.Sample`\ s whichever of the two formats it is in."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py

from cardigan_tf.data import h5layout, tfrecord
from cardigan_tf.data.pipeline import Source, is_tfrecord_dir
from cardigan_tf.data.sample import DataError, Sample


def dataset_info(source: Source) -> dict[str, Any]:
    """Counts per split, view, phase, quality and style: ``{split: {"frames", "patients", "views":
    {..}, "phases": {..}, "qualities": {..}, "styles": {..}}}`` (read from the metadata only for
    .h5 files; ``styles`` only where a file records them, as the phantom does)."""
    out: dict[str, Any] = {}

    def add(split, patient, view, phase, quality, style=""):
        d = out.setdefault(split, {"frames": 0, "patients": set(), "views": {}, "phases": {}, "qualities": {}})
        d["frames"] += 1
        d["patients"].add(patient)
        for key, value in (("views", view), ("phases", phase), ("qualities", quality or "unknown")):
            d[key][value] = d[key].get(value, 0) + 1
        if style:
            d.setdefault("styles", {})[style] = d.get("styles", {}).get(style, 0) + 1

    if isinstance(source, dict):
        n = len(source["image"])
        for i in range(n):
            get = lambda k: str(source[k][i]) if k in source else ""  # noqa: E731
            add(get("split") or "all", get("patient"), get("view"), get("phase"), get("quality"))
    elif is_tfrecord_dir(source):
        for split, entry in tfrecord.read_index(source).get("splits", {}).items():
            out[split] = {k: v for k, v in entry.items() if k != "files"}
        return out
    else:
        path = Path(source)
        if not h5layout.is_h5_layout(path):
            raise DataError(path, "not an HDF5 file in the seed layout (no train/valid/test group)")
        with h5py.File(path, "r") as fh:
            for split in h5layout.SPLITS:
                for patient in sorted(fh.get(split, {})):
                    for view, grp in fh[split][patient].items():
                        phases = h5layout._maybe_json(h5layout._decode(grp.attrs.get("phases", ""))) or list(h5layout.DEFAULT_PHASES)
                        quality = h5layout._decode(grp.attrs.get("quality", ""))
                        style = h5layout._decode(grp.attrs.get("style", ""))
                        for phase in phases:
                            add(split, patient, view, phase, quality, style)
    for d in out.values():
        d["patients"] = len(d["patients"])
    return out


def iter_dataset(source: str | Path, splits: Iterable[str] | None = None, views: Iterable[str] | None = None,
                 phases: Iterable[str] | None = None, with_ref: bool = False) -> Iterator[tuple[str, Sample]]:
    """``(split, Sample)`` of a seed-layout .h5 (:func:`cardigan_tf.data.h5layout.iter_samples`,
    ``with_ref`` adding the original-resolution arrays) or of a TFRecord folder
    (:func:`cardigan_tf.data.tfrecord.iter_samples`: the stored size only). Either way
    ``meta["spacing_known"]`` says whether the spacing is the images' own."""
    if is_tfrecord_dir(source):
        return tfrecord.iter_samples(source, splits, views, phases)
    return h5layout.iter_samples(source, splits, views, phases, with_ref=with_ref)


def format_info(info: dict[str, Any]) -> str:
    """Human-readable table of :func:`dataset_info`."""
    lines = []
    for split, d in info.items():
        parts = [f"{split}: {d.get('frames', d.get('examples', '?'))} frames, {d.get('patients', '?')} patients"]
        for key in ("views", "phases", "qualities", "styles"):
            if key in d:
                parts.append(key + " " + ", ".join(f"{k}={v}" for k, v in sorted(d[key].items())))
        lines.append("; ".join(parts))
    return "\n".join(lines)
