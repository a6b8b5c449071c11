"""GAN losses of SPADE (Park et al., CVPR 2019), as NVIDIA's reference code defines them.

All functions use ``keras.ops`` only (they run on every Keras backend) and compute in float32:
logits and features are cast first, so they are safe under mixed precision.

Discriminator outputs follow the layout of ``cardigan_tf.models.discriminator``: a list over
scales, each a list of feature maps whose LAST entry is the patch logits.

- :func:`d_hinge_loss`: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``, averaged over
  scales.
- :func:`g_hinge_loss`: ``-mean(D(fake))``, averaged over scales.
- :func:`feature_matching_loss`: L1 between real and fake intermediate features (all but the
  logits), summed over layers and scales, divided by the number of scales (NVIDIA multiplies
  by ``lambda_feat / num_D``; the caller multiplies by ``lambda_feat``).
- :func:`kl_loss`: KL(N(mu, sigma) || N(0, 1)) summed over z, averaged over the batch (the
  keras.io GauGAN example sums over the batch too, which scales with the batch size).
- :class:`VGGPerceptualLoss`: VGG19 relu1_1..relu5_1 L1 with weights 1/32, 1/16, 1/8, 1/4, 1.
  Needs a local VGG19 weights file (no download is possible).

Every loss here is a mean over the (per-replica) batch; under a tf.distribute strategy the
training step divides by the number of replicas so that gradients sum to the global mean.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import ops

#: VGG19 layer weights of SPADE's VGGLoss (relu1_1 .. relu5_1).
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
VGG_LAYERS = tuple(f"block{i}_conv1" for i in range(1, 6))
#: Caffe-style ImageNet means (BGR) used by keras.applications.vgg19.preprocess_input.
_VGG_MEAN_BGR = (103.939, 116.779, 123.68)


def _f32(x):
    return ops.cast(x, "float32")


def _logits(d_out):
    """The logits of each scale: ``[scale[-1] for scale in d_out]``."""
    return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in d_out]


def d_hinge_loss(real_out, fake_out):
    """Discriminator hinge loss averaged over scales.

    Args:
        real_out, fake_out: D outputs for real and fake inputs (list over scales of lists of
            features, last = logits), or plain lists of logits.
    Returns:
        float32 scalar.
    """
    real, fake = _logits(real_out), _logits(fake_out)
    total = 0.0
    for r, f in zip(real, fake):
        total = total + ops.mean(ops.relu(1.0 - _f32(r))) + ops.mean(ops.relu(1.0 + _f32(f)))
    return total / len(real)


def g_hinge_loss(fake_out):
    """Generator hinge loss ``-mean(D(fake))`` averaged over scales (float32 scalar)."""
    fake = _logits(fake_out)
    total = 0.0
    for f in fake:
        total = total - ops.mean(_f32(f))
    return total / len(fake)


def d_scores(d_out):
    """Mean patch logit over scales (a float32 scalar, for monitoring D on real or fake)."""
    logits = _logits(d_out)
    return sum(ops.mean(_f32(x)) for x in logits) / len(logits)


def feature_matching_loss(real_out, fake_out):
    """Sum over scales and layers (all but the logits) of mean |real - fake|, / num scales.

    The real features are treated as constants (gradient stopped), as in SPADE.
    Multiply by ``lambda_feat`` (10) to get SPADE's ``GAN_Feat`` term.
    """
    num_d = len(real_out)
    total = 0.0
    for real_feats, fake_feats in zip(real_out, fake_out):
        for r, f in zip(real_feats[:-1], fake_feats[:-1]):
            total = total + ops.mean(ops.abs(ops.stop_gradient(_f32(r)) - _f32(f)))
    return total / num_d


def kl_loss(mu, logvar):
    """KL divergence to N(0, 1), summed over z and averaged over the batch (float32 scalar)."""
    mu, logvar = _f32(mu), _f32(logvar)
    per_example = -0.5 * ops.sum(1.0 + logvar - ops.square(mu) - ops.exp(logvar), axis=-1)
    return ops.mean(per_example)


class VGGPerceptualLoss:
    """SPADE's VGG19 perceptual loss on grayscale images in [-1, 1].

    The gray image is repeated to three channels, mapped to [0, 255] and mean-subtracted as
    ``keras.applications.vgg19.preprocess_input`` does (caffe mode; the RGB->BGR swap is a no-op
    on gray). Features are the outputs of ``block{1..5}_conv1`` (relu1_1 .. relu5_1).

    Args:
        weights_path: a local VGG19 weights file (``include_top=False``, e.g. Keras'
            ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``); required, as no download
            is possible.

    Example:
        >>> vgg = VGGPerceptualLoss("vgg19_notop.h5")          # doctest: +SKIP
        >>> loss = vgg(real_m11, fake_m11)                      # doctest: +SKIP
    """

    def __init__(self, weights_path: str | Path):
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: VGG19 weights file not found (train.vgg_weights expects a local "
                "keras.applications.VGG19 include_top=False weights file; set it to null to "
                "train without the VGG loss)"
            )
        self.weights_path = str(path)
        base = keras.applications.VGG19(
            weights=str(path), include_top=False, input_shape=(None, None, 3)
        )
        base.trainable = False
        self.model = keras.Model(
            base.input, [base.get_layer(name).output for name in VGG_LAYERS], name="vgg19_features"
        )
        self.model.trainable = False

    @staticmethod
    def preprocess(image):
        """(B, H, W, 1) in [-1, 1] -> (B, H, W, 3) caffe-preprocessed float32."""
        x = (_f32(image) + 1.0) * 127.5
        x = ops.concatenate([x, x, x], axis=-1)
        return x - ops.reshape(ops.convert_to_tensor(_VGG_MEAN_BGR, "float32"), (1, 1, 1, 3))

    def __call__(self, real, fake):
        real_feats = self.model(self.preprocess(real), training=False)
        fake_feats = self.model(self.preprocess(fake), training=False)
        total = 0.0
        for w, r, f in zip(VGG_LAYER_WEIGHTS, real_feats, fake_feats):
            total = total + w * ops.mean(ops.abs(ops.stop_gradient(_f32(r)) - _f32(f)))
        return total
