"""How hard each phantom regime is: one tiny U-Net (64x64) per regime, real images only, trained
on the first K training patients of a phantom drawn with a quality mix and acquisition styles,
evaluated on the test patients (LV endo Dice overall and per quality level).

    python experiments/phantom_regimes.py --out runs/regimes \\
        --regime good:1,0,0:A:A:3 --regime poor:0,0,1:A:A:3 --regime shift:0.35,0.5,0.15:A:B:3

A regime is NAME:GOOD,MEDIUM,POOR:STYLE:TEST_STYLE:K. Everything else is the tiny preset with
``--epochs`` x ``--steps`` steps of batch 8 (no early stopping; the best validation epoch is
evaluated) on ``--patients`` phantom patients (seeded 80/10/10 split). One line per regime is
printed and appended to ``OUT/regimes.csv``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from cardigan_tf.configs.seg import build_seg_config
from cardigan_tf.data.h5layout import iter_samples, list_patients
from cardigan_tf.data.phantom_imaging import PhantomConfig
from cardigan_tf.data.source import resolve_data
from cardigan_tf.jobs.evaluation import evaluate_run
from cardigan_tf.jobs.seg import train_seg
from cardigan_tf.labels import QUALITIES


def parse_regime(text: str) -> tuple[str, PhantomConfig, int]:
    try:
        name, mix, style, test_style, k = text.split(":")
        cfg = PhantomConfig(quality_mix=[float(f) for f in mix.split(",")], style=style, test_style=test_style)
        cfg.validate()
        return name, cfg, int(k)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--regime {text!r}: expected NAME:GOOD,MEDIUM,POOR:STYLE:TEST_STYLE:K "
                                         f"({exc})") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the runs and regimes.csv")
    p.add_argument("--regime", action="append", type=parse_regime, required=True)
    p.add_argument("--patients", type=int, default=60, help="phantom patients (default 60: 6 test patients)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch")
    p.add_argument("--seed", type=int, default=0, help="data seed (phantom and split)")
    p.add_argument("--train-seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, phantom, k in args.regime:
        data = resolve_data(None, out / "data", size=64, seed=args.seed, n_phantom=args.patients, phantom=phantom)
        train = list_patients(data)["train"][:k]
        seen = {s.patient: s.quality for _, s in iter_samples(data, ["train"]) if s.patient in train}
        cfg = build_seg_config("tiny", None, [
            f"data.data={data}", f"data.train_patients={train}", f"train.epochs={args.epochs}",
            f"train.steps_per_epoch={args.steps}", "train.patience=0", "train.n_overlays=0",
            f"train.seed={args.train_seed}"])
        t0 = time.perf_counter()
        run = train_seg(cfg, runs_dir=out, name=name)
        summary = evaluate_run(run, split="test", overwrite=True)
        seconds = time.perf_counter() - t0
        row = {"regime": name, "quality_mix": phantom.attrs()["quality_mix"], "style": phantom.style,
               "test_style": phantom.style_of("test"), "train_patients": k,
               "train_qualities": "/".join(seen[p] for p in train), "epochs": args.epochs,
               "steps": args.steps, "train_seed": args.train_seed,
               "lv_endo_dice": round(summary["by_phase"]["all"]["lv_endo"]["dice"]["mean"], 4),
               "n_test_images": summary["n_images"], "seconds": round(seconds, 1)}
        for q in QUALITIES:
            st = summary["by_quality"].get(q, {}).get("lv_endo", {}).get("dice")
            row[f"dice_{q}"] = "" if st is None else f"{st['mean']:.4f} (n {st['n']})"
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        table = out / "regimes.csv"
        new = not table.exists()
        with table.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


if __name__ == "__main__":
    main()
