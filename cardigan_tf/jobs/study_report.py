"""Tables, statistics, plot and report.md of a finished (or partial) study folder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from cardigan_tf import stats
from cardigan_tf.files import atomic_write_text

STRUCTS = ("lv_endo", "lv_epi", "la")
NAMES = {"lv_endo": "LV endo", "lv_epi": "LV epi", "la": "LA"}


def load_cells(root: Path) -> list[dict[str, Any]]:
    """Every finished cell's result.json under ``root/cells``."""
    out = []
    for path in sorted((root / "cells").glob("*/result.json")):
        result = json.loads(path.read_text())
        result["cell"] = path.parent.name
        out.append(result)
    return out


def wilcoxon_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired signed-rank tests on per-image Dice: synthetic fraction 0 vs each other fraction,
    per training fraction and structure, images paired by (seed, patient, view, phase)."""
    rows = []
    by_key = {(c["train_fraction"], c["synthetic_fraction"], c["seed"]): c for c in cells}
    train_fracs = sorted({c["train_fraction"] for c in cells})
    synth_fracs = sorted({c["synthetic_fraction"] for c in cells if c["synthetic_fraction"] > 0})
    for tf in train_fracs:
        for sf in synth_fracs:
            for s in STRUCTS:
                a, b = [], []
                for (t, f, seed), cell in sorted(by_key.items()):
                    if t != tf or f != sf or (t, 0.0, seed) not in by_key:
                        continue
                    base = by_key[(t, 0.0, seed)]["per_image_dice"]
                    for image, dices in cell["per_image_dice"].items():
                        if image in base:
                            a.append(dices[s])
                            b.append(base[image][s])
                if not a:
                    continue
                res = stats.wilcoxon_paired(a, b)
                rows.append({"train_fraction": tf, "synthetic_fraction": sf, "structure": s,
                             "n_pairs": res["n"], "median_dice_diff": res["median_diff"],
                             "mean_dice_diff": sum(x - y for x, y in zip(a, b) if math.isfinite(x - y)) / max(1, res["n"]),
                             "statistic": res["statistic"], "pvalue": res["pvalue"], "note": res["note"]})
    return rows


def _fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


def _findings(summary: list[dict], tests: list[dict]) -> list[str]:
    lines = []
    for t in tests:
        if t["structure"] != "lv_endo":
            continue
        sig = math.isfinite(t["pvalue"]) and t["pvalue"] < 0.05
        lines.append(
            f"- {100 * t['train_fraction']:g}% of the training patients, synthetic fraction {t['synthetic_fraction']:g}: "
            f"mean LV endo Dice difference {t['mean_dice_diff']:+.4f} against no synthetic images "
            f"(paired Wilcoxon p = {_fmt_p(t['pvalue'])}, {t['n_pairs']} images; "
            f"{'significant' if sig else 'not significant'} at 0.05)."
        )
    return lines or ["- No synthetic fraction > 0 was run: no comparison."]


def _synthetic_counts(root: Path) -> str:
    """"synth-f1-seed0: 192 images, ..." from the synthetic sets' provenance."""
    from cardigan_tf.data.h5layout import read_root_attrs

    parts = []
    for path in sorted((root / "synthetic").glob("*.h5")):
        prov = read_root_attrs(path).get("provenance") or {}
        rejected = int(prov.get("rejected_masks") or 0) + int(prov.get("invalid_source_masks") or 0)
        parts.append(f"`{path.stem}`: {prov.get('n', '?')} images, {rejected} masks rejected by the validity checks")
    if not parts:
        return "no synthetic set"
    return "; ".join(parts) + ("; a mask-only GAN draws one image per real mask" if any(
        "real" == (read_root_attrs(p).get("provenance") or {}).get("mask_source") for p in (root / "synthetic").glob("*.h5")) else "")


def load_quality(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(quality.json of every study GAN, names of the GANs whose quality report was skipped)."""
    found, skipped = [], []
    for gan_dir in sorted((root / "gans").glob("gan-*")):
        path = gan_dir / "quality" / "quality.json"
        if path.is_file():
            q = json.loads(path.read_text())
            q["gan"] = gan_dir.name
            found.append(q)
        elif (gan_dir / "quality_skipped.txt").is_file():
            skipped.append(gan_dir.name)
    return found, skipped


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _g(v) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.3g}"


def quality_lines(found: list[dict[str, Any]], skipped: list[str]) -> list[str]:
    """The "GAN quality" section of report.md."""
    if not found and not skipped:
        return []
    lines = ["## GAN quality", ""]
    if found:
        split = found[0]["split"]
        nets = sorted({q["feature_network_name"] for q in found})
        lines += [
            "Segmentation consistency (SPADE's protocol): the U-Net trained on the same patients without "
            f"synthetic images segments the generated images; Dice against their input masks (gen.), beside "
            f"the same U-Net on real {split} images (real). FID/KID against the real training images; "
            f"reference = real {split} images against the same training images (FID is biased upwards for small "
            f"sets, so compare it only between sets of similar size; KID is unbiased and can be slightly negative). "
            f"Features: {'; '.join(nets)}.",
            "",
            "| GAN | images | LV endo gen. / real | LV epi gen. / real | LA gen. / real | FID gen. (ref.) | "
            "KID x1000 gen. (ref.) |",
            "|---|---|---|---|---|---|---|",
        ]
        for q in found:
            c, d = q["segmentation_consistency"], q["distances"]
            gen, ref = d["synthetic_vs_real_train"], d[f"real_{split}_vs_real_train"]
            dice = " | ".join(f"{_f(c[s]['synthetic']['mean'])} / {_f(c[s][f'real_{split}']['mean'])}" for s in STRUCTS)
            lines.append(f"| [{q['gan']}](gans/{q['gan']}/quality/quality.md) | {q['n_synthetic']} | {dice} | "
                         f"{_g(gen['fid'])} ({_g(ref['fid'])}) | {_g(1000 * gen['kid'])} ({_g(1000 * ref['kid'])}) |")
        lines.append("")
    for name in skipped:
        lines.append(f"- `{name}`: no quality report (no cell with synthetic fraction 0 for its training "
                     "fraction and seed to provide the real-trained segmenter).")
    return lines + [""]


def write_study_report(root: Path, cfg) -> Path:
    """Write cells.csv, results.csv/.md, wilcoxon.csv, dice_vs_synthetic.png, report.md."""
    root = Path(root)
    cells = load_cells(root)
    if not cells:
        raise RuntimeError(f"{root}: no finished cell to report on")
    flat = [{k: v for k, v in c.items() if k not in ("per_image_dice", "cell")} for c in cells]
    stats.write_table_csv(flat, root / "cells.csv")
    bookkeeping = ("n_images", "n_train_patients")
    summary = stats.summarize_cells([{k: v for k, v in row.items() if k not in bookkeeping} for row in flat])
    stats.write_table_csv(summary, root / "results.csv")
    table = stats.table_markdown(summary)
    atomic_write_text(root / "results.md", table)
    tests = wilcoxon_rows(cells)
    if tests:
        stats.write_table_csv(tests, root / "wilcoxon.csv")
    stats.plot_dice_vs_synthetic(summary, root / "dice_vs_synthetic.png",
                                 title=f"Dice vs synthetic fraction ({'phantom' if not cfg.data else cfg.data})")
    previews = sorted((root / "synthetic").glob("*.png"))
    if previews:
        shutil.copyfile(previews[-1], root / "samples.png")
    data = cfg.data or f"built-in phantom ({cfg.n_phantom} patients, seed {cfg.data_seed})"
    lines = [
        f"# Study `{root.name}`",
        "",
        f"Data: {data}; images {cfg.seg.model.size}x{cfg.seg.model.size}; evaluated on the `{cfg.split}` split.",
        f"Design: training fractions {cfg.train_fractions} x synthetic fractions {cfg.synthetic_fractions} "
        f"x seeds {cfg.seeds}; {len(cells)} U-Nets trained. GAN preset `{cfg.gan.preset}` "
        f"({f'{cfg.gan.train.steps} steps' if cfg.gan.train.steps else f'{cfg.gan.train.epochs} epochs'}, "
        f"batch {cfg.gan.train.batch_size}), mask source `{cfg.masks}`, "
        f"up to {cfg.synthetic_multiplier}x as many synthetic as real training images ({_synthetic_counts(root)}).",
        "The GAN of each (training fraction, seed) saw only that subset of training patients; "
        "validation and test patients never reached a GAN or a synthetic set.",
        "",
        "## Results (mean ± SD over seeds)",
        "",
        table,
        "![Dice against synthetic fraction](dice_vs_synthetic.png)",
        "",
        "## Does synthetic data help here?",
        "",
        *_findings(summary, tests),
        "",
    ]
    if tests:
        lines += ["Paired Wilcoxon signed-rank tests on per-image Dice (synthetic fraction 0 vs each other):", "",
                  "| train fraction | synthetic fraction | structure | images | mean Dice diff | p |",
                  "|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {t['train_fraction']:g} | {t['synthetic_fraction']:g} | {NAMES[t['structure']]} | "
                         f"{t['n_pairs']} | {t['mean_dice_diff']:+.4f} | {_fmt_p(t['pvalue'])} |")
        lines.append("")
    found, skipped = load_quality(root)
    lines += quality_lines(found, skipped)
    if previews:
        caption = {"real": "Mask | synthetic image | real image of the same mask:",
                   "deformed": "Deformed mask | synthetic image | real image of the source mask:",
                   "sampled": "Sampled mask | synthetic image:"}.get(cfg.masks, "Mask | synthetic image:")
        lines += ["## Synthetic samples", "", caption, "",
                  "![synthetic samples](samples.png)", ""]
    lines += ["Files: `results.csv` (per cell), `cells.csv` (per U-Net), `wilcoxon.csv`, `cells/*/eval-*/` "
              "(per-image CSV, worst cases, Bland-Altman), `gans/` (GAN runs; `gans/*/quality/` GAN quality reports), "
              "`synthetic/` (CAMUSx sets and their preview grids).", ""]
    report = root / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return root
