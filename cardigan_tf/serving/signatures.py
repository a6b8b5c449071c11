"""Serving graphs of the exported models: input checks, the resize chain and the signatures.

:class:`SegServing` (a U-Net) and :class:`GanServing` (an EMA generator) are ``tf.Module``s
holding the Keras model and ``tf.function`` signatures, saved with ``tf.saved_model.save``
(:mod:`cardigan_tf.serving.export`).

Segmentation: ``serving_default`` (``image`` float32 in [0, 1]) and ``serving_uint8`` (``image``
uint8 in [0, 255]); rank 3 (B, H, W) or 4 (B, H, W, 1), any H and W. The image goes through the
run's resize chain (prepared size, then working size; :func:`cardigan_tf.resize.resize_image`),
the U-Net runs at the working size, the probabilities are resized bilinearly back to the
input's H and W, then argmax'd: outputs ``probabilities`` float32 (B, H, W, 4) and ``mask``
uint8 (B, H, W). ``serving_fixed`` (:data:`~cardigan_tf.serving.contract.FIXED_SIGNATURE`, the
one a server may batch) takes ``image`` float32 (B, S, S, 1) at the chain's first size S and
answers at the working size s (``probabilities`` (B, s, s, 4), ``mask`` (B, s, s)); the client
does the first resize and the last one (:func:`cardigan_tf.serving.contract.segment_frames`).
Every output is computed from the working-size probabilities in one place
(``_Module._outputs``), for both kinds of signature: beside ``probabilities`` and ``mask``, per
image ``uncertainty`` float32 (B,) (:func:`cardigan_tf.metrics.uncertainty_graph.
predictive_entropy_graph` of the member probabilities: an ensemble's members and views, or the
one model's softmax), ``qc_flags`` int32 (B,) (:func:`cardigan_tf.metrics.anatomy_graph.
qc_flags_graph` on the working-size label map, square pixels) and, for an ensemble of more than
one member, ``disagreement`` float32 (B,) (:data:`cardigan_tf.serving.contract.IMAGE_OUTPUTS`).

GAN: ``serving_default`` (``mask`` uint8 (B, H, W), labels 0..3) and, for a style generator
(``z`` input), ``serving_seeded`` (``mask`` + ``seed`` int64 (B,)): z ~ N(0, 1) drawn
statelessly, ``tf.random.stateless_normal([z_dim], seed=[seed, 0])`` per row;
``serving_default`` uses seed 0 for every row (the same as ``serving_seeded`` with zeros).
Output ``image`` uint8 (B, H, W) at the mask's own size.

Bad input raises ``InvalidArgumentError`` from in-graph assertions (messages in
:data:`MESSAGES`).

``resize="matrix"`` builds the same graphs with every image resize written as two matrix
products (:func:`matrix_resize`; area and bilinear weights computed in the graph from the
input size): ONNX has no area resize (tf2onnx turns ``ResizeArea`` into a nearest resize), so
the ONNX export uses this variant. It matches :func:`cardigan_tf.resize.resize_image` within
float rounding (tested at 1e-5).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from cardigan_tf import resize
from cardigan_tf.labels import NUM_CLASSES
from cardigan_tf.metrics.anatomy_graph import qc_flags_graph
from cardigan_tf.metrics.uncertainty_graph import member_disagreement_graph, predictive_entropy_graph
from cardigan_tf.serving.contract import ANY_SIZE_SIGNATURES, FIXED_SIGNATURE, MAX_SIDE, RANGE_TOLERANCE

MESSAGES = {
    "rank": "must have rank 3 (B, H, W) or 4 (B, H, W, 1)",
    "channels": "rank 4 input must have a last dimension of 1 (one gray channel)",
    "empty": "empty batch: at least one row is needed",
    "size": f"height and width must be between 1 and {MAX_SIDE}",
    "range": ("float values must be in [0, 1]; for 0-255 pixel values send uint8 to the "
              "'serving_uint8' signature (or divide by 255)"),
    "finite": "float values must be finite (no NaN or inf)",
    "labels": f"labels must be in 0..{NUM_CLASSES - 1}",
    "seed": "seed must have shape (B,): one seed per mask",
}


# ----------------------------------------------------------------------------- input checks
def checked_batch(x, name: str, check_range: bool = False):
    """Validate a serving input (rank 3, or rank 4 with one channel; non-empty; sides 1..MAX_SIDE;
    optional [0, 1] range for floats) and return it as (B, H, W) of the same dtype."""
    rank = tf.rank(x)
    ok_rank = tf.logical_or(tf.equal(rank, 3), tf.equal(rank, 4))
    a_rank = tf.debugging.Assert(ok_rank, [f"{name}: {MESSAGES['rank']}; got rank", rank, "shape", tf.shape(x)])
    with tf.control_dependencies([a_rank]):
        shape = tf.shape(x)
        last = shape[-1]
    a_chan = tf.debugging.Assert(tf.logical_or(tf.equal(rank, 3), tf.equal(last, 1)),
                                 [f"{name}: {MESSAGES['channels']}; got shape", shape])
    with tf.control_dependencies([a_chan]):
        b, h, w = shape[0], shape[1], shape[2]
    checks = [
        tf.debugging.Assert(b > 0, [f"{name}: {MESSAGES['empty']}; got shape", shape]),
        tf.debugging.Assert(tf.reduce_all(tf.stack([h > 0, w > 0, h <= MAX_SIDE, w <= MAX_SIDE])),
                            [f"{name}: {MESSAGES['size']}; got shape", shape]),
    ]
    with tf.control_dependencies(checks):
        x = tf.reshape(x, tf.stack([b, h, w]))
    if check_range:
        finite = tf.reduce_all(tf.math.is_finite(x))
        a_fin = tf.debugging.Assert(finite, [f"{name}: {MESSAGES['finite']}"])
        with tf.control_dependencies([a_fin]):
            lo, hi = tf.reduce_min(x), tf.reduce_max(x)
        a_range = tf.debugging.Assert(
            tf.logical_and(lo >= -RANGE_TOLERANCE, hi <= 1.0 + RANGE_TOLERANCE),
            [f"{name}: {MESSAGES['range']}; got min", lo, "max", hi])
        with tf.control_dependencies([a_range]):
            x = tf.identity(x)
    return x


# ----------------------------------------------------------------------------- resizing
def _sizes(n_in, n_out):
    return tf.cast(n_in, tf.float32), tf.cast(n_out, tf.float32)


def bilinear_weights(n_in, n_out):
    """(n_out, n_in) float32 weights of TF's bilinear resize (half-pixel centres, no antialias)."""
    fin, fout = _sizes(n_in, n_out)
    scale = fin / fout
    src = (tf.range(fout, dtype=tf.float32) + 0.5) * scale - 0.5
    src_f = tf.floor(src)
    lower = tf.maximum(tf.cast(src_f, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(src), tf.int32), tf.cast(n_in, tf.int32) - 1)
    lerp = (src - src_f)[:, None]
    depth = tf.cast(n_in, tf.int32)
    return tf.one_hot(lower, depth) * (1.0 - lerp) + tf.one_hot(upper, depth) * lerp


def area_weights(n_in, n_out):
    """(n_out, n_in) float32 weights of TF's area resize (shrinking): overlap of each input
    pixel [i, i+1) with the output pixel's span [o*s, (o+1)*s), divided by s = n_in / n_out."""
    fin, fout = _sizes(n_in, n_out)
    scale = fin / fout
    o = tf.range(fout, dtype=tf.float32)[:, None]
    i = tf.range(fin, dtype=tf.float32)[None, :]
    x0, x1 = o * scale, (o + 1.0) * scale
    overlap = tf.maximum(tf.minimum(i + 1.0, x1) - tf.maximum(i, x0), 0.0)
    return overlap / scale


def _axis_weights(n_in, n_out, shrink_both):
    return tf.where(shrink_both, area_weights(n_in, n_out), bilinear_weights(n_in, n_out))


def matrix_resize(images, size):
    """:func:`cardigan_tf.resize.resize_image` as matrix products: (B, H, W, C) float -> (B, h, w, C)
    float32, area when shrinking both axes, else bilinear, clipped to [0, 1]. ``size``: int,
    (h, w) ints or scalar tensors."""
    images = tf.cast(images, tf.float32)
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    shape = tf.shape(images)
    in_h, in_w = shape[1], shape[2]
    shrink = tf.logical_and(in_h >= h, in_w >= w)
    wy = _axis_weights(in_h, h, shrink)
    wx = _axis_weights(in_w, w, shrink)
    return tf.clip_by_value(_apply(images, wy, wx), 0.0, 1.0)


def matrix_resize_bilinear(images, size):
    """Bilinear resize (half-pixel centres) of (B, H, W, C) as matrix products (probabilities)."""
    h, w = size
    shape = tf.shape(images)
    return _apply(tf.cast(images, tf.float32), bilinear_weights(shape[1], h), bilinear_weights(shape[2], w))


def _apply(images, wy, wx):
    """(B, H, W, C) -> (B, h, w, C) with plain 2-D matrix products (no batch broadcasting:
    robust in TF's CPU kernels and in ONNX)."""
    shape = tf.shape(images)
    b, h_in, w_in, c = shape[0], shape[1], shape[2], shape[3]
    h, w = tf.shape(wy)[0], tf.shape(wx)[0]
    x = tf.reshape(tf.transpose(images, [1, 0, 2, 3]), tf.stack([h_in, -1]))  # (H, B*W*C)
    x = tf.reshape(tf.matmul(wy, x), tf.stack([h, b, w_in, c]))
    x = tf.reshape(tf.transpose(x, [2, 1, 0, 3]), tf.stack([w_in, -1]))  # (W, B*h*C)
    x = tf.reshape(tf.matmul(wx, x), tf.stack([w, b, h, c]))
    return tf.transpose(x, [1, 2, 0, 3])


def resize_image_to(images, size):
    """:func:`cardigan_tf.resize.resize_image` with a target size given as scalar tensors (the
    same rule: identity at the same size, area when shrinking both axes, else bilinear;
    clipped). ``resize.resize_image`` itself takes Python ints."""
    h, w = size
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    in_h, in_w = shape[-3], shape[-2]
    target = tf.stack([h, w])
    shrink = tf.logical_and(in_h >= h, in_w >= w)
    out = tf.cond(shrink, lambda: tf.image.resize(images, target, method="area"),
                  lambda: tf.image.resize(images, target, method="bilinear"))
    return tf.clip_by_value(out, 0.0, 1.0)


def resize_probabilities_to(probs, size):
    """:func:`cardigan_tf.resize.resize_probabilities` (bilinear) to a size of scalar tensors."""
    return tf.image.resize(tf.cast(probs, tf.float32), tf.stack(list(size)), method="bilinear")


# ----------------------------------------------------------------------------- modules
def _first(y):
    return y[0] if isinstance(y, (list, tuple)) else y


def member_count(model) -> int:
    """M of a segmentation model: the members x views of an ensemble
    (:func:`cardigan_tf.models.ensemble.build_ensemble`, second output (B, M, s, s, K)), else 1."""
    outputs = model.outputs
    if len(outputs) > 1 and len(outputs[1].shape) == 5:
        return int(outputs[1].shape[1])
    return 1


def _mean_and_members(y):
    """(mean (B, s, s, K), members (M, B, s, s, K)) float32 of a model's output: an ensemble's
    two outputs, or one model's softmax as its only member."""
    if isinstance(y, (list, tuple)) and len(y) > 1 and len(y[1].shape) == 5:
        return tf.cast(y[0], tf.float32), tf.transpose(tf.cast(y[1], tf.float32), [1, 0, 2, 3, 4])
    mean = tf.cast(_first(y), tf.float32)
    return mean, mean[None]


class SegServing:
    """Factory of the segmentation serving module (see module doc)."""

    @staticmethod
    def build(model, sizes: Sequence[int], resize_impl: str = "tf", checks: bool = True, rank: int | None = None):
        """A ``tf.Module`` with ``serving_default``, ``serving_uint8`` and ``serving_fixed``
        (``.signatures(names)`` -> dict).

        ``sizes``: the resize chain (``inference.Preprocessing.sizes``); ``resize_impl``: "tf"
        (:mod:`cardigan_tf.resize`) or "matrix" (ONNX); ``rank``: None (any) or 3 for the
        input spec of the any-size signatures (ONNX needs a known rank)."""
        sizes = tuple(int(s) for s in sizes)
        if resize_impl not in ("tf", "matrix"):
            raise ValueError(f"resize_impl: expected 'tf' or 'matrix', got {resize_impl!r}")
        shape = None if rank is None else [None] * rank
        first, working = sizes[0], sizes[-1]
        ensemble = member_count(model) > 1

        class _Module(tf.Module):
            def __init__(self):
                super().__init__(name="seg_serving")
                self.model = model
                self.sizes = sizes

            def _probabilities(self, x):
                """x: (B, H, W) float32 in [0, 1] -> (mean (B, s, s, K), members (M, B, s, s, K))
                at the working size."""
                y = tf.clip_by_value(x, 0.0, 1.0)[..., None]
                for size in self.sizes:
                    y = matrix_resize(y, size) if resize_impl == "matrix" else resize.resize_image(y, size)
                return _mean_and_members(self.model(y, training=False))

            def _outputs(self, probs, members, size=None):
                """Every output, from the working-size probabilities and their members: the
                per-image scores and QC flags at the working size; then the probabilities resized
                to ``size`` (h, w) when given (bilinear), and the mask as their argmax."""
                scores = {"uncertainty": predictive_entropy_graph(members),
                          "qc_flags": qc_flags_graph(tf.argmax(probs, axis=-1, output_type=tf.int32))}
                if ensemble:
                    scores["disagreement"] = member_disagreement_graph(members)
                if size is not None:
                    probs = matrix_resize_bilinear(probs, size) if resize_impl == "matrix" else \
                        resize_probabilities_to(probs, size)
                return {"probabilities": probs, "mask": tf.cast(tf.argmax(probs, axis=-1), tf.uint8), **scores}

            def _segment(self, x):  # any size: outputs at the input's H x W
                shape_in = tf.shape(x)
                return self._outputs(*self._probabilities(x), (shape_in[1], shape_in[2]))

            @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
            def serving_default(self, image):
                x = checked_batch(image, "image", check_range=True) if checks else image
                return self._segment(x)

            @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8, name="image")])
            def serving_uint8(self, image):
                x = checked_batch(image, "image") if checks else image
                return self._segment(tf.cast(x, tf.float32) / 255.0)

            @tf.function(input_signature=[tf.TensorSpec([None, first, first, 1], tf.float32, name="image")])
            def serving_fixed(self, image):
                x = checked_batch(image, "image", check_range=True) if checks else image[..., 0]
                probs, members = self._probabilities(x)
                return self._outputs(tf.ensure_shape(probs, [None, working, working, None]), members)

            def signatures(self, names: Sequence[str] = (*ANY_SIZE_SIGNATURES, FIXED_SIGNATURE)):
                functions = {"serving_default": self.serving_default, "serving_uint8": self.serving_uint8,
                             FIXED_SIGNATURE: self.serving_fixed}
                unknown = sorted(set(names) - set(functions))
                if unknown:
                    raise ValueError(f"signatures: unknown {unknown} (expected some of {sorted(functions)})")
                return {n: functions[n] for n in names}

        return _Module()


def default_z(z_dim: int) -> np.ndarray:
    """The z of seed 0 (``serving_default`` of a style generator): stateless N(0, 1), (z_dim,)."""
    return tf.random.stateless_normal([int(z_dim)], seed=tf.constant([0, 0], tf.int64)).numpy()


def seeded_z(seeds, z_dim: int):
    """(B, z_dim) float32: row i ~ N(0, 1) from ``stateless_normal(seed=[seeds[i], 0])``."""
    seeds = tf.cast(seeds, tf.int64)
    return tf.map_fn(lambda s: tf.random.stateless_normal([int(z_dim)], seed=tf.stack([s, tf.constant(0, tf.int64)])),
                     seeds, fn_output_signature=tf.float32)


class GanServing:
    """Factory of the GAN serving module (see module doc)."""

    @staticmethod
    def build(generator, resize_impl: str = "tf", checks: bool = True):
        size = int(generator.inputs[0].shape[1])
        num_classes = int(generator.inputs[0].shape[-1])
        z_dim = int(generator.inputs[1].shape[-1]) if len(generator.inputs) > 1 else None
        z0 = default_z(z_dim) if z_dim else None

        class _Module(tf.Module):
            def __init__(self):
                super().__init__(name="gan_serving")
                self.generator = generator

            def _labels(self, mask):
                m = checked_batch(mask, "mask") if checks else mask
                if checks:
                    ok = tf.reduce_all(tf.cast(m, tf.int32) < num_classes)
                    a = tf.debugging.Assert(ok, [f"mask: {MESSAGES['labels']}; got max", tf.reduce_max(m)])
                    with tf.control_dependencies([a]):
                        m = tf.identity(m)
                return m

            def _synthesize(self, m, z):
                shape_in = tf.shape(m)
                h, w = shape_in[1], shape_in[2]
                small = resize.resize_mask(tf.cast(m, tf.int32), size)
                onehot = tf.one_hot(small, num_classes, dtype=tf.float32)
                inputs = onehot if z is None else [onehot, z]
                out = tf.cast(self.generator(inputs, training=False), tf.float32)
                img = (tf.clip_by_value(out, -1.0, 1.0) + 1.0) / 2.0
                img = matrix_resize(img, (h, w)) if resize_impl == "matrix" else resize_image_to(img, (h, w))
                return {"image": tf.cast(tf.round(img[..., 0] * 255.0), tf.uint8)}

            @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="mask")])
            def serving_default(self, mask):
                m = self._labels(mask)
                z = None
                if z_dim:
                    z = tf.tile(tf.constant(z0, tf.float32)[None], tf.stack([tf.shape(m)[0], 1]))
                return self._synthesize(m, z)

            if z_dim:
                @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="mask"),
                                              tf.TensorSpec(None, tf.int64, name="seed")])
                def serving_seeded(self, mask, seed):
                    m = self._labels(mask)
                    ok = tf.logical_and(tf.equal(tf.rank(seed), 1),
                                        tf.reduce_all(tf.equal(tf.shape(seed)[:1], tf.shape(m)[:1])))
                    a = tf.debugging.Assert(ok, [f"seed: {MESSAGES['seed']}; got shape", tf.shape(seed),
                                                 "mask shape", tf.shape(m)])
                    with tf.control_dependencies([a]):
                        z = seeded_z(tf.reshape(seed, [-1]), z_dim)
                    return self._synthesize(m, z)

            def signatures(self):
                out = {"serving_default": self.serving_default}
                if z_dim:
                    out["serving_seeded"] = self.serving_seeded
                return out

        module = _Module()
        module.size, module.z_dim = size, z_dim
        return module
