"""Patient-level splits: official lists when the source has them, seeded otherwise.

Splits are by patient, never by image.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def seeded_split(
    patients: Iterable[str],
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    names: Sequence[str] = ("train", "valid", "test"),
) -> dict[str, list[str]]:
    """Shuffle the sorted patient ids with ``seed`` and cut them by ``fractions``.

    Every patient lands in exactly one split; with at least as many patients as splits, each
    split gets at least one patient. Deterministic for a given seed and patient set.
    """
    pats = sorted(set(patients))
    if len(fractions) != len(names):
        raise ValueError("fractions and names must have the same length")
    if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions {list(fractions)} must be non-negative and sum to 1")
    order = np.random.default_rng(seed).permutation(len(pats))
    shuffled = [pats[i] for i in order]
    n = len(shuffled)
    counts = [int(round(f * n)) for f in fractions]
    if n >= len(names):
        for i, f in enumerate(fractions):
            if f > 0 and counts[i] == 0:
                counts[i] = 1
    while sum(counts) > n:
        counts[int(np.argmax(counts))] -= 1
    while sum(counts) < n:
        counts[0] += 1
    out, start = {}, 0
    for name, c in zip(names, counts):
        out[name] = sorted(shuffled[start : start + c])
        start += c
    return out


#: train/valid shares when the test patients are given separately: 8:1, the 80/10 of the seeded
#: three-way split (and CAMUS 2023's official 400/50 of the 450 patients outside its test list)
TRAIN_VALID_FRACTIONS = (8 / 9, 1 / 9)


def train_valid_split(patients: Iterable[str], seed: int = 0,
                      fractions: Sequence[float] = TRAIN_VALID_FRACTIONS) -> dict[str, list[str]]:
    """Seeded two-way split into ``train`` / ``valid`` (for when the test patients are fixed)."""
    return seeded_split(patients, seed, fractions, names=("train", "valid"))


def subset_patients(patients: Iterable[str], fraction: float, seed: int = 0) -> list[str]:
    """A seeded subset holding ``fraction`` of the patients (at least one)."""
    pats = sorted(set(patients))
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must be in (0, 1]")
    k = max(1, int(round(fraction * len(pats))))
    order = np.random.default_rng(seed).permutation(len(pats))[:k]
    return sorted(pats[i] for i in order)


def split_summary(counts: dict[str, list[str]], method: str) -> str:
    """Lines "train: 360 patients (patient0001 ... patient0450)" per split, then the method."""
    lines = []
    for split in ("train", "valid", "test", "unlabelled"):
        pats = counts.get(split, [])
        if not pats:
            continue
        shown = " ".join(pats) if len(pats) <= 4 else f"{' '.join(pats[:3])} ... {pats[-1]}"
        lines.append(f"{split}: {len(pats)} patients ({shown})")
    lines.append(f"split method: {method}")
    return "\n".join(lines)


def kfold_split(patients: Iterable[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint folds covering ``patients``: the sorted ids shuffled with ``seed`` and
    dealt in turn, so fold sizes differ by at most one. Deterministic for a seed and a set."""
    pats = sorted(set(patients))
    if int(k) < 2:
        raise ValueError(f"folds: expected at least 2, got {k}")
    if len(pats) < k:
        raise ValueError(f"{k} folds need at least {k} patients, got {len(pats)}")
    order = np.random.default_rng(seed).permutation(len(pats))
    return [sorted(pats[i] for i in order[j::k]) for j in range(int(k))]


def official_kfolds(lists: dict, patients: Iterable[str], k: int) -> list[list[str]]:
    """``k`` folds of ``patients`` from official fold lists (fold number -> the patients that
    fold holds out, e.g. CAMUS 2019's ``subGroup{n}_testing.txt``), in fold-number order: with
    ``k`` lists, fold j is the j-th list; with a multiple of ``k`` lists, the lists j, j + k,
    j + 2k, ... together. Each fold keeps only ``patients`` (the test patients are not in it).

    ValueError, saying why, when the lists do not give ``k`` folds of ``patients``: a count
    that is no multiple of ``k``, a patient in two lists, a patient in no list, an empty fold."""
    pats = set(patients)
    numbers = sorted(lists, key=lambda n: int(n))
    if not numbers or len(numbers) % int(k):
        raise ValueError(f"{len(numbers)} official fold lists cannot make {k} folds (a multiple of {k} is needed)")
    owner: dict[str, str] = {}
    for n in numbers:
        for p in lists[n]:
            if p in owner and owner[p] != n:
                raise ValueError(f"patient {p} is in the official lists of folds {owner[p]} and {n}")
            owner[p] = n
    unlisted = sorted(pats - set(owner))
    if unlisted:
        raise ValueError(f"{len(unlisted)} patients are in no official fold list: {unlisted[:5]}")
    folds = [sorted({p for i, n in enumerate(numbers) if i % k == j for p in lists[n]} & pats) for j in range(int(k))]
    empty = [j for j, f in enumerate(folds) if not f]
    if empty:
        groups = {j: [numbers[i] for i in range(len(numbers)) if i % k == j] for j in empty}
        raise ValueError(f"fold(s) {empty} would be empty: their official lists {groups} hold only patients "
                         "outside the pool (the test split)")
    return folds
