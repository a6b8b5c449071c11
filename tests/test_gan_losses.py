"""GAN losses against hand-written numpy references (cardigan_tf.losses.gan)."""

import keras
import numpy as np
import pytest

from cardigan_tf.losses import gan as L


def _d_out(rng, batch=3, shapes=((8, 8), (4, 4)), channels=(4, 6)):
    """A fake 2-scale discriminator output: features (all but last) + logits (last)."""
    out = []
    for h, w in shapes:
        feats = [rng.standard_normal((batch, h, w, c)).astype("float32") for c in channels]
        feats.append(rng.standard_normal((batch, h // 2, w // 2, 1)).astype("float32"))
        out.append(feats)
    return out


def test_d_hinge_matches_numpy(rng):
    real, fake = _d_out(rng), _d_out(rng)
    want = np.mean([np.maximum(0, 1 - r[-1]).mean() + np.maximum(0, 1 + f[-1]).mean()
                    for r, f in zip(real, fake)])
    got = float(L.d_hinge_loss(real, fake))
    assert got == pytest.approx(want, rel=1e-5)
    # perfect discriminator -> zero loss
    assert float(L.d_hinge_loss([[np.full((2, 4, 4, 1), 3.0)]], [[np.full((2, 4, 4, 1), -3.0)]])) == 0.0


def test_g_hinge_and_scores_match_numpy(rng):
    fake = _d_out(rng)
    want = np.mean([-f[-1].mean() for f in fake])
    assert float(L.g_hinge_loss(fake)) == pytest.approx(want, rel=1e-5)
    assert float(L.d_scores(fake)) == pytest.approx(-want, rel=1e-5)


def test_feature_matching_matches_numpy_and_ignores_logits(rng):
    real, fake = _d_out(rng), _d_out(rng)
    want = sum(np.abs(r - f).mean() for rs, fs in zip(real, fake) for r, f in zip(rs[:-1], fs[:-1]))
    want /= len(real)  # NVIDIA: x lambda_feat / num_D
    assert float(L.feature_matching_loss(real, fake)) == pytest.approx(want, rel=1e-5)
    changed = [fs[:-1] + [fs[-1] + 100.0] for fs in fake]
    assert float(L.feature_matching_loss(real, changed)) == pytest.approx(want, rel=1e-5)
    assert float(L.feature_matching_loss(real, real)) == 0.0


def test_kl_matches_numpy(rng):
    mu = rng.standard_normal((5, 7)).astype("float32")
    logvar = rng.standard_normal((5, 7)).astype("float32")
    want = np.mean(-0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), axis=1))
    assert float(L.kl_loss(mu, logvar)) == pytest.approx(want, rel=1e-5)
    assert float(L.kl_loss(np.zeros((2, 3)), np.zeros((2, 3)))) == pytest.approx(0.0, abs=1e-7)


def test_losses_are_float32_for_half_inputs(rng):
    real = [[f.astype("float16") for f in s] for s in _d_out(rng)]
    fake = [[f.astype("float16") for f in s] for s in _d_out(rng)]
    for value in (L.d_hinge_loss(real, fake), L.g_hinge_loss(fake), L.feature_matching_loss(real, fake)):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"


def test_vgg_needs_a_weights_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        L.VGGPerceptualLoss(missing)


def test_vgg_loss_with_a_local_weights_file(tmp_path, rng):
    path = tmp_path / "vgg19_notop.weights.h5"
    keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3)).save_weights(path)
    vgg = L.VGGPerceptualLoss(path)
    a = rng.uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    b = rng.uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    assert float(vgg(a, a)) == pytest.approx(0.0, abs=1e-6)
    feats_a = vgg.model(vgg.preprocess(a))
    feats_b = vgg.model(vgg.preprocess(b))
    want = sum(w * np.abs(np.asarray(fa) - np.asarray(fb)).mean()
               for w, fa, fb in zip(L.VGG_LAYER_WEIGHTS, feats_a, feats_b))
    assert float(vgg(a, b)) == pytest.approx(want, rel=1e-4)
    # preprocessing: gray -> 3 channels, [0, 255], caffe means subtracted
    p = np.asarray(vgg.preprocess(np.zeros((1, 2, 2, 1), "float32")))
    np.testing.assert_allclose(p[0, 0, 0], 127.5 - np.array([103.939, 116.779, 123.68]), rtol=1e-5)
