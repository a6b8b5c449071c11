"""Multi-scale PatchGAN discriminator with spectral + instance normalisation.

Reference: Wang et al., "High-Resolution Image Synthesis ... with Conditional GANs"
(pix2pixHD, CVPR 2018) multi-scale D, as used by SPADE (Park et al. 2019); facts from the
defaults of NVIDIA's public SPADE code (github.com/NVlabs/SPADE), our own code.

Input: ``concat(one-hot mask, image)`` (B, H, W, num_classes + 1), image in [-1, 1].
Scale i sees the input average-pooled i times (3x3, stride 2, pad 1, padding excluded from
the average, as PyTorch's ``count_include_pad=False``: :class:`AvgPoolExcludePad`).

Each scale is a PatchGAN (``n_layers`` = 4 by default)::

    conv4x4 s2 (ndf)                     + LeakyReLU(0.2)      (no norm)
    conv4x4 s2 (2ndf)  SN + IN           + LeakyReLU(0.2)
    conv4x4 s2 (4ndf)  SN + IN           + LeakyReLU(0.2)
    conv4x4 s1 (8ndf)  SN + IN           + LeakyReLU(0.2)      (last of n_layers: stride 1)
    conv4x4 s1 -> 1 channel logits       (no norm)

i.e. strides (2, 2, 2, 1) then the stride-1 output conv, channels min(ndf * 2**k, 512).
Convs use ``padding="same"`` (NVIDIA pads 2 with a 4x4 kernel, giving one extra row and
column per layer: ours keeps the shapes clean; receptive field is the same).
Spectral normalisation is on the normalised middle convs, as NVIDIA's "spectralinstance"
(first and output convs are plain); instance norm = GroupNormalization(groups=-1) without
affine parameters.

Output: a list over scales of lists of feature maps (the ``n_layers`` activations, then
the logits; only ``[logits]`` when ``get_intermediate_features=False``).  For input side H
at scale i (side h = ceil(H / 2**i)), with n_layers=4:
features (B, h/2, h/2, ndf), (B, h/4, h/4, 2ndf), (B, h/8, h/8, 4ndf), (B, h/8, h/8, 8ndf),
logits (B, h/8, h/8, 1) (divisions rounded up).  E.g. H=64, num_D=2: logits (B,8,8,1) and
(B,4,4,1).  All outputs are float32.

Example::

    d = build_discriminator(DiscriminatorConfig(ndf=16))
    outs = d(ops.concatenate([onehot, image], -1), training=True)
    logits = [scale[-1] for scale in outs]
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from cardigan_tf.models.spade import sn_conv, xavier


@keras.saving.register_keras_serializable(package="cardigan_tf")
class AvgPoolExcludePad(layers.Layer):
    """Average pooling with symmetric zero padding that is excluded from the average.

    Same as PyTorch ``avg_pool2d(x, pool_size, strides, padding=pool_size // 2,
    count_include_pad=False)``: output side ``floor((H + 2p - k) / s) + 1``.

    Args:
        pool_size: window side (3).
        strides: stride (2).

    Input (B, H, W, C) -> (B, H', W', C).  Example: ``AvgPoolExcludePad()(x)``.
    """

    def __init__(self, pool_size=3, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)

    def call(self, x):
        p = self.pool_size // 2
        pads = [[0, 0], [p, p], [p, p], [0, 0]]
        summed = ops.average_pool(ops.pad(x, pads), self.pool_size, self.strides, "valid")
        ones = ops.ones_like(x[..., :1])
        count = ops.average_pool(ops.pad(ones, pads), self.pool_size, self.strides, "valid")
        return summed / count

    def compute_output_shape(self, input_shape):
        p = self.pool_size // 2

        def side(n):
            return None if n is None else (n + 2 * p - self.pool_size) // self.strides + 1

        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides}


@dataclasses.dataclass
class DiscriminatorConfig:
    """Discriminator hyper-parameters.

    size: image side the input is fixed to; None (default) accepts any H, W.
    init_gain: xavier-normal gain of every kernel (NVIDIA: 0.02).
    """

    ndf: int = 64
    num_D: int = 2
    n_layers: int = 4
    num_classes: int = 4
    spectral: bool = True
    norm: str = "instance"
    get_intermediate_features: bool = True
    size: int | None = None
    init_gain: float = 0.02

    def validate(self) -> None:
        for name in ("ndf", "num_D", "n_layers", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.norm not in ("instance", "none"):
            raise ValueError(f"norm: expected 'instance' or 'none', got {self.norm!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size
                                      // 2 ** (self.num_D - 1) < 2 ** (self.n_layers - 1)):
            raise ValueError(f"size: {self.size} is too small for num_D={self.num_D} and "
                             f"n_layers={self.n_layers}")

    @property
    def in_channels(self) -> int:
        return self.num_classes + 1


def _patchgan(x, cfg: DiscriminatorConfig, prefix: str) -> list:
    feats = []
    nf = cfg.ndf
    init = xavier(cfg.init_gain)
    x = layers.Conv2D(nf, 4, strides=2, padding="same", kernel_initializer=init,
                      name=f"{prefix}_conv0")(x)
    x = layers.LeakyReLU(0.2, name=f"{prefix}_lrelu0")(x)
    feats.append(x)
    for n in range(1, cfg.n_layers):
        nf = min(nf * 2, 512)
        stride = 1 if n == cfg.n_layers - 1 else 2
        use_norm = cfg.norm == "instance"
        x = sn_conv(nf, 4, cfg.spectral, f"{prefix}_conv{n}", use_bias=not use_norm,
                    strides=stride, init_gain=cfg.init_gain)(x)
        if use_norm:
            x = layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5,
                                          name=f"{prefix}_norm{n}")(x)
        x = layers.LeakyReLU(0.2, name=f"{prefix}_lrelu{n}")(x)
        feats.append(x)
    x = layers.Conv2D(1, 4, strides=1, padding="same", kernel_initializer=init,
                      name=f"{prefix}_logits")(x)
    feats.append(x)
    feats = [layers.Activation("linear", dtype="float32", name=f"{prefix}_out{i}")(f)
             for i, f in enumerate(feats)]
    return feats if cfg.get_intermediate_features else [feats[-1]]


def build_discriminator(cfg: DiscriminatorConfig | None = None,
                        name: str = "discriminator") -> keras.Model:
    """Functional multi-scale discriminator; see the module docstring for shapes."""
    cfg = cfg or DiscriminatorConfig()
    cfg.validate()
    inp = keras.Input((cfg.size, cfg.size, cfg.in_channels), name="mask_and_image")
    x = inp
    outputs = []
    for i in range(cfg.num_D):
        if i > 0:
            x = AvgPoolExcludePad(3, 2, name=f"downsample_{i}")(x)
        outputs.append(_patchgan(x, cfg, f"D{i}"))
    return keras.Model(inp, outputs, name=name)
