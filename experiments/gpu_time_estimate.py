"""Estimated GPU time of a study design, before running it.

    python -m experiments.gpu_time_estimate experiments/camus_full.yaml [--train-patients 400]

Counts the units the study would train (cardigan_tf.jobs.study.study_cells, one GAN per
(training fraction, seed) unless shared_gan), the steps of each (the add arm's U-Nets run
1 / (1 - share) times the steps of share 0), and the float operations of one training step
from the traced forward graphs (tf.profiler, cardigan_tf.bench.gan.forward_flops): a training
step costs about 3x its forward passes (forward + two backward products). A GAN step runs the
generator once and the discriminator on real and fake images in both the generator's and the
discriminator's update (4 discriminator passes; the VGG loss adds its own when on). Hours are
given at stated sustained rates (a fraction of the card's dense bf16 peak); measure a few steps
on the card (python -m cardigan_tf.bench gan / seg) to replace the assumption by a figure.
"""

from __future__ import annotations

import argparse
import math

from cardigan_tf.bench.gan import forward_flops
from cardigan_tf.configs.gan import network_configs
from cardigan_tf.configs.study import build_study_config
from cardigan_tf.jobs.study import study_cells
from cardigan_tf.models.discriminator import build_discriminator
from cardigan_tf.models.generator import build_generator
from cardigan_tf.models.unet import build_unet

#: dense bf16 peak per card; sustained training throughput is assumed to be a fraction of it
#: (model-FLOP utilisation): 10 % for batch-4/8 convolutional training at 256x256 with its
#: input pipeline, evaluation and checkpoints, 30 % for a well-fed card
CARDS = {"A100": 312e12, "H100 SXM / H200": 989e12}
UTILISATION = (0.10, 0.30)
TRAIN_FACTOR = 3  # forward + backward (two products per forward one)
FRAMES_PER_PATIENT = 4  # 2 views x ED/ES


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--train-patients", type=int, default=400, help="patients in the train split (CAMUS: 400)")
    args = p.parse_args(argv)
    cfg = build_study_config(args.config)
    cells = study_cells(cfg)
    size = cfg.seg.model.size
    g_cfg, d_cfg, _ = network_configs(cfg.gan.model)
    k = cfg.gan.model.num_classes
    g_fwd = forward_flops(build_generator(g_cfg), [(1, size, size, k)]) if cfg.gan.model.style != "z" else \
        forward_flops(build_generator(g_cfg), [(1, size, size, k), (1, cfg.gan.model.z_dim)])
    d_fwd = forward_flops(build_discriminator(d_cfg), [(1, size, size, d_cfg.in_channels)])
    u_fwd = forward_flops(build_unet(cfg.seg.model), [(1, size, size, 1)])
    gan_step = TRAIN_FACTOR * (g_fwd + 4 * d_fwd) * cfg.gan.train.batch_size
    seg_step = TRAIN_FACTOR * u_fwd * cfg.seg.train.batch_size

    gans = {(c.frac, c.seed if not cfg.shared_gan or c.frac < 1 else cfg.seeds[0]) for c in cells if c.synth > 0}
    gan_flops = 0.0
    for frac, _ in gans:
        frames = max(1, round(frac * args.train_patients)) * FRAMES_PER_PATIENT
        steps = cfg.gan.train.steps or cfg.gan.train.epochs * math.ceil(frames / cfg.gan.train.batch_size)
        gan_flops += steps * gan_step
    seg_flops, seg_steps = 0.0, 0
    for c in cells:
        frames = max(1, round(c.frac * args.train_patients)) * FRAMES_PER_PATIENT
        base = cfg.seg.train.epochs * cfg.seg.train.epoch_steps(frames)
        steps = math.ceil(base / (1 - c.synth)) if c.synth > 0 and c.exposure == "add" else base
        seg_steps += steps
        seg_flops += steps * seg_step
    print(f"design {cfg.name}: {len(cells)} U-Nets ({seg_steps:,} steps), {len(gans)} GANs, {size}x{size}")
    print(f"forward GFLOP per image: generator {g_fwd / 1e9:.1f}, discriminator {d_fwd / 1e9:.1f}, U-Net {u_fwd / 1e9:.1f}")
    print(f"training PFLOP: GANs {gan_flops / 1e15:,.0f}, U-Nets {seg_flops / 1e15:,.0f} (+ evaluation, selection: small)")
    total = gan_flops + seg_flops
    for card, peak in CARDS.items():
        hours = [total / (peak * u) / 3600 for u in UTILISATION]
        print(f"  {card}: about {hours[1]:,.1f} to {hours[0]:,.1f} GPU hours "
              f"({100 * UTILISATION[1]:.0f} % to {100 * UTILISATION[0]:.0f} % of the {peak / 1e12:,.0f} TFLOP/s bf16 peak)")


if __name__ == "__main__":
    main()
