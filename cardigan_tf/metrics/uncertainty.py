"""Per-image uncertainty from member probabilities, and how well it ranks failures (NumPy).

Members are the M probability maps of one image that an ensemble (fold models) and/or test-time
augmentation (views mapped back to the image) give: ``member_probs`` float [M, B, H, W, C],
softmax over the last axis; M = 1 for a single model. The graph twin (serving) is
:mod:`cardigan_tf.metrics.uncertainty_graph`; the tests hold the two equal.

- ``uncertainty``: the mean normalised predictive entropy over the image's foreground region.
  Per pixel, the entropy of the members' mean probabilities ``H(p) = -sum_c p_c log p_c``,
  divided by ``log C`` so that it lies in [0, 1] (1 = uniform). The foreground region is the
  pixels that the mean prediction or any member labels as a structure (argmax != background):
  the whole image's mean would mostly measure the heart's size, since the background far from
  it is certain. An image with no foreground pixel scores 1.0, the largest value: nothing was
  found, which is not to be trusted (its QC flags say the structures are empty).
- ``disagreement``: 1 - the mean pairwise Dice of the members' argmax maps, the Dice averaged
  over the evaluated structures (:data:`cardigan_tf.labels.STRUCTURES`: LV endo, LV epi, LA;
  a structure absent from both maps of a pair agrees, Dice 1), then over the M (M - 1) / 2
  pairs. In [0, 1]; NaN when M = 1 (no pair: undefined, not "agrees").

Failure ranking (:func:`failure_ranking`): does a high uncertainty mark the images whose LV
endo Dice is below 0.90? The Mann-Whitney AUC (:func:`failure_auc`: the probability that a
failed image scores higher than a good one, ties counting one half) and the mean Dice of the
10 % most uncertain images against that of the rest.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from cardigan_tf.labels import BACKGROUND, STRUCTURES

#: The LV endo Dice below which an image counts as a failure.
FAILURE_DICE = 0.90
#: The share of most uncertain images compared with the rest.
TOP_FRACTION = 0.10
#: The uncertainty of an image with no foreground pixel.
EMPTY_UNCERTAINTY = 1.0


def check_member_probs(member_probs) -> np.ndarray:
    """float32 [M, B, H, W, C] member probabilities, or a ValueError saying what is wrong."""
    p = np.asarray(member_probs, dtype=np.float32)
    if p.ndim != 5:
        raise ValueError(f"member probabilities: expected shape [M, B, H, W, C], got {p.shape}")
    if p.shape[0] < 1 or p.shape[-1] < 2:
        raise ValueError(f"member probabilities: expected M >= 1 members and C >= 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("member probabilities: expected finite values, got NaN or inf")
    return p


def predictive_entropy(member_probs) -> np.ndarray:
    """float32 [B]: the mean normalised entropy of the mean probabilities over each image's
    foreground region (module docstring)."""
    p = check_member_probs(member_probs).astype(np.float64)
    mean = p.mean(axis=0)                                              # [B, H, W, C]
    entropy = -np.sum(mean * np.log(np.maximum(mean, 1e-12)), axis=-1) / math.log(p.shape[-1])
    region = (p.argmax(-1) != BACKGROUND).any(axis=0) | (mean.argmax(-1) != BACKGROUND)
    n = region.sum(axis=(1, 2))
    total = np.where(region, entropy, 0.0).sum(axis=(1, 2))
    return np.where(n > 0, total / np.maximum(n, 1), EMPTY_UNCERTAINTY).astype(np.float32)


def _structure_maps(labels: np.ndarray) -> np.ndarray:
    return np.stack([np.isin(labels, ids) for ids in STRUCTURES.values()], axis=-1)


def pairwise_dice(a, b) -> float:
    """The Dice of two label maps (H, W) averaged over the evaluated structures; a structure
    absent from both counts 1."""
    sa, sb = _structure_maps(np.asarray(a)), _structure_maps(np.asarray(b))
    dice = []
    for k in range(sa.shape[-1]):
        total = int(sa[..., k].sum()) + int(sb[..., k].sum())
        dice.append(1.0 if total == 0 else 2.0 * int((sa[..., k] & sb[..., k]).sum()) / total)
    return float(np.mean(dice))


def member_disagreement(member_probs) -> np.ndarray:
    """float32 [B]: 1 - the mean pairwise Dice of the members' argmax maps; NaN when M = 1."""
    p = check_member_probs(member_probs)
    labels = p.argmax(-1)                                              # [M, B, H, W]
    m = len(labels)
    out = np.full(labels.shape[1], np.nan, np.float32)
    if m < 2:
        return out
    for b in range(labels.shape[1]):
        pairs = [pairwise_dice(labels[i, b], labels[j, b]) for i in range(m) for j in range(i + 1, m)]
        out[b] = 1.0 - np.mean(pairs)
    return out


def member_uncertainty(member_probs) -> dict[str, np.ndarray]:
    """{"uncertainty": float32 [B], "disagreement": float32 [B] (NaN when M = 1)}."""
    return {"uncertainty": predictive_entropy(member_probs), "disagreement": member_disagreement(member_probs)}


def failure_auc(scores, failed) -> float:
    """Mann-Whitney AUC: the probability that a failed image scores higher than a good one, ties
    counting one half (from average ranks); NaN without a failed or without a good image."""
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(failed, dtype=bool)
    if s.shape != f.shape or s.ndim != 1:
        raise ValueError(f"failure_auc: expected scores and failed of one shape [N], got {s.shape} and {f.shape}")
    n1, n0 = int(f.sum()), int((~f).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[f].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def failure_ranking(uncertainty, dice, threshold: float = FAILURE_DICE,
                    top_fraction: float = TOP_FRACTION) -> dict:
    """How well ``uncertainty`` [N] ranks the images whose ``dice`` [N] (LV endo) is below
    ``threshold``: ``auc`` (:func:`failure_auc`), the mean Dice of the ``top_fraction`` most
    uncertain images (at least one) and of the rest, with the counts. Images with a non-finite
    score or Dice are left out (``n_excluded``)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    d = np.asarray(dice, dtype=np.float64)
    if u.shape != d.shape or u.ndim != 1:
        raise ValueError(f"failure_ranking: expected uncertainty and dice of one shape [N], "
                         f"got {u.shape} and {d.shape}")
    if not 0.0 < top_fraction < 1.0:
        raise ValueError(f"failure_ranking: top_fraction: expected a fraction in (0, 1), got {top_fraction}")
    keep = np.isfinite(u) & np.isfinite(d)
    u, d = u[keep], d[keep]
    failed = d < threshold
    out = {"threshold": threshold, "top_fraction": top_fraction, "n": len(u),
           "n_excluded": int((~keep).sum()), "n_failures": int(failed.sum()),
           "auc": failure_auc(u, failed), "n_top": 0, "dice_top": float("nan"), "dice_rest": float("nan")}
    if len(u):
        k = max(1, math.ceil(round(top_fraction * len(u), 9)))  # 0.1 * 30 is 3, not 3.0000000000000004
        order = np.argsort(-u, kind="stable")
        out["n_top"] = k
        out["dice_top"] = float(d[order[:k]].mean())
        out["dice_rest"] = float(d[order[k:]].mean()) if len(u) > k else float("nan")
    return out
