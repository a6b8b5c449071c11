"""Trained U-Nets -> one ensemble model with one resize chain (for ``runs.load_ensemble``).

:func:`combine` checks that the members share their resize chain (the same working and
prepared size: the ensemble replays ONE chain, :class:`~cardigan_tf.inference.Preprocessing`,
as a single model does), checks the test-time views against every member's training
augmentation (:func:`cardigan_tf.configs.cv.check_tta`) and builds the model
(:func:`cardigan_tf.models.ensemble.build_ensemble`: mean probabilities first, member
probabilities second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cardigan_tf.config import ConfigError
from cardigan_tf.configs.cv import check_tta
from cardigan_tf.models.ensemble import build_ensemble


class EnsembleError(ConfigError):
    """Members that cannot form one ensemble (different sizes, views they were not trained for)."""


def combine(models: Sequence[Any], preprocessings: Sequence[Any], paths: Sequence[Path], augments: Sequence[Any],
            tta: Sequence[str] = ()) -> tuple[Any, Any, list[str]]:
    """(ensemble model, its Preprocessing, the views checked) of member ``models`` with their
    ``preprocessings``, model files ``paths`` (named in errors) and training ``augments``."""
    chains = {}
    for pre, path in zip(preprocessings, paths):
        chains.setdefault((pre.working_size, pre.prepared_size), []).append(str(path))
    if len(chains) != 1:
        listed = "; ".join(f"working {w}, prepared {p}: {files[0]}" for (w, p), files in chains.items())
        raise EnsembleError(f"ensemble members with different resize chains ({listed}); an ensemble runs one "
                            "chain: give members trained at one size on data prepared at one size")
    views = check_tta(tta, list(augments), where="tta")
    return build_ensemble(list(models), views), preprocessings[0], views
