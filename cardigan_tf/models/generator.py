"""SPADE generator: one-hot mask (and optionally a style code z) -> grayscale image in [-1, 1].

Reference: Park et al., CVPR 2019 (SPADE), generator of Fig. 4 / NVIDIA's SPADEGenerator
(facts only; our own code).  Block order for ``num_upsampling_layers="normal"``::

    start grid  size/32          fc: mask-only: nearest-resized mask -> conv3x3(16nf)
                                     style:     z -> Dense(16nf*sh*sw) -> reshape
    head_0      SPADEResBlock(16nf)      sh
    up                                   2sh
    G_middle_0  SPADEResBlock(16nf)
    (up, only for "more" / "most")
    G_middle_1  SPADEResBlock(16nf)
    up, up_0 (8nf), up, up_1 (4nf), up, up_2 (2nf), up, up_3 (1nf)      -> size
    (up, up_4 (nf/2), only for "most")
    LeakyReLU(0.2) -> conv3x3(1) -> tanh  (float32 output)

Upsampling is nearest ``UpSampling2D``.  "normal" needs size % 32 == 0, "more" 64,
"most" 128.  Inputs: mask-only model: ``mask_onehot`` (B, size, size, num_classes) float;
style model: ``[mask_onehot, z]`` with z (B, z_dim).  Output (B, size, size, 1) in [-1, 1].

Example::

    g = build_generator(GeneratorConfig(size=64, ngf=16))
    fake = g(onehot, training=True)          # (B, 64, 64, 1)
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers

from cardigan_tf.models.spade import NearestResize, SPADEResBlock, xavier

UPSAMPLING = {"normal": 5, "more": 6, "most": 7}
STYLES = ("mask", "z", "encoder")


@dataclasses.dataclass
class GeneratorConfig:
    """Generator hyper-parameters.

    style: "mask" (deterministic, mask only: cardiGAN's setting), "z" (z ~ N(0, 1) given as
    the second input) or "encoder" (z from the style encoder, given as the second input; the
    network is the same as for "z", only training differs).
    """

    size: int = 256
    ngf: int = 64
    num_classes: int = 4
    num_upsampling_layers: str = "normal"
    style: str = "mask"
    z_dim: int = 256
    norm: str = "batch"
    spectral: bool = True
    hidden: int = 128
    init_gain: float = 0.02
    #: SPADE gamma and beta as one convolution of 2C outputs (same mathematics and weights;
    #: see SPADE's ``fused`` and docs/bench_gan.md).
    fused_spade: bool = False

    def validate(self) -> None:
        if self.num_upsampling_layers not in UPSAMPLING:
            raise ValueError(f"num_upsampling_layers: expected one of {tuple(UPSAMPLING)}, "
                             f"got {self.num_upsampling_layers!r}")
        factor = 2 ** UPSAMPLING[self.num_upsampling_layers]
        if not isinstance(self.size, int) or self.size <= 0 or self.size % factor:
            raise ValueError(f"size: must be a positive multiple of {factor} for "
                             f"num_upsampling_layers={self.num_upsampling_layers!r}, got {self.size!r}")
        if self.style not in STYLES:
            raise ValueError(f"style: expected one of {STYLES}, got {self.style!r}")
        if self.norm not in ("batch", "instance"):
            raise ValueError(f"norm: expected 'batch' or 'instance', got {self.norm!r}")
        for name in ("ngf", "num_classes", "z_dim", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.num_upsampling_layers == "most" and self.ngf < 2:
            raise ValueError(f"ngf: must be >= 2 for num_upsampling_layers='most', got {self.ngf}")

    @property
    def start_size(self) -> int:
        """Side of the start grid (size / 2**num_upsampling)."""
        return self.size // 2 ** UPSAMPLING[self.num_upsampling_layers]


def build_generator(cfg: GeneratorConfig | None = None, name: str = "generator") -> keras.Model:
    """Functional SPADE generator (see the module docstring for inputs and outputs)."""
    cfg = cfg or GeneratorConfig()
    cfg.validate()
    nf, s = cfg.ngf, cfg.start_size
    init = xavier(cfg.init_gain)
    mask = keras.Input((cfg.size, cfg.size, cfg.num_classes), name="mask_onehot")
    inputs = [mask]
    if cfg.style == "mask":
        x = NearestResize(s, s, name="mask_to_start")(mask)
        x = layers.Conv2D(16 * nf, 3, padding="same", kernel_initializer=init, name="fc")(x)
    else:
        z = keras.Input((cfg.z_dim,), name="z")
        inputs.append(z)
        x = layers.Dense(16 * nf * s * s, kernel_initializer=init, name="fc")(z)
        x = layers.Reshape((s, s, 16 * nf), name="fc_reshape")(x)

    def block(fout, block_name):
        return SPADEResBlock(fout, norm=cfg.norm, spectral=cfg.spectral, hidden=cfg.hidden,
                             init_gain=cfg.init_gain, fused=cfg.fused_spade, name=block_name)

    n_up = 0

    def up(t):
        nonlocal n_up
        n_up += 1
        return layers.UpSampling2D(2, interpolation="nearest", name=f"up_{n_up}")(t)

    x = block(16 * nf, "head_0")(x, mask)
    x = up(x)
    x = block(16 * nf, "G_middle_0")(x, mask)
    if cfg.num_upsampling_layers in ("more", "most"):
        x = up(x)
    x = block(16 * nf, "G_middle_1")(x, mask)
    widths = [8 * nf, 4 * nf, 2 * nf, nf]
    if cfg.num_upsampling_layers == "most":
        widths.append(nf // 2)
    for i, fout in enumerate(widths):
        x = up(x)
        x = block(fout, f"up_{i}_block")(x, mask)
    x = layers.LeakyReLU(0.2, name="final_lrelu")(x)
    x = layers.Conv2D(1, 3, padding="same", kernel_initializer=init, name="conv_img")(x)
    out = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs if len(inputs) > 1 else mask, out, name=name)
