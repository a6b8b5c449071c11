"""U-Net segmenter for echocardiograms (Ronneberger et al., MICCAI 2015; CAMUS' "U-Net 1/2").

Image (B, H, W, 1) in [0, 1] -> softmax (B, H, W, 4) float32 over background, LV cavity,
myocardium and left atrium. Each resolution level holds two 3x3 convolutions (conv -> norm ->
ReLU, twice); the encoder halves the resolution ``depth`` times with 2x2 max pooling; the
decoder doubles it by a 2x2 transposed convolution or by nearest ``UpSampling2D`` followed by a
3x3 convolution (the XLA-friendly choice), concatenates the skip connection and applies two
more 3x3 convolutions.

Deep supervision: with ``deep_supervision=True`` the model returned by :func:`build_unet` has
several outputs, ``[main, aux_1, aux_2, ...]``: the main full-resolution softmax first, then
softmax heads on the 2, 3, ... coarsest-but-one decoder levels (1/2, 1/4, ... of the input),
each upsampled by nearest neighbour to full size so that the same loss and the same full-size
mask apply to all of them. Training uses all outputs (loss weights halve per level); for
inference and export call :func:`inference_model`, which returns a model sharing the same layers
and weights with only the main output. Without deep supervision :func:`inference_model` returns
the model itself.

Presets (run configs with their training values, :mod:`cardigan_tf.configs.seg`):

- ``tiny``: 64x64, depth 4, base 16 filters, batch norm, nearest upsampling (2.2 M params):
  tests, CI and the phantom study.
- ``camus``: 256x256, depth 5, base 32 filters (capped at 512), batch norm, nearest upsampling
  (22.8 M params): the CAMUS working size. Depth 5 leaves an 8x8 bottleneck whose receptive
  field covers the whole 256x256 sector; depth 6 (4x4 bottleneck) is available through
  ``model.depth=6`` but adds cost for little extra context at this size.

Batch normalisation uses momentum 0.9 (not Keras' 0.99): with the short trainings of the
phantom study, 0.99 leaves the moving statistics lagging and validation Dice far below
training Dice (docs/bench_seg.md).

Example::

    model = build_unet(UNetConfig(size=64, depth=4, base_filters=16))
    probs = model(np.zeros((2, 64, 64, 1), "float32"))    # (2, 64, 64, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

NORMS = ("batch", "group", "instance", "none")
UPSAMPLINGS = ("transpose", "nearest")


@dataclass
class UNetConfig:
    """U-Net hyper-parameters.

    Args:
        size: working image size (square); must be divisible by ``2 ** depth``.
        depth: number of 2x downsamplings (4..6).
        base_filters: filters of the first level; doubled per level up to ``max_filters``.
        max_filters: cap on the filters of the deep levels.
        norm: "batch", "group" (``groups`` groups), "instance" or "none".
        groups: number of groups for group normalisation.
        dropout: dropout rate after each block of the two deepest levels (0 = off).
        upsampling: "transpose" (2x2 transposed conv) or "nearest" (UpSampling2D + 3x3 conv).
        deep_supervision: add auxiliary softmax heads on coarser decoder levels.
        num_classes: output classes (4 for CAMUS).
    """

    size: int = 64
    depth: int = 4
    base_filters: int = 16
    max_filters: int = 512
    norm: str = "batch"
    groups: int = 8
    dropout: float = 0.0
    upsampling: str = "nearest"
    deep_supervision: bool = False
    num_classes: int = 4

    def validate(self) -> None:
        if not 4 <= self.depth <= 6:
            raise ValueError(f"model.depth: expected 4..6, got {self.depth}")
        if self.size <= 0 or self.size % (2**self.depth):
            raise ValueError(
                f"model.size: {self.size} is not divisible by 2**depth = {2 ** self.depth} (depth {self.depth})"
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm: expected one of {NORMS}, got {self.norm!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"model.upsampling: expected one of {UPSAMPLINGS}, got {self.upsampling!r}")
        if self.base_filters < 1 or self.max_filters < self.base_filters:
            raise ValueError(f"model.base_filters/max_filters: invalid {self.base_filters}/{self.max_filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: expected [0, 1), got {self.dropout}")
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes: expected >= 2, got {self.num_classes}")

    def filters(self, level: int) -> int:
        return min(self.base_filters * 2**level, self.max_filters)


def _make_norm(norm: str, filters: int, groups: int, name: str):
    if norm == "batch":
        return layers.BatchNormalization(momentum=0.9, name=name)
    if norm == "group":
        g = max(1, min(groups, filters))
        while filters % g:
            g -= 1
        return layers.GroupNormalization(groups=g, name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=filters, name=name)
    return None


@keras.saving.register_keras_serializable(package="cardigan_tf")
class ConvBlock(layers.Layer):
    """Two 3x3 convolutions, each followed by normalisation and ReLU; optional dropout.

    U-Net's basic block (Ronneberger et al. 2015, Fig. 1), with normalisation added.

    Args:
        filters: output channels.
        norm: "batch", "group", "instance" or "none".
        groups: groups for group normalisation.
        dropout: dropout rate applied after the block (0 = none).

    Input (B, H, W, C) -> output (B, H, W, filters).

    Example::

        y = ConvBlock(16, norm="batch")(np.zeros((1, 8, 8, 3), "float32"))   # (1, 8, 8, 16)
    """

    def __init__(self, filters: int, norm: str = "batch", groups: int = 8, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"ConvBlock.norm: expected one of {NORMS}, got {norm!r}")
        self.filters = int(filters)
        self.norm = norm
        self.groups = int(groups)
        self.dropout = float(dropout)

    def build(self, input_shape):
        use_bias = self.norm == "none"
        shape = tuple(input_shape)
        self.conv1 = layers.Conv2D(self.filters, 3, padding="same", use_bias=use_bias, name="conv1")
        self.conv2 = layers.Conv2D(self.filters, 3, padding="same", use_bias=use_bias, name="conv2")
        self.norm1 = _make_norm(self.norm, self.filters, self.groups, "norm1")
        self.norm2 = _make_norm(self.norm, self.filters, self.groups, "norm2")
        self.conv1.build(shape)
        mid = shape[:-1] + (self.filters,)
        self.conv2.build(mid)
        for n in (self.norm1, self.norm2):
            if n is not None:
                n.build(mid)
        self.drop = layers.Dropout(self.dropout, name="dropout") if self.dropout > 0 else None
        super().build(input_shape)

    def call(self, x, training=None):
        for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            x = conv(x)
            if norm is not None:
                x = norm(x, training=training)
            x = ops.relu(x)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, norm=self.norm, groups=self.groups, dropout=self.dropout)
        return cfg


@keras.saving.register_keras_serializable(package="cardigan_tf")
class UpSample(layers.Layer):
    """2x upsampling for the U-Net decoder.

    "transpose": a 2x2 transposed convolution with stride 2 (Ronneberger et al. 2015);
    "nearest": nearest-neighbour ``UpSampling2D`` then a 3x3 convolution (no checkerboard
    artefacts; has an XLA kernel for its gradient, unlike bilinear resize).

    Args:
        filters: output channels.
        mode: "transpose" or "nearest".

    Input (B, H, W, C) -> output (B, 2H, 2W, filters).
    """

    def __init__(self, filters: int, mode: str = "nearest", **kwargs):
        super().__init__(**kwargs)
        if mode not in UPSAMPLINGS:
            raise ValueError(f"UpSample.mode: expected one of {UPSAMPLINGS}, got {mode!r}")
        self.filters = int(filters)
        self.mode = mode

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.mode == "transpose":
            self.up = None
            self.conv = layers.Conv2DTranspose(self.filters, 2, strides=2, padding="same", name="tconv")
            self.conv.build(shape)
        else:
            self.up = layers.UpSampling2D(2, interpolation="nearest", name="up")
            self.conv = layers.Conv2D(self.filters, 3, padding="same", name="conv")
            up_shape = (shape[0], None if shape[1] is None else 2 * shape[1],
                        None if shape[2] is None else 2 * shape[2], shape[3])
            self.conv.build(up_shape)
        super().build(input_shape)

    def call(self, x):
        if self.up is not None:
            x = self.up(x)
        return self.conv(x)

    def compute_output_shape(self, input_shape):
        s = tuple(input_shape)
        return (s[0], None if s[1] is None else 2 * s[1], None if s[2] is None else 2 * s[2], self.filters)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, mode=self.mode)
        return cfg


def build_unet(cfg: UNetConfig | None = None, name: str = "unet") -> keras.Model:
    """Build the functional U-Net described by ``cfg`` (see the module docstring).

    Raises ValueError when ``cfg.size`` is not divisible by ``2 ** cfg.depth`` or another
    field is out of range. Outputs are float32 even under a mixed-precision policy.
    """
    cfg = cfg or UNetConfig()
    cfg.validate()
    inp = keras.Input((cfg.size, cfg.size, 1), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(inp)  # [0, 1] -> [-1, 1]
    skips = []
    for level in range(cfg.depth):
        drop = cfg.dropout if level >= cfg.depth - 1 else 0.0
        x = ConvBlock(cfg.filters(level), cfg.norm, cfg.groups, drop, name=f"enc{level}")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = ConvBlock(cfg.filters(cfg.depth), cfg.norm, cfg.groups, cfg.dropout, name="bottleneck")(x)
    aux = []
    for level in reversed(range(cfg.depth)):
        x = UpSample(cfg.filters(level), cfg.upsampling, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = ConvBlock(cfg.filters(level), cfg.norm, cfg.groups, 0.0, name=f"dec{level}")(x)
        if cfg.deep_supervision and 1 <= level <= 2:
            a = layers.Conv2D(cfg.num_classes, 1, name=f"aux{level}_logits")(x)
            a = layers.UpSampling2D(2**level, interpolation="nearest", name=f"aux{level}_up")(a)
            aux.append(layers.Activation("softmax", dtype="float32", name=f"aux_{level}")(a))
    logits = layers.Conv2D(cfg.num_classes, 1, name="logits")(x)
    out = layers.Activation("softmax", dtype="float32", name="seg")(logits)
    outputs = [out, *reversed(aux)] if aux else out
    return keras.Model(inp, outputs, name=name)


def inference_model(model: keras.Model) -> keras.Model:
    """The main-output model (for prediction and export); the model itself when single-output."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[0], name=f"{model.name}_main")

