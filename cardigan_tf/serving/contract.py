"""The serving contract shared by the graphs (:mod:`cardigan_tf.serving.signatures`) and the
clients: signature names, input rules, and the client's half of the fixed-size signature.

A segmentation export answers in two ways:

- any size (``serving_default`` float32, ``serving_uint8``): (B, H, W[, 1]) at any H x W, the whole
  resize chain in the graph, outputs at H x W. Never batched by the server (one request's
  frames share H x W, two requests' need not: TF-Serving refuses to concatenate them).
- fixed size (:data:`FIXED_SIGNATURE`): ``image`` float32 (B, S, S, 1) at S = the first size of
  the run's resize chain (the prepared size, else the working size); the rest of the chain and
  the U-Net in the graph; outputs at the working size s: ``probabilities`` (B, s, s, K) and
  ``mask`` (B, s, s). Every request has the same shape, so the server may batch it.

Both kinds also answer, per image, :data:`IMAGE_OUTPUTS`: ``uncertainty`` float32 (B,) (the
score of :func:`cardigan_tf.inference.combine_members`: foreground-region predictive entropy of
the members, an ensemble's folds and test-time views, or the one model's softmax),
``qc_flags`` int32 (B,) (the bitmask of the anatomical checks of
:mod:`cardigan_tf.metrics.anatomy` on the predicted label map at the working size, square
pixels there; bit i is :data:`~cardigan_tf.metrics.anatomy.QC_FLAGS` [i]) and, for an
ensemble of more than one member, ``disagreement`` float32 (B,) (1 - mean pairwise Dice).
:func:`qc_columns` turns ``qc_flags`` into one 0/1 column per flag name (:func:`image_columns`:
all of one image's, as predict's CSV has them); :func:`qc_record` is what ``metadata.json``
records of them.

:func:`segment_frames` is the client's side of the fixed-size signature: each frame goes
through the first step of the chain here, with the same :mod:`cardigan_tf.resize` call the
graph makes, and the probabilities come back to the frame's H x W through the graph's own
resize and argmax, so the masks equal the any-size signature's within float rounding.
TensorFlow (through :mod:`cardigan_tf.resize`) is imported on first use only.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from cardigan_tf import resize
from cardigan_tf.metrics.anatomy import QC_FLAGS, QCRules, flag_names

__all__ = ["ANY_SIZE_SIGNATURES", "FIXED_SIGNATURE", "IMAGE_OUTPUTS", "MAX_SIDE", "RANGE_TOLERANCE", "fixed_sizes",
           "fixed_input", "frames_from_fixed", "image_columns", "qc_columns", "qc_record", "segment_frames"]

FIXED_SIGNATURE = "serving_fixed"
ANY_SIZE_SIGNATURES = ("serving_default", "serving_uint8")
MAX_SIDE = 4096
RANGE_TOLERANCE = 1e-3
#: the per-image outputs of a segmentation signature, beside ``probabilities`` and ``mask``
#: (``disagreement`` only for an ensemble of more than one member)
IMAGE_OUTPUTS = ("uncertainty", "disagreement", "qc_flags")


def qc_columns(qc_flags) -> dict[str, int]:
    """``qc_flags`` (one image's bitmask) -> ``{"qc_<flag>": 0 or 1}`` for every flag of
    :data:`~cardigan_tf.metrics.anatomy.QC_FLAGS`, in bit order (the columns of evaluate's
    per-image CSV and of predict's)."""
    names = set(flag_names(int(qc_flags)))
    return {f"qc_{name}": int(name in names) for name in QC_FLAGS}


def image_columns(outputs: dict, i: int) -> dict:
    """Image ``i``'s per-image outputs of a signature's ``outputs`` as columns: ``uncertainty``,
    ``disagreement``, ``qc_flags`` and :func:`qc_columns`, each only when the model answers it."""
    row = {k: float(np.asarray(outputs[k])[i]) for k in IMAGE_OUTPUTS if k in outputs and k != "qc_flags"}
    if "qc_flags" in outputs:
        flags = int(np.asarray(outputs["qc_flags"])[i])
        row.update(qc_flags=flags, **qc_columns(flags))
    return row


def qc_record() -> dict:
    """What ``metadata.json`` says of the per-image outputs: the bit order of ``qc_flags``, the
    thresholds, and on which label map the checks run."""
    return {"qc_flags": {"bits": list(QC_FLAGS), "rules": dataclasses.asdict(QCRules()),
                         "label_map": "the argmax of the mean probabilities at the working size, square pixels "
                                      "(cardigan_tf.metrics.anatomy_graph; reference cardigan_tf.metrics.anatomy)"},
            "uncertainty": "mean normalised predictive entropy of the members over the foreground region, at the "
                           "working size (cardigan_tf.metrics.uncertainty; 1.0 without a foreground pixel)",
            "disagreement": "1 - mean pairwise structure Dice of the members' label maps (ensembles of more than "
                            "one member only)"}


def fixed_sizes(shapes: dict, signature_name: str = FIXED_SIGNATURE) -> tuple[int, int]:
    """(input side S, output side s) of a fixed-size signature from its shapes
    (``{"inputs": {"image": [-1, S, S, 1]}, "outputs": {"probabilities": [-1, s, s, K], ...}}``)."""
    image = shapes.get("inputs", {}).get("image")
    probs = shapes.get("outputs", {}).get("probabilities")
    ok_in = image is not None and len(image) == 4 and image[1] == image[2] and image[1] > 0 and image[3] == 1
    ok_out = probs is not None and len(probs) == 4 and probs[1] == probs[2] and probs[1] > 0
    if not (ok_in and ok_out):
        raise ValueError(f"signature {signature_name!r}: expected a fixed-size signature (input image "
                         f"[-1, S, S, 1], output probabilities [-1, s, s, K]), got input {image} and "
                         f"output {probs}")
    return int(image[1]), int(probs[1])


def _frame(frame, i: int) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 or 0 in a.shape or max(a.shape) > MAX_SIDE:
        raise ValueError(f"frame {i}: expected a 2-D gray image (H, W) or (H, W, 1) with sides 1..{MAX_SIDE}, "
                         f"got shape {list(np.shape(frame))}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind != "f":
        raise ValueError(f"frame {i}: expected float32 in [0, 1] or uint8, got {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"frame {i}: float values must be finite (no NaN or inf)")
    if a.min() < -RANGE_TOLERANCE or a.max() > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"frame {i}: float values must be in [0, 1] (got min {a.min():.4g}, max {a.max():.4g}); "
                         "send 0-255 pixels as uint8")
    return a


def fixed_input(frames: Sequence, size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Frames of any sizes (uint8, or float in [0, 1]) -> ((N, size, size, 1) float32, their (H, W)).

    The steps of the any-size graph before its first resize (uint8 / 255, clip to [0, 1]) and
    that resize (:func:`cardigan_tf.resize.resize_image`). Out-of-range values are refused here:
    on a batching server a bad row fails every request batched with it."""
    rows, shapes = [], []
    for i, frame in enumerate(frames):
        a = np.clip(_frame(frame, i), 0.0, 1.0)
        shapes.append(a.shape)
        rows.append(resize.resize_image(a[None, ..., None], int(size)).numpy()[0])
    if not rows:
        raise ValueError("frames: at least one frame is needed")
    return np.stack(rows).astype(np.float32), shapes


def frames_from_fixed(outputs: dict, shapes: Sequence[tuple[int, int]]) -> dict[str, list]:
    """A fixed-size signature's outputs -> one entry per frame at the frame's own size:
    ``probabilities`` resized bilinearly (:func:`cardigan_tf.resize.resize_probabilities`),
    ``mask`` their argmax (:func:`cardigan_tf.resize.probs_to_mask`), as the any-size graph
    does; any other output is returned row by row as the server gave it."""
    probs = np.asarray(outputs["probabilities"], np.float32)
    if len(probs) != len(shapes):
        raise ValueError(f"probabilities: {len(probs)} rows for {len(shapes)} frames")
    out: dict[str, list] = {"probabilities": [], "mask": []}
    for i, (h, w) in enumerate(shapes):
        p = resize.resize_probabilities(probs[i:i + 1], (h, w))
        out["probabilities"].append(p.numpy()[0])
        out["mask"].append(resize.probs_to_mask(p).numpy()[0])
    for key, value in outputs.items():
        if key not in out:
            out[key] = [np.asarray(value)[i] for i in range(len(shapes))]
    return out


def segment_frames(predict: Callable[[np.ndarray], dict], shapes: dict, frames: Sequence,
                   signature_name: str = FIXED_SIGNATURE) -> dict[str, list]:
    """Segment frames of any sizes through a fixed-size signature in one request.

    ``predict``: sends ``{"image": (N, S, S, 1) float32}`` to the signature and returns its
    outputs; ``shapes``: the signature's input and output shapes (the clients'
    ``signature_shapes``). Returns ``{output: [one array per frame]}`` (see
    :func:`frames_from_fixed`)."""
    size, _ = fixed_sizes(shapes, signature_name)
    x, frame_shapes = fixed_input(frames, size)
    return frames_from_fixed(predict(x), frame_shapes)
