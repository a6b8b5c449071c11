"""Named GAN presets: network fields (used by the builders) and training hints.

Network fields: size, ngf, ndf, num_D, n_layers, norm (generator SPADE norm), d_norm,
style, z_dim, nef, num_upsampling_layers, spectral, hidden, num_classes.
Training hints (read by the GAN job, which owns its own config): batch_size, epochs,
decay_epochs, hflip.

- ``tiny``: 64x64, ngf/ndf 16 — tests and CPU demos.
- ``cardigan``: cardiGAN's run of NVIDIA SPADE (REFERENCE.md): 256x256, ngf/ndf 48,
  batch 4, 30 epochs (20 constant + 10 linear decay), horizontal flips, mask-only
  (deterministic) generator, 2-scale D with 4 layers, synchronised batch norm in SPADE.
- ``spade``: NVIDIA SPADE defaults at 256x256: ngf/ndf 64.

Example::

    from cardigan_tf.models.presets import GAN_PRESETS, network_configs
    g_cfg, d_cfg, e_cfg = network_configs("tiny")
    g = load_network("runs/gan-x/generator.keras")   # registers our layers first
"""

from __future__ import annotations

import copy

import keras

from cardigan_tf.models.discriminator import DiscriminatorConfig
from cardigan_tf.models.encoder import EncoderConfig
from cardigan_tf.models.generator import GeneratorConfig

_NETWORK_DEFAULTS = dict(num_classes=4, num_D=2, n_layers=4, norm="batch", d_norm="instance",
                         style="mask", z_dim=256, num_upsampling_layers="normal",
                         spectral=True, hidden=128)

GAN_PRESETS: dict[str, dict] = {
    "tiny": dict(_NETWORK_DEFAULTS, size=64, ngf=16, ndf=16, nef=16,
                 batch_size=8, epochs=2, decay_epochs=1, hflip=True),
    "cardigan": dict(_NETWORK_DEFAULTS, size=256, ngf=48, ndf=48, nef=48,
                     batch_size=4, epochs=30, decay_epochs=10, hflip=True),
    "spade": dict(_NETWORK_DEFAULTS, size=256, ngf=64, ndf=64, nef=64,
                  batch_size=4, epochs=30, decay_epochs=10, hflip=True),
}


def get_preset(name: str) -> dict:
    """A copy of preset ``name``; ValueError naming the known presets otherwise."""
    if name not in GAN_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(GAN_PRESETS)}, got {name!r}")
    return copy.deepcopy(GAN_PRESETS[name])


def network_configs(preset: str | dict, **overrides):
    """(GeneratorConfig, DiscriminatorConfig, EncoderConfig) from a preset name or dict."""
    p = get_preset(preset) if isinstance(preset, str) else dict(preset)
    p.update(overrides)
    g = GeneratorConfig(size=p["size"], ngf=p["ngf"], num_classes=p["num_classes"],
                        num_upsampling_layers=p["num_upsampling_layers"], style=p["style"],
                        z_dim=p["z_dim"], norm=p["norm"], spectral=p["spectral"],
                        hidden=p["hidden"])
    d = DiscriminatorConfig(ndf=p["ndf"], num_D=p["num_D"], n_layers=p["n_layers"],
                            num_classes=p["num_classes"], spectral=p["spectral"],
                            norm=p["d_norm"], size=p["size"])
    e = EncoderConfig(size=p["size"], nef=p["nef"], z_dim=p["z_dim"], spectral=p["spectral"])
    for cfg in (g, d, e):
        cfg.validate()
    return g, d, e


def load_network(path, compile: bool = False) -> keras.Model:
    """``keras.models.load_model`` for a saved generator, discriminator or encoder.

    Importing this module registers every custom layer (SPADE, SPADEResBlock, NearestResize,
    AvgPoolExcludePad, Reparameterize), which a fresh process needs before loading.
    """
    return keras.models.load_model(path, compile=compile)
