"""Like-for-like GAN quality on held-out masks, and the GAN checkpoint it selects."""

import json
import shutil

import numpy as np
import pytest

from cardigan_tf.jobs.gan_selection import (
    SELECTED_FILE,
    SELECTION_FILE,
    held_out_pairs,
    paired_consistency,
    select_checkpoint,
)
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.segmentation import dice
from cardigan_tf.runs import load_model_file, open_run


def test_paired_consistency_scores_real_and_generated_images_of_the_same_held_out_masks(gan_run, seg_run):
    data = open_run(seg_run, "seg").dataset()
    pairs = held_out_pairs(seg_run, data)
    assert pairs["split"] == "valid" and len(pairs["masks"]) == len(pairs["images"]) > 0
    generator = open_run(gan_run, "gan").load().model
    res = paired_consistency(generator, pairs, seed=0)
    # the real side by hand: the scorer's argmax on the real images, Dice per structure and image
    pred = np.asarray(pairs["trained"].model.predict(pairs["images"], verbose=0)).argmax(-1)
    for s, labels in (("lv_endo", (1,)), ("lv_epi", (1, 2)), ("la", (3,))):
        want = np.nanmean([dice(np.isin(p, labels), np.isin(m, labels)) for p, m in zip(pred, pairs["masks"])])
        assert res["structures"][s]["real"] == pytest.approx(want, abs=1e-9)
        r = res["structures"][s]
        assert r["gap"] == pytest.approx(r["real"] - r["synthetic"])
    assert res["score"] == pytest.approx(np.mean([res["structures"][s]["synthetic"] for s in STRUCTURES]))
    assert res["n_images"] == len(pairs["masks"])


def test_select_checkpoint_scores_every_kept_step_and_saves_the_best(gan_run, seg_run, tmp_path):
    gan = tmp_path / "gan"
    shutil.copytree(gan_run, gan)
    data = open_run(seg_run, "seg").dataset()
    record = select_checkpoint(gan, seg_run, data, seed=0)
    steps = [c["step"] for c in record["checkpoints"]]
    assert steps == [3, 6] and record["last_step"] == 6
    best = max(record["checkpoints"], key=lambda c: c["score"])
    assert record["selected_step"] == best["step"] and record["score"] == best["score"]
    # the saved generator is the selected one: rescoring it gives the recorded score
    selected = open_run(gan, "gan").load("selected").model
    again = paired_consistency(selected, held_out_pairs(seg_run, data), seed=0)
    assert again["score"] == pytest.approx(record["score"], abs=1e-6)
    assert json.loads((gan / SELECTION_FILE).read_text())["selected_step"] == record["selected_step"]
    before = (gan / SELECTED_FILE).stat().st_mtime_ns
    assert select_checkpoint(gan, seg_run, data)["selected_step"] == record["selected_step"]  # kept, not redone
    assert (gan / SELECTED_FILE).stat().st_mtime_ns == before
    assert load_model_file(gan / SELECTED_FILE) is not None
    empty = tmp_path / "empty"
    shutil.copytree(gan_run, empty, ignore=shutil.ignore_patterns("ckpt-*", "checkpoint"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        select_checkpoint(empty, seg_run, data)
