"""Load saved networks in a fresh process."""

from __future__ import annotations

import keras

import cardigan_tf.models.discriminator  # noqa: F401  (registers the custom layers)
import cardigan_tf.models.encoder  # noqa: F401
import cardigan_tf.models.generator  # noqa: F401
import cardigan_tf.models.spade  # noqa: F401
import cardigan_tf.models.unet  # noqa: F401


def load_network(path, compile: bool = False) -> keras.Model:
    """``keras.models.load_model`` for a saved generator, discriminator or encoder.

    Importing this module registers every custom layer (SPADE, SPADEResBlock, NearestResize,
    AvgPoolExcludePad, Reparameterize), which a fresh process needs before loading.
    """
    return keras.models.load_model(path, compile=compile)
