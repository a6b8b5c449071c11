"""SPADE normalisation and the SPADE residual block (keras.ops only: runs on TF and JAX).

Reference: Park, Liu, Wang, Zhu, "Semantic Image Synthesis with Spatially-Adaptive
Normalization", CVPR 2019 (arXiv:1903.07291). Facts follow the paper and the defaults of
NVIDIA's public SPADE code (github.com/NVlabs/SPADE); the code is our own.

Call convention for both layers: ``layer(x, segmap, training=None)`` with two positional
tensors (works eagerly and inside Functional models)::

    spade = SPADE(norm="batch")
    y = spade(x, onehot_mask, training=True)      # x (B,h,w,C), mask (B,H,W,K) -> (B,h,w,C)
    block = SPADEResBlock(256)
    y = block(x, onehot_mask)                     # (B,h,w,Cin) -> (B,h,w,256)
"""

from __future__ import annotations

import keras
from keras import layers, ops

NORMS = ("batch", "instance")


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
    return norm


def xavier(gain: float = 0.02):
    """Xavier-normal initializer with ``gain`` (NVIDIA SPADE's ``init_type=xavier``,
    ``init_variance=0.02``): std = gain * sqrt(2 / (fan_in + fan_out)).  gain <= 0 gives
    Keras' default glorot_uniform."""
    if gain is None or gain <= 0:
        return "glorot_uniform"
    return keras.initializers.VarianceScaling(scale=float(gain) ** 2, mode="fan_avg",
                                              distribution="untruncated_normal")


def _as_size(shape, name: str) -> tuple[int, int]:
    """Static (height, width) of a (B, H, W, C) shape; a clear error if unknown."""
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ValueError(f"{name}: expected a 4-D (B, H, W, C) shape with static H and W, got {tuple(shape)}")
    return int(shape[1]), int(shape[2])


@keras.saving.register_keras_serializable(package="cardigan_tf")
class NearestResize(layers.Layer):
    """Resize a (B, H, W, C) tensor to a fixed (height, width) with nearest neighbour.

    Used for one-hot masks, so labels are never blended. Uses
    ``keras.ops.image.resize(..., interpolation="nearest")`` (half-pixel centres on both
    backends; NVIDIA's PyTorch ``F.interpolate`` takes the top-left sample of each cell, a
    sub-cell offset that does not change what the network can learn).

    Args:
        height, width: output spatial size (ints).

    Input (B, H, W, C) -> output (B, height, width, C), same dtype.
    Example: ``NearestResize(8, 8)(mask)``.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)

    def call(self, x):
        if tuple(x.shape[1:3]) == (self.height, self.width):
            return x
        return ops.image.resize(x, (self.height, self.width), interpolation="nearest")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="cardigan_tf")
class SPADE(layers.Layer):
    """Spatially-adaptive (de)normalisation (Park et al. 2019, eq. 1).

    ``out = norm(x) * (1 + gamma(m)) + beta(m)`` where ``norm`` is parameter-free and
    ``gamma``, ``beta`` are 3x3 convs on ``relu(conv3x3(m, hidden))`` of the mask ``m``
    resized (nearest) to x's spatial size.

    Args:
        norm: "batch" (BatchNormalization without centre/scale, synchronised across replicas
            under a tf.distribute strategy on the TensorFlow backend; moving statistics at
            inference) or "instance" (GroupNormalization with one group per channel).
        hidden: channels of the shared mask conv (128 in the paper).
        kernel_size: kernel of the three mask convs (3).
        epsilon: normalisation epsilon (1e-5 as PyTorch).
        momentum: batch-norm moving-average momentum (0.9 = PyTorch's 0.1).
        sync: synchronise batch statistics across replicas (ignored off TensorFlow).
        init_gain: xavier-normal gain of the conv kernels (0.02 as NVIDIA: gamma and beta
            start near 0, so SPADE starts close to the plain normalisation).
        fused: compute gamma and beta with ONE 3x3 convolution of 2C outputs whose kernel
            and bias are the concatenation of ``mlp_gamma``'s and ``mlp_beta``'s (same
            mathematics, same weights and checkpoints). False (default): two convs; which is
            faster depends on the machine (docs/bench_gan.md).

    Call: ``call(x, segmap, training=None)``; x (B, h, w, C), segmap (B, H, W, K) one-hot
    float -> (B, h, w, C).  Sub-layers: ``param_free_norm``, ``mlp_shared``, ``mlp_gamma``,
    ``mlp_beta``.
    """

    def __init__(self, norm="batch", hidden=128, kernel_size=3, epsilon=1e-5, momentum=0.9,
                 sync=True, init_gain=0.02, fused=False, **kwargs):
        super().__init__(**kwargs)
        self.norm = _check_norm(norm)
        self.fused = bool(fused)
        self.hidden = int(hidden)
        self.kernel_size = int(kernel_size)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.sync = bool(sync)
        self.init_gain = float(init_gain)

    def build(self, x_shape, segmap_shape):
        channels = int(x_shape[-1])
        if self.norm == "batch":
            self.param_free_norm = layers.BatchNormalization(
                center=False, scale=False, epsilon=self.epsilon, momentum=self.momentum,
                synchronized=self.sync and keras.backend.backend() == "tensorflow",
                dtype=self.dtype_policy, name="param_free_norm")
        else:
            self.param_free_norm = layers.GroupNormalization(
                groups=-1, center=False, scale=False, epsilon=self.epsilon,
                dtype=self.dtype_policy, name="param_free_norm")
        self.param_free_norm.build(tuple(x_shape))
        k, seg_channels = self.kernel_size, int(segmap_shape[-1])
        self.mlp_shared = layers.Conv2D(self.hidden, k, padding="same", activation="relu",
                                        kernel_initializer=xavier(self.init_gain),
                                        dtype=self.dtype_policy, name="mlp_shared")
        self.mlp_shared.build((None, None, None, seg_channels))
        self.mlp_gamma = layers.Conv2D(channels, k, padding="same",
                                       kernel_initializer=xavier(self.init_gain),
                                       dtype=self.dtype_policy, name="mlp_gamma")
        self.mlp_gamma.build((None, None, None, self.hidden))
        self.mlp_beta = layers.Conv2D(channels, k, padding="same",
                                      kernel_initializer=xavier(self.init_gain),
                                      dtype=self.dtype_policy, name="mlp_beta")
        self.mlp_beta.build((None, None, None, self.hidden))
        self.built = True

    def call(self, x, segmap, training=None):
        normalized = self.param_free_norm(x, training=training)
        size = _as_size(x.shape, "SPADE input x")
        if tuple(segmap.shape[1:3]) != size:
            segmap = ops.image.resize(segmap, size, interpolation="nearest")
        actv = self.mlp_shared(segmap)
        gamma, beta = self.gamma_beta(actv)
        normalized = ops.cast(normalized, gamma.dtype)
        return normalized * (1.0 + gamma) + beta

    def gamma_beta(self, actv):
        """(gamma, beta), each (B, h, w, C), from the shared activation (B, h, w, hidden)."""
        if not self.fused:
            return self.mlp_gamma(actv), self.mlp_beta(actv)
        dtype = actv.dtype
        kernel = ops.concatenate([ops.cast(self.mlp_gamma.kernel, dtype),
                                  ops.cast(self.mlp_beta.kernel, dtype)], axis=-1)
        bias = ops.concatenate([ops.cast(self.mlp_gamma.bias, dtype),
                                ops.cast(self.mlp_beta.bias, dtype)], axis=-1)
        both = ops.conv(actv, kernel, strides=1, padding="same") + bias
        gamma, beta = ops.split(both, 2, axis=-1)  # gradient: one concat (slices cost more)
        return gamma, beta

    def compute_output_shape(self, x_shape, segmap_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "norm": self.norm, "hidden": self.hidden,
                "kernel_size": self.kernel_size, "epsilon": self.epsilon,
                "momentum": self.momentum, "sync": self.sync, "init_gain": self.init_gain,
                "fused": self.fused}


def sn_conv(filters, kernel_size, spectral, name, dtype=None, use_bias=True, strides=1,
            init_gain=0.02):
    """Conv2D ("same" padding), wrapped in SpectralNormalization named ``name`` when
    ``spectral`` (the inner conv is then ``name + "_conv"``).

    Note: ``keras.layers.SpectralNormalization`` does not differentiate through sigma. On each
    training call it estimates sigma by one power iteration and *assigns* W / sigma to the inner
    kernel variable; the convolution then uses that variable, so the gradient is taken with
    respect to the normalised kernel as if sigma were a constant. PyTorch's
    ``torch.nn.utils.spectral_norm`` (NVIDIA's SPADE) keeps the raw W as the parameter and
    back-propagates through W / sigma(W) (u and v held fixed), which adds the term that comes
    from sigma's dependence on W. Forward passes agree; gradients, and so training, differ.
    """
    conv = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                         use_bias=use_bias, kernel_initializer=xavier(init_gain), dtype=dtype,
                         name=name if not spectral else f"{name}_conv")
    if spectral:
        return layers.SpectralNormalization(conv, dtype=dtype, name=name)
    return conv


@keras.saving.register_keras_serializable(package="cardigan_tf")
class SPADEResBlock(layers.Layer):
    """SPADE residual block (Park et al. 2019, Fig. 4 right; NVIDIA's SPADEResnetBlock).

    Main path: SPADE -> LeakyReLU(0.2) -> conv3x3(fmiddle) -> SPADE -> LeakyReLU(0.2) ->
    conv3x3(fout), with ``fmiddle = min(fin, fout)``.  Shortcut: identity when fin == fout,
    otherwise SPADE -> conv1x1(fout, no bias, no activation).  Spectral normalisation
    (``keras.layers.SpectralNormalization``, one power iteration, updated on training calls)
    wraps all three convs when ``spectral``.

    Args:
        fout: output channels.
        norm: "batch" or "instance" (parameter-free part of every SPADE).
        spectral: spectral normalisation on the convs.
        hidden: SPADE shared-conv channels (128).
        init_gain: xavier-normal gain of all conv kernels (0.02).
        fused: SPADE's fused gamma/beta convolution (same mathematics; see :class:`SPADE`).

    Call: ``call(x, segmap, training=None)``; x (B, h, w, fin), segmap (B, H, W, K) ->
    (B, h, w, fout).  Sub-layers: ``norm_0, conv_0, norm_1, conv_1`` (+ ``norm_s, conv_s``).
    """

    def __init__(self, fout, norm="batch", spectral=True, hidden=128, init_gain=0.02, fused=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.fout = int(fout)
        self.fused = bool(fused)
        self.norm = _check_norm(norm)
        self.spectral = bool(spectral)
        self.hidden = int(hidden)
        self.init_gain = float(init_gain)

    def build(self, x_shape, segmap_shape):
        fin = int(x_shape[-1])
        fmiddle = min(fin, self.fout)
        self.learned_shortcut = fin != self.fout
        x_shape, segmap_shape = tuple(x_shape), tuple(segmap_shape)
        mid_shape = x_shape[:-1] + (fmiddle,)
        dt, g = self.dtype_policy, self.init_gain

        def spade(name):
            return SPADE(self.norm, self.hidden, init_gain=self.init_gain, fused=self.fused,
                         dtype=dt, name=name)

        self.norm_0 = spade("norm_0")
        self.norm_0.build(x_shape, segmap_shape)
        self.conv_0 = sn_conv(fmiddle, 3, self.spectral, "conv_0", dt, init_gain=g)
        self.conv_0.build(x_shape)
        self.norm_1 = spade("norm_1")
        self.norm_1.build(mid_shape, segmap_shape)
        self.conv_1 = sn_conv(self.fout, 3, self.spectral, "conv_1", dt, init_gain=g)
        self.conv_1.build(mid_shape)
        if self.learned_shortcut:
            self.norm_s = spade("norm_s")
            self.norm_s.build(x_shape, segmap_shape)
            self.conv_s = sn_conv(self.fout, 1, self.spectral, "conv_s", dt, use_bias=False,
                                  init_gain=g)
            self.conv_s.build(x_shape)
        self.built = True

    def _apply_conv(self, conv, x, training):
        if self.spectral:
            return conv(x, training=training)
        return conv(x)

    def call(self, x, segmap, training=None):
        if self.learned_shortcut:
            x_s = self._apply_conv(self.conv_s, self.norm_s(x, segmap, training=training), training)
        else:
            x_s = x
        dx = ops.leaky_relu(self.norm_0(x, segmap, training=training), 0.2)
        dx = self._apply_conv(self.conv_0, dx, training)
        dx = ops.leaky_relu(self.norm_1(dx, segmap, training=training), 0.2)
        dx = self._apply_conv(self.conv_1, dx, training)
        return ops.cast(x_s, dx.dtype) + dx

    def compute_output_shape(self, x_shape, segmap_shape):
        return tuple(x_shape)[:-1] + (self.fout,)

    def get_config(self):
        return {**super().get_config(), "fout": self.fout, "norm": self.norm,
                "spectral": self.spectral, "hidden": self.hidden, "init_gain": self.init_gain,
                "fused": self.fused}
