"""A segmentation export's per-image outputs against their NumPy reference (for the export's
checks: the ONNX parity at export time, ``export --check``).

The served ``uncertainty`` and ``disagreement`` (:data:`cardigan_tf.serving.contract.IMAGE_OUTPUTS`)
must equal :func:`cardigan_tf.inference.combine_members` of the reference member probabilities
within :data:`SCORE_TOLERANCE`, and ``qc_flags`` must equal
:func:`cardigan_tf.metrics.anatomy.check_anatomy` on the reference label map at the working size
(the argmax of the reference mean probabilities): exactly, unless that map has pixels whose two
best classes lie within :data:`QC_TIE_MARGIN` (where float rounding may pick the other one), in
which case the served flags must be those of the map with some of those pixels taken as their
runner-up (every choice among the :data:`MAX_TIES` nearest ties is tried).
"""

from __future__ import annotations

import itertools

import numpy as np

from cardigan_tf.inference import combine_members
from cardigan_tf.metrics.anatomy import check_anatomy, flag_names

__all__ = ["MAX_TIES", "QC_TIE_MARGIN", "SCORE_TOLERANCE", "compare_scores", "qc_flags_match", "reference_scores"]

#: max |served - reference| of ``uncertainty`` and ``disagreement`` (float32 sums over an image)
SCORE_TOLERANCE = 1e-4
#: two classes whose mean probabilities differ by at most this are a near-tie of the label map
QC_TIE_MARGIN = 2e-4
#: the near-ties of one label map whose runner-up labels are tried
MAX_TIES = 8


def reference_scores(member_probs) -> dict[str, np.ndarray]:
    """The reference of the per-image outputs from member probabilities [M, N, s, s, C]:
    ``uncertainty`` (and ``disagreement`` when M > 1), ``qc_flags`` of the mean's argmax, and
    ``working_probabilities`` (the mean, which :func:`compare_scores` reads for near-ties)."""
    mean, scores = combine_members(member_probs)
    flags = np.array([check_anatomy(m).qc_flags for m in mean.argmax(-1)], np.int32)
    return {**scores, "qc_flags": flags, "working_probabilities": mean}


def qc_flags_match(flags: int, probs: np.ndarray) -> bool:
    """Whether ``flags`` are the checks of the argmax of ``probs`` (s, s, C), or of that label map
    with some of its :data:`MAX_TIES` nearest near-ties taken as their runner-up."""
    order = np.argsort(probs, axis=-1)
    top, second = order[..., -1], order[..., -2]
    labels = top.astype(np.int32)
    if check_anatomy(labels).qc_flags == int(flags):
        return True
    margin = np.take_along_axis(probs, top[..., None], -1)[..., 0] - np.take_along_axis(probs, second[..., None], -1)[..., 0]
    ties = [np.unravel_index(i, margin.shape) for i in np.argsort(margin, axis=None)[:MAX_TIES]
            if margin.flat[i] <= QC_TIE_MARGIN]
    for k in range(1, len(ties) + 1):
        for chosen in itertools.combinations(ties, k):
            alt = labels.copy()
            for pixel in chosen:
                alt[pixel] = second[pixel]
            if check_anatomy(alt).qc_flags == int(flags):
                return True
    return False


def compare_scores(ref: dict, got: dict, where: str, error=ValueError) -> float:
    """Max |difference| of the scores; ``error`` (an exception class) naming the output, the
    image and the values when a score or ``qc_flags`` does not match ``ref``
    (:func:`reference_scores`)."""
    worst = 0.0
    for name in ("uncertainty", "disagreement"):
        if name not in ref:
            if name in got:
                raise error(f"{where}: {name}: an output of a single model (M = 1), which has no {name}")
            continue
        if name not in got:
            raise error(f"{where}: output {name!r} missing (expected float32 [B])")
        a, b = np.asarray(ref[name], np.float64), np.asarray(got[name], np.float64)
        if a.shape != b.shape:
            raise error(f"{where}: {name} shape {b.shape}, expected {a.shape}")
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        if not diff <= SCORE_TOLERANCE:
            i = int(np.argmax(np.abs(a - b)))
            raise error(f"{where}: {name} of image {i} is {b[i]:.6g}, the reference "
                        f"(cardigan_tf.inference.combine_members) {a[i]:.6g} (tolerance {SCORE_TOLERANCE})")
        worst = max(worst, diff)
    if "qc_flags" not in got:
        raise error(f"{where}: output 'qc_flags' missing (expected int32 [B])")
    flags = np.asarray(got["qc_flags"])
    if flags.shape != ref["qc_flags"].shape or flags.dtype != np.int32:
        raise error(f"{where}: qc_flags {flags.dtype} {flags.shape}, expected int32 {ref['qc_flags'].shape}")
    for i, (f, p) in enumerate(zip(flags, ref["working_probabilities"])):
        if not qc_flags_match(f, p):
            raise error(f"{where}: qc_flags of image {i} are {int(f)} {flag_names(f)}, the NumPy checks "
                        f"(cardigan_tf.metrics.anatomy) of its label map give {int(ref['qc_flags'][i])} "
                        f"{flag_names(ref['qc_flags'][i])}")
    return worst
