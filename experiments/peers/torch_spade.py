"""A compact PyTorch SPADE (generator + 2-scale PatchGAN) for the side-by-side GAN benchmark.

Needs PyTorch (``pip install torch``; NOT a project requirement). ``python -m cardigan_tf.bench
gan --compare`` runs it in a subprocess; run alone with::

    python experiments/peers/torch_spade.py --size 256 --ngf 48 --ndf 48 --batch 4 --steps 3

Our own code, written from the SPADE paper (Park et al., CVPR 2019) and the defaults of NVIDIA's
public SPADE code (github.com/NVlabs/SPADE), to time the SAME step as NVIDIA's trainer on CPU:

- generator ("normal" upsampling, mask only): nearest-resized mask -> conv3x3(16nf) at
  size/32; SPADE residual blocks head_0, up, G_middle_0, G_middle_1, then up + block for
  8nf, 4nf, 2nf, nf; LeakyReLU -> conv3x3(1) -> tanh. SPADE = param-free BatchNorm2d +
  conv3x3(128)+ReLU on the mask, conv3x3 gamma and beta; spectral norm on the block convs.
- discriminator: 2 scales (avg-pool 3/2/1, count_include_pad=False), 4 layers, conv4x4
  (pad 2), spectral norm + param-free InstanceNorm on the middle convs, LeakyReLU(0.2).
- one step = G update (G forward, D on cat(fake, real) along the batch, hinge + 10 x feature
  matching / num_D, backward, Adam) then D update (G forward under no_grad, D on
  cat(fake, real), hinge, backward, Adam); Adam(0, 0.9) with TTUR lr 1e-4 / 4e-4.

Prints one JSON line: {"impl": "torch_spade", "step_s": ..., "threads": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.nn.utils import spectral_norm
except ImportError:  # pragma: no cover - optional dependency
    torch = None


def available() -> bool:
    return torch is not None


if torch is not None:

    class SPADE(nn.Module):
        def __init__(self, channels, label_nc, hidden=128):
            super().__init__()
            self.norm = nn.BatchNorm2d(channels, affine=False)
            self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
            self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
            self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

        def forward(self, x, seg):
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
            a = self.shared(seg)
            return self.norm(x) * (1 + self.gamma(a)) + self.beta(a)

    class Block(nn.Module):
        def __init__(self, fin, fout, label_nc):
            super().__init__()
            mid = min(fin, fout)
            self.learned = fin != fout
            self.conv_0 = spectral_norm(nn.Conv2d(fin, mid, 3, padding=1))
            self.conv_1 = spectral_norm(nn.Conv2d(mid, fout, 3, padding=1))
            self.norm_0 = SPADE(fin, label_nc)
            self.norm_1 = SPADE(mid, label_nc)
            if self.learned:
                self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
                self.norm_s = SPADE(fin, label_nc)

        def forward(self, x, seg):
            xs = self.conv_s(self.norm_s(x, seg)) if self.learned else x
            dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
            dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
            return xs + dx

    class Generator(nn.Module):
        def __init__(self, size=256, ngf=48, label_nc=4, out_nc=1):
            super().__init__()
            self.start = size // 32
            nf = ngf
            self.fc = nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
            self.head_0 = Block(16 * nf, 16 * nf, label_nc)
            self.G_middle_0 = Block(16 * nf, 16 * nf, label_nc)
            self.G_middle_1 = Block(16 * nf, 16 * nf, label_nc)
            widths = [16 * nf, 8 * nf, 4 * nf, 2 * nf, nf]
            self.ups = nn.ModuleList(Block(a, b, label_nc) for a, b in zip(widths, widths[1:]))
            self.conv_img = nn.Conv2d(nf, out_nc, 3, padding=1)

        def forward(self, seg):
            x = self.fc(F.interpolate(seg, size=(self.start, self.start), mode="nearest"))
            x = self.head_0(x, seg)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.G_middle_0(x, seg)
            x = self.G_middle_1(x, seg)
            for block in self.ups:
                x = block(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
            return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))

    class PatchGAN(nn.Module):
        def __init__(self, in_nc, ndf=48, n_layers=4):
            super().__init__()
            seq = [nn.Sequential(nn.Conv2d(in_nc, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
            nf = ndf
            for n in range(1, n_layers):
                prev, nf = nf, min(nf * 2, 512)
                stride = 1 if n == n_layers - 1 else 2
                seq.append(nn.Sequential(spectral_norm(nn.Conv2d(prev, nf, 4, stride, 2, bias=False)),
                                         nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)))
            seq.append(nn.Conv2d(nf, 1, 4, 1, 2))
            self.layers = nn.ModuleList(seq)

        def forward(self, x):
            feats = []
            for layer in self.layers:
                x = layer(x)
                feats.append(x)
            return feats

    class MultiscaleD(nn.Module):
        def __init__(self, in_nc, ndf=48, num_D=2, n_layers=4):
            super().__init__()
            self.scales = nn.ModuleList(PatchGAN(in_nc, ndf, n_layers) for _ in range(num_D))

        def forward(self, x):
            outs = []
            for i, d in enumerate(self.scales):
                if i:
                    x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
                outs.append(d(x))
            return outs

    def _split(outs):
        fake = [[t[: t.shape[0] // 2] for t in scale] for scale in outs]
        real = [[t[t.shape[0] // 2:] for t in scale] for scale in outs]
        return fake, real

    def _discriminate(d, seg, fake, real):
        x = torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)], 0)
        return _split(d(x))


def run_bench(size=256, ngf=48, ndf=48, batch=4, steps=3, warmup=1, threads=2, num_D=2,
              lambda_feat=10.0, seed=0) -> dict:
    """Time ``steps`` NVIDIA-order SPADE train steps (after ``warmup``); returns a dict."""
    if torch is None:
        raise ImportError("torch_spade needs PyTorch (pip install torch); it is not a project requirement")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g, d = Generator(size, ngf), MultiscaleD(5, ndf, num_D)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.9))
    labels = torch.randint(0, 4, (batch, size, size))
    seg = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    real = torch.rand(batch, 1, size, size) * 2 - 1

    def step():
        opt_g.zero_grad()
        fake = g(seg)
        pf, pr = _discriminate(d, seg, fake, real)
        g_gan = sum(-s[-1].mean() for s in pf) / len(pf)
        feat = sum(F.l1_loss(a, b.detach()) for sf, sr in zip(pf, pr) for a, b in zip(sf[:-1], sr[:-1]))
        g_loss = g_gan + feat * lambda_feat / len(pf)
        g_loss.backward()
        opt_g.step()
        opt_d.zero_grad()
        with torch.no_grad():
            fake = g(seg).detach()
        pf, pr = _discriminate(d, seg, fake, real)
        d_loss = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for f, r in zip(pf, pr)) / len(pf)
        d_loss.backward()
        opt_d.step()
        return float(g_loss.detach()), float(d_loss.detach())

    g.train()
    d.train()
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    return {"impl": "torch_spade", "torch": torch.__version__, "threads": threads, "size": size,
            "ngf": ngf, "ndf": ndf, "batch": batch, "num_D": num_D, "warmup_s": warm,
            "step_s": dt, "steps": steps,
            "params_G": sum(p.numel() for p in g.parameters()),
            "params_D": sum(p.numel() for p in d.parameters())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/peers/torch_spade.py")
    for name, default in (("size", 256), ("ngf", 48), ("ndf", 48), ("batch", 4), ("steps", 3),
                          ("warmup", 1), ("threads", 2), ("num_D", 2)):
        p.add_argument(f"--{name}", type=int, default=default)
    a = p.parse_args(argv)
    if torch is None:
        print(json.dumps({"impl": "torch_spade", "skipped": "PyTorch is not installed"}))
        return 0
    print(json.dumps(run_bench(a.size, a.ngf, a.ndf, a.batch, a.steps, a.warmup, a.threads, a.num_D)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
