"""Dice + CE loss against a numpy reference; the Keras Dice metric against numpy Dice."""

import keras
import numpy as np
import pytest

from cardigan_tf.losses.segmentation import DiceCELoss
from cardigan_tf.metrics.keras_metrics import StructureDice, structure_dice_metrics


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_loss(labels, probs, dice_w, ce_w, smooth=1.0, class_weights=None, eps=1e-7):
    """Independent per-image numpy reference."""
    out = []
    for y, p in zip(labels, probs):
        oh = np.eye(4)[y]
        dices = []
        for c in (1, 2, 3):
            inter = (oh[..., c] * p[..., c]).sum()
            dices.append((2 * inter + smooth) / (oh[..., c].sum() + p[..., c].sum() + smooth))
        ce_pix = -np.log(np.clip(p[np.arange(y.shape[0])[:, None], np.arange(y.shape[1])[None], y], eps, 1))
        if class_weights is None:
            ce = ce_pix.mean()
        else:
            w = np.asarray(class_weights)[y]
            ce = (w * ce_pix).sum() / w.sum()
        out.append(dice_w * (1 - np.mean(dices)) + ce_w * ce)
    return float(np.mean(out))


@pytest.mark.parametrize("dice_w,ce_w,cw", [(1.0, 1.0, None), (0.3, 2.0, None), (1.0, 0.5, [0.1, 1, 2, 3]),
                                            (0.0, 1.0, None), (1.0, 0.0, None)])
def test_loss_matches_numpy_reference(rng, dice_w, ce_w, cw):
    labels = rng.integers(0, 4, size=(3, 16, 16))
    probs = _softmax(rng.normal(size=(3, 16, 16, 4)) * 2).astype(np.float32)
    loss = DiceCELoss(dice_weight=dice_w, ce_weight=ce_w, class_weights=cw)
    got = float(loss(labels, probs))
    assert got == pytest.approx(_reference_loss(labels, probs, dice_w, ce_w, class_weights=cw), rel=1e-4)
    # one-hot targets give the same value as integer labels
    assert float(loss(np.eye(4, dtype=np.float32)[labels], probs)) == pytest.approx(got, rel=1e-5)


def test_loss_zero_for_perfect_prediction(rng):
    labels = rng.integers(0, 4, size=(2, 16, 16))
    perfect = np.eye(4, dtype=np.float32)[labels]
    assert float(DiceCELoss()(labels, perfect)) == pytest.approx(0.0, abs=1e-5)
    wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4]
    assert float(DiceCELoss()(labels, wrong)) > 1.0


def test_loss_in_float32_from_bfloat16_input(rng):
    labels = rng.integers(0, 4, size=(2, 8, 8))
    probs = _softmax(rng.normal(size=(2, 8, 8, 4))).astype(np.float32)
    value = DiceCELoss()(labels, keras.ops.cast(probs, "bfloat16"))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"


def test_loss_config_round_trip_and_errors():
    loss = DiceCELoss(dice_weight=0.5, ce_weight=2.0, class_weights=[1, 2, 3, 4], smooth=0.1)
    clone = DiceCELoss.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="class_weights"):
        DiceCELoss(class_weights=[1, 2])
    with pytest.raises(ValueError, match="weights"):
        DiceCELoss(dice_weight=0, ce_weight=0)


def _np_dice(pred, gt, labels):
    p, g = np.isin(pred, labels), np.isin(gt, labels)
    return 2 * (p & g).sum() / (p.sum() + g.sum())


def test_keras_dice_metric_matches_numpy_over_batches(rng):
    gts = [rng.integers(0, 4, size=(2, 12, 12)) for _ in range(3)]
    probs = [_softmax(rng.normal(size=(2, 12, 12, 4)) + 3 * np.eye(4)[g] * (rng.random((2, 12, 12, 1)) > 0.3))
             .astype(np.float32) for g in gts]
    metrics = {m.name: m for m in structure_dice_metrics()}
    for g, p in zip(gts, probs):
        for m in metrics.values():
            m.update_state(g, p)
    all_gt = np.concatenate(gts)
    all_pred = np.concatenate(probs).argmax(-1)
    expected = {"dice_lv_endo": _np_dice(all_pred, all_gt, [1]), "dice_lv_epi": _np_dice(all_pred, all_gt, [1, 2]),
                "dice_la": _np_dice(all_pred, all_gt, [3])}
    expected["dice_mean"] = np.mean(list(expected.values()))
    for name, value in expected.items():
        assert float(metrics[name].result()) == pytest.approx(value, rel=1e-5)
    assert 0.2 < expected["dice_lv_endo"] < 0.99  # the check is not trivial
    m = metrics["dice_lv_endo"]
    m.reset_state()
    m.update_state(np.eye(4, dtype=np.float32)[gts[0]], np.eye(4, dtype=np.float32)[gts[0]])  # one-hot, perfect
    assert float(m.result()) == pytest.approx(1.0)


def test_keras_dice_metric_config_and_errors():
    m = StructureDice("la")
    clone = StructureDice.from_config(m.get_config())
    assert clone.structure == "la" and clone.name == "dice_la"
    with pytest.raises(ValueError, match="structure"):
        StructureDice("rv")
