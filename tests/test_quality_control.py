"""Anatomical QC flags (NumPy reference and graph), per-image uncertainty (NumPy and graph) and the
failure ranking, on hand-made label maps, one phantom heart altered case by case, and
thresholded noise."""

import itertools
import math

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
import tf2onnx
from scipy import ndimage

import harness
from cardigan_tf.labels import LA, LV, MYO
from cardigan_tf.metrics import anatomy, uncertainty
from cardigan_tf.metrics.anatomy import QC_FLAGS, check_anatomy, flag_names, qc_bitmask, qc_flags_batch
from cardigan_tf.metrics.anatomy_graph import anatomy_flags_graph, qc_flags_graph
from cardigan_tf.metrics.uncertainty_graph import member_uncertainty_graph

QC_SPEC = [tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None, 2], tf.float32)]
qc_traced = tf.function(qc_flags_graph, input_signature=QC_SPEC)


def _heart():
    """One valid phantom heart, 64x64 (apex up, the LA below the cavity)."""
    return harness.phantom_masks(1, 64, seed=0)[0].astype(np.int32)


def _noise_maps(rng, n, shape, sigma):
    """Thresholded smoothed noise: 40 % background, 20 % of each structure, in many pieces."""
    out = []
    for _ in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        out.append(np.digitize(field, np.quantile(field, [0.4, 0.6, 0.8])))
    return np.stack(out).astype(np.int32)


def _crafted():
    m = _heart()
    cases = {"valid": (m, [])}
    c = m.copy()
    c[2:10, 2:10] = LV
    cases["two LV blobs"] = (c, ["lv_components", "lv_exposed"])  # the second one lies in background
    c = m.copy()
    c[2:4, 2:4] = LV  # 4 stray pixels: about 1 % of the cavity, debris below 5 %
    cases["an LV speck"] = (c, [])
    c = m.copy()
    c[28, 28] = 0
    cases["a hole in the cavity"] = (c, ["lv_holes", "epi_holes"])
    c = m.copy()
    band = c[24:30, :27]
    band[band == MYO] = 0
    cases["a gap in the lateral wall"] = (c, ["myo_components"])
    c = m.copy()
    left = c[:, :27]
    left[left == MYO] = 0
    cases["the lateral wall missing"] = (c, ["lv_exposed"])
    c = m.copy()
    c[m == LA] = 0
    c[np.roll(m == LA, 4, axis=0)] = LA
    cases["LA detached"] = (c, ["la_detached"])
    cases["empty frame"] = (np.zeros_like(m), ["lv_empty", "myo_empty", "la_empty"])
    cases["heart on its side"] = (np.rot90(m).copy(), ["long_axis"])
    c = m.copy()
    base = c[40:]
    base[base == LV] = MYO
    cases["myocardium closed at the base"] = (c, ["myo_holes", "la_detached"])
    cases["heart cropped to its top 40 rows"] = (m[:40].copy(), ["la_empty", "lv_at_border"])
    cases["heart shifted out of the frame"] = (np.roll(m, 20, axis=1), ["lv_at_border"])
    return cases


CRAFTED = _crafted()


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_masks_raise_exactly_their_flags_in_numpy_and_in_the_graph(case):
    mask, expected = CRAFTED[case]
    qc = check_anatomy(mask)
    assert qc.failed == expected
    assert qc.qc_flags == sum(1 << QC_FLAGS.index(name) for name in expected)
    assert flag_names(qc.qc_flags) == expected
    graph = anatomy_flags_graph(mask[None]).numpy()[0]
    assert [name for name, f in zip(QC_FLAGS, graph) if f] == expected
    assert int(qc_traced(mask[None], np.ones((1, 2), np.float32))[0]) == qc.qc_flags


def test_phantom_hearts_pass_at_64_and_256():
    for size in (64, 256):
        masks = harness.phantom_masks(6, size, seed=4)
        assert qc_flags_batch(masks).tolist() == [0] * 6


def test_bit_order_and_names():
    assert QC_FLAGS[0] == "lv_empty" and QC_FLAGS[-1] == "lv_at_border" and len(set(QC_FLAGS)) == len(QC_FLAGS) == 14
    assert qc_bitmask({"lv_empty": True, "long_axis": True, "la_holes": False}) == 1 + 4096
    assert flag_names(1 + 4096) == ["lv_empty", "long_axis"]
    assert flag_names(0) == []
    with pytest.raises(ValueError, match="unknown name.*'lv_big'"):
        qc_bitmask({"lv_big": True})
    assert flag_names(1 << 13) == ["lv_at_border"]
    with pytest.raises(ValueError, match="qc_flags: expected an int in \\[0, 16383\\]"):
        flag_names(16384)


def test_measures_against_hand_values():
    # a 6x6 cavity walled by myocardium on the top, left and right, open onto background below
    m = np.zeros((12, 12), np.int32)
    m[1:9, 2:10] = MYO
    m[3:9, 4:8] = LV  # 6 rows x 4 columns, bottom row on row 8 (background on row 9)
    qc = check_anatomy(m)
    # border: the 16 ring pixels of the 6x4 block; touching background: the 4 of its bottom row
    assert qc.measures["lv_exposed_fraction"] == pytest.approx(4 / 16)
    # second moments of a 6 x 4 block of unit squares: 36/12 and 16/12 -> length / width 6/4
    assert qc.measures["lv_elongation"] == pytest.approx(1.5)
    assert qc.measures["lv_axis_angle"] == pytest.approx(0.0)
    assert qc.failed == ["la_empty"]  # 0.25 is not above the threshold 0.25
    assert check_anatomy(m, rules=anatomy.QCRules(max_exposed_fraction=0.2)).failed == ["la_empty", "lv_exposed"]
    # spacing: rows of 0.5 mm make the block 3 mm x 4 mm, wider than long: length / width 4/3
    # along the columns, 90 degrees from the depth axis
    ratio, lean = anatomy.long_axis_shape(m == LV, spacing=(0.5, 1.0))
    assert ratio == pytest.approx(4 / 3) and lean == pytest.approx(90.0)
    assert "long_axis" in check_anatomy(m, spacing=(0.5, 1.0)).failed
    # a diagonal bar of 8 pixels leans 45 degrees; a single pixel is a round cavity (ratio 1)
    assert anatomy.long_axis_shape(np.eye(8, dtype=bool))[1] == pytest.approx(45.0)
    assert anatomy.long_axis_shape(np.pad([[True]], 2)) == pytest.approx((1.0, 0.0))


def test_graph_equals_numpy_on_noise_and_altered_hearts(rng):
    maps = np.concatenate([_noise_maps(rng, 6, (48, 72), 1.5), _noise_maps(rng, 4, (48, 72), 4.0)])
    hearts = harness.phantom_masks(6, 64, seed=9)[:, 8:56, :].astype(np.int32)
    hearts = np.concatenate([hearts, hearts[:, :, :8]], axis=2)  # 48 x 72: not square
    hearts[1, 20:23, 20:23] = 0
    hearts[2][hearts[2] == MYO] = 0
    maps = np.concatenate([maps, hearts])
    spacing = np.array([[0.3, 0.15]] * 8 + [[1.0, 1.0]] * 8, np.float32)
    ref = qc_flags_batch(maps, spacing)
    assert len(set(ref.tolist())) >= 5  # many different flag combinations are compared
    assert np.array_equal(qc_traced(maps, spacing).numpy(), ref)
    per_flag = anatomy_flags_graph(maps, spacing).numpy()
    assert np.array_equal(per_flag, [[check_anatomy(m, s).flags[f] for f in QC_FLAGS] for m, s in zip(maps, spacing)])


def test_bad_label_maps_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="expected labels 0..3, got range \\[0, 7\\]"):
        check_anatomy(np.array([[0, 7]]))
    with pytest.raises(ValueError, match="expected shape \\(H, W\\)"):
        check_anatomy(np.zeros((2, 3, 3), np.int32))
    with pytest.raises(ValueError, match="expected integer labels"):
        check_anatomy(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="spacing: expected positive"):
        check_anatomy(np.zeros((3, 3), np.int32), spacing=(0.0, 1.0))
    with pytest.raises(ValueError, match="QCRules.elongation"):
        anatomy.QCRules(elongation=(3.0, 2.0))


# ----------------------------------------------------------------------------- uncertainty
def _probs(rows):
    """[M, 1, 1, P, 4] member probabilities from per-member lists of per-pixel distributions."""
    return np.asarray(rows, np.float32)[:, None, None]


def test_entropy_against_hand_values():
    fg = [0.1, 0.7, 0.1, 0.1]
    h = -(3 * 0.1 * math.log(0.1) + 0.7 * math.log(0.7)) / math.log(4)
    # a certain background pixel is outside the foreground region and does not dilute the mean
    assert uncertainty.predictive_entropy(_probs([[fg, [1, 0, 0, 0]]]))[0] == pytest.approx(h, rel=1e-6)
    # two members, LV and MYO: the mean (0, .5, .5, 0) has entropy log 2 / log 4 = 0.5
    assert uncertainty.predictive_entropy(_probs([[[0, 1, 0, 0]], [[0, 0, 1, 0]]]))[0] == pytest.approx(0.5)
    # nothing found: the largest value
    assert uncertainty.predictive_entropy(_probs([[[0.9, 0.1, 0, 0]] * 3]))[0] == uncertainty.EMPTY_UNCERTAINTY


def test_disagreement_against_hand_values():
    # pixel 1: LV for member 1, MYO for member 2; pixel 2 background for both. LV endo Dice 0,
    # LV epi 1, LA absent from both (1): mean 2/3, disagreement 1/3
    p = _probs([[[0, 1, 0, 0], [1, 0, 0, 0]], [[0, 0, 1, 0], [1, 0, 0, 0]]])
    assert uncertainty.member_disagreement(p)[0] == pytest.approx(1 / 3)
    # three members, two identical: pairs (1, 2) 2/3, (1, 3) 2/3, (2, 3) 1 -> 1 - 7/9
    p3 = np.concatenate([p, p[1:]])
    assert uncertainty.member_disagreement(p3)[0] == pytest.approx(2 / 9)
    assert math.isnan(uncertainty.member_disagreement(p[:1])[0])  # one member: undefined


def test_uncertainty_graph_equals_numpy(rng):
    logits = rng.standard_normal((3, 4, 12, 16, 4)) * 2.0
    logits[..., 0] += np.linspace(-4.0, 4.0, 16)  # background certain on one side
    p = np.exp(logits)
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    p[:, 3] = np.eye(4, dtype=np.float32)[0]  # one image without foreground
    for members in (p[:1], p):
        ref = uncertainty.member_uncertainty(members)
        got = tf.function(member_uncertainty_graph)(tf.constant(members))
        np.testing.assert_allclose(got["uncertainty"].numpy(), ref["uncertainty"], rtol=1e-5)
        np.testing.assert_allclose(got["disagreement"].numpy(), ref["disagreement"], rtol=1e-5)
    assert ref["uncertainty"][3] == 1.0 and 0 < ref["disagreement"][0] < 1


def test_member_probabilities_are_checked():
    with pytest.raises(ValueError, match="expected shape \\[M, B, H, W, C\\]"):
        uncertainty.predictive_entropy(np.zeros((2, 8, 8, 4)))
    with pytest.raises(ValueError, match="expected finite values"):
        uncertainty.member_disagreement(np.full((1, 1, 2, 2, 4), np.nan))


def test_graphs_convert_to_onnx_with_equal_outputs(rng):
    def serve(labels, spacing, probs):
        return {"qc_flags": qc_flags_graph(labels, spacing), **member_uncertainty_graph(probs)}

    spec = [*QC_SPEC, tf.TensorSpec([None, None, None, None, 4], tf.float32)]
    proto, _ = tf2onnx.convert.from_function(tf.function(serve, input_signature=spec), input_signature=spec, opset=17)
    session = ort.InferenceSession(proto.SerializeToString())
    maps = np.concatenate([_noise_maps(rng, 3, (40, 56), 2.0), _crafted()["two LV blobs"][0][None, 12:52, 4:60]])
    spacing = np.ones((4, 2), np.float32)
    probs = np.eye(4, dtype=np.float32)[np.stack([maps, np.roll(maps, 1, axis=2)])]
    names = [o.name for o in session.get_outputs()]
    feeds = dict(zip([i.name for i in session.get_inputs()], (maps, spacing, probs)))
    out = dict(zip(names, session.run(None, feeds)))
    assert np.array_equal(out["qc_flags"], qc_flags_batch(maps, spacing))
    ref = uncertainty.member_uncertainty(probs)
    np.testing.assert_allclose(out["uncertainty"], ref["uncertainty"], rtol=1e-5)
    np.testing.assert_allclose(out["disagreement"], ref["disagreement"], rtol=1e-5)


# ----------------------------------------------------------------------------- failure ranking
def test_auc_equals_brute_force_pair_counting(rng):
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    failed = rng.random(40) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a, b in itertools.product(scores[failed], scores[~failed])]
    assert uncertainty.failure_auc(scores, failed) == pytest.approx(np.mean(pairs))
    assert uncertainty.failure_auc([0.9, 0.1], [True, False]) == 1.0
    assert math.isnan(uncertainty.failure_auc([0.1, 0.2], [False, False]))


def test_failure_ranking_against_hand_values():
    dice = np.array([0.95, 0.5, 0.93, 0.8, 0.97, 0.96, 0.92, 0.94, 0.91, 0.95, np.nan])
    unc = np.array([0.10, 0.90, 0.20, 0.30, 0.05, 0.25, 0.15, 0.12, 0.35, 0.11, 0.99])
    r = uncertainty.failure_ranking(unc, dice)
    assert (r["n"], r["n_excluded"], r["n_failures"], r["n_top"]) == (10, 1, 2, 1)
    # failures 0.90 and 0.30 against 8 good images: 0.90 beats all 8, 0.30 all but 0.35
    assert r["auc"] == pytest.approx((8 + 7) / 16)
    assert r["dice_top"] == 0.5 and r["dice_rest"] == pytest.approx(np.mean(np.delete(dice[:10], 1)))
    top_two = uncertainty.failure_ranking(unc[:10], dice[:10], top_fraction=0.2)
    assert top_two["n_top"] == 2 and top_two["dice_top"] == pytest.approx((0.5 + 0.91) / 2)
    with pytest.raises(ValueError, match="one shape"):
        uncertainty.failure_ranking(unc, dice[:3])
