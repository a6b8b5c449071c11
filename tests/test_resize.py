"""The one resize path (cardigan_tf.resize) against independent references."""

from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cardigan_tf import resize as rz


def _area_reference(image, shape):
    """Exact area averaging, written independently: overlap of each output cell with each pixel."""
    def weights(n_in, n_out):
        scale = n_in / n_out
        edges = np.arange(n_out + 1) * scale
        j = np.arange(n_in)[None, :]
        overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)
        return np.clip(overlap, 0, None) / scale

    return weights(image.shape[0], shape[0]) @ image @ weights(image.shape[1], shape[1]).T


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_image_shrink_is_exact_area_average(rng):
    img = rng.random((60, 40))
    ref = img.reshape(30, 2, 10, 4).mean(axis=(1, 3))  # integer factors: block means
    np.testing.assert_allclose(rz.resize_image_np(img, (30, 10)), ref, atol=1e-6)
    odd = rng.random((843, 512)).astype(np.float32)  # CAMUS-like, non-integer factors
    np.testing.assert_allclose(rz.resize_image_np(odd, 256), _area_reference(odd.astype(np.float64), (256, 256)),
                               atol=1e-5)


def test_image_enlarge_is_bilinear_and_clipped(rng):
    img = rng.random((20, 30)).astype(np.float32)
    ref = tf.image.resize(img[..., None], (64, 64), method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(rz.resize_image_np(img, 64), np.clip(ref, 0, 1), atol=1e-6)
    mixed = rng.random((100, 30)).astype(np.float32)  # shrinks one axis, enlarges the other
    ref = tf.image.resize(mixed[..., None], (64, 64), method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(rz.resize_image_np(mixed, 64), ref, atol=1e-6)


def _nearest_reference(m, out):
    """Pixel-centre nearest in exact rational arithmetic: src = floor((i + 1/2) * in / out)."""
    rows = [min(int((Fraction(2 * i + 1, 2) * m.shape[0]) // out[0]), m.shape[0] - 1) for i in range(out[0])]
    cols = [min(int((Fraction(2 * j + 1, 2) * m.shape[1]) // out[1]), m.shape[1] - 1) for j in range(out[1])]
    return m[np.ix_(rows, cols)]


def test_mask_nearest_is_exact_pixel_centre_in_numpy_and_graph(rng):
    small = rng.integers(0, 4, (70, 48)).astype(np.uint8)  # and PIL agrees on moderate factors
    pil = np.asarray(Image.fromarray(small).resize((32, 32), Image.NEAREST))
    np.testing.assert_array_equal(rz.resize_mask_np(small, (32, 32)), pil)
    for shape, out in (((70, 48), (32, 32)), ((32, 32), (843, 512)), ((64, 64), (64, 64)), ((256, 256), (843, 512))):
        m = rng.integers(0, 4, shape).astype(np.uint8)
        ref = _nearest_reference(m, out)
        np.testing.assert_array_equal(rz.resize_mask_np(m, out), ref)
        graph = tf.function(lambda x: rz.resize_mask(x, out),
                            input_signature=[tf.TensorSpec([None, None], tf.uint8)])
        np.testing.assert_array_equal(graph(m).numpy(), ref)


def test_graph_resize_equals_eager_for_dynamic_shapes(rng):
    fn = tf.function(lambda x: rz.resize_image(x, 64), input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
    for shape in ((2, 100, 80, 1), (1, 64, 64, 1), (3, 30, 200, 1)):
        x = rng.random(shape).astype(np.float32)
        np.testing.assert_allclose(fn(x).numpy(), rz.resize_images_np(x, 64), atol=1e-6)


def test_chain_replays_prepare_then_working_size(rng):
    img = rng.random((843, 512)).astype(np.float32)
    two_step = rz.resize_image_np(rz.resize_image_np(img, 256), 64)
    np.testing.assert_allclose(rz.resize_chain(img[None, ..., None], (256, 64)).numpy()[0, ..., 0], two_step,
                               atol=1e-6)


def test_probabilities_are_resized_before_argmax():
    # a 2x2 prediction: class 1 only in the top-left cell; upsampled to 8x8 the class-1 region
    # is the bilinear one, not a nearest 4x4 block
    p = np.zeros((2, 2, 2), np.float32)
    p[..., 0] = 0.6
    p[..., 1] = 0.4
    p[0, 0] = (0.0, 1.0)
    mask = rz.probs_to_mask_np(p, (8, 8))
    assert mask.dtype == np.uint8 and mask.shape == (8, 8)
    assert mask[0, 0] == 1 and mask[7, 7] == 0
    assert 0 < mask.sum() != 16  # not the nearest-upsampled block


def test_dynamic_target_size_in_a_graph(rng):
    """Serving resizes back to the input's own size, known only at run time."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32),
                                  tf.TensorSpec([None, None, None, 1], tf.float32)])
    def back(probs, like):
        size = tf.shape(like)[1:3]
        return rz.probs_to_mask(probs, size), rz.resize_image(like, size), rz.resize_mask(tf.cast(like[..., 0] * 3, tf.uint8), size)

    p = rng.random((1, 8, 8, 4)).astype(np.float32)
    like = rng.random((1, 30, 20, 1)).astype(np.float32)
    m, im, _ = back(p, like)
    np.testing.assert_array_equal(m.numpy()[0], rz.probs_to_mask_np(p[0], (30, 20)))
    np.testing.assert_allclose(im.numpy(), like, atol=1e-6)
