"""Tables, statistics, plot and report.md of a finished (or partial) study folder."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

from cardigan_tf import stats
from cardigan_tf.data.h5layout import read_root_attrs
from cardigan_tf.files import atomic_write_text
from cardigan_tf.jobs.study_primary import (
    primary_lines,
    primary_rows,
)
from cardigan_tf.jobs.study_secondary import (
    attach_clinical,
    cell_failures,
    clinical_rows,
    failure_rows,
    quality_breakdown_lines,
    secondary_lines,
    sensitivity_rows,
)
from cardigan_tf.jobs.study_wilcoxon import (
    SECONDARY,
    findings,
    rows_from_dice,
    test_table_lines,
    wilcoxon_rows,
)
from cardigan_tf.labels import STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS
from cardigan_tf.units import DISTANCE_COLUMN, MM, distances_sentence, joined


def load_cells(root: Path) -> list[dict[str, Any]]:
    """Every finished cell's result.json under ``root/cells``."""
    out = []
    for path in sorted((root / "cells").glob("*/result.json")):
        result = json.loads(path.read_text())
        result["cell"] = path.parent.name
        out.append(result)
    return out


def _read_unit(eval_dir: Path, rows: list[dict[str, str]]) -> str:
    """HD/MAD unit of one evaluation: the per-image CSV's ``distance_unit`` column, else
    summary.json's ``distance_unit`` or ``units.hd``, else mm (evaluations that name no unit
    measured with a known spacing)."""
    found = {r[DISTANCE_COLUMN] for r in rows if r.get(DISTANCE_COLUMN)}
    if found:
        return joined(found)
    summary = eval_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        for value in (data.get(DISTANCE_COLUMN), (data.get("units") or {}).get("hd")):
            if isinstance(value, str) and value:
                return value
    return MM


def attach_per_image(root: Path, cells: list[dict[str, Any]], split: str) -> None:
    """Give every cell ``per_image`` (rows with patient, view, phase, ``<structure>_<metric>``
    floats and, where the CSV has them, ``<structure>_missing`` 0/1 flags) and ``distance_unit``, read from ``cells/<cell>/eval-<split>/per_image.csv``.

    A cell without that CSV keeps its ``per_image_dice`` (Dice only; unit "mm")."""
    for cell in cells:
        eval_dir = Path(root) / "cells" / cell["cell"] / f"eval-{split}"
        path = eval_dir / "per_image.csv"
        if path.is_file():
            with open(path, newline="") as fh:
                raw = list(csv.DictReader(fh))
            missing = [c for c in ("patient", "view", "phase") if raw and c not in raw[0]]
            if missing:
                raise ValueError(f"{path}: per-image CSV lacks columns {missing} (expected patient, view, phase "
                                 "and <structure>_<dice|hd|mad>)")
            rows = []
            for r in raw:
                row: dict[str, Any] = {"patient": r["patient"], "view": r["view"], "phase": r["phase"],
                                       "quality": r.get("quality") or ""}
                for s in STRUCTURES:
                    for m in METRICS:
                        text = r.get(f"{s}_{m}")
                        row[f"{s}_{m}"] = float(text) if text not in (None, "") else float("nan")
                    if r.get(f"{s}_missing") not in (None, ""):
                        row[f"{s}_missing"] = float(r[f"{s}_missing"].strip().lower() in ("true", "1", "1.0"))
                rows.append(row)
            cell["per_image"], cell[DISTANCE_COLUMN] = rows, _read_unit(eval_dir, raw)
        elif "per_image_dice" in cell:
            cell["per_image"] = rows_from_dice(cell["per_image_dice"])
            cell.setdefault(DISTANCE_COLUMN, MM)


def _synthetic_counts(root: Path) -> str:
    """"synth-f1-seed0: 192 images, ..." from the synthetic sets' provenance."""
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
            dice = " | ".join(f"{_f(c[s]['synthetic']['mean'])} / {_f(c[s][f'real_{split}']['mean'])}" for s in STRUCTURES)
            lines.append(f"| [{q['gan']}](gans/{q['gan']}/quality/quality.md) | {q['n_synthetic']} | {dice} | "
                         f"{_g(gen['fid'])} ({_g(ref['fid'])}) | {_g(1000 * gen['kid'])} ({_g(1000 * ref['kid'])}) |")
        lines.append("")
    for name in skipped:
        lines.append(f"- `{name}`: no quality report (no cell with synthetic fraction 0 for its training "
                     "fraction and seed to provide the real-trained segmenter).")
    return lines + [""]


def selection_lines(root: Path) -> list[str]:
    """Per study GAN: the checkpoint chosen on held-out validation masks, with the like-for-like
    pair (the real-trained U-Net of the same patients on real and on generated images of the same
    masks; cardigan_tf.jobs.gan_selection)."""
    records = [(d.name, json.loads((d / "selection.json").read_text())) for d in sorted((root / "gans").glob("gan-*"))
               if (d / "selection.json").is_file()]
    if not records:
        return []
    lines = ["## GAN checkpoint and like-for-like quality (held-out validation masks)", "",
             "Each GAN's synthetic set is drawn by the kept checkpoint whose images the U-Net trained on the same "
             "patients without synthetic images segments best; the masks are those of the validation patients, "
             "which no GAN and no U-Net trains on. Dice against the mask at the working size, real image / "
             "generated image of the same mask.", "",
             "| GAN | chosen step (last) | masks | LV endo real / generated | LV epi real / generated | "
             "LA real / generated |", "|---|---|---|---|---|---|"]
    for name, r in records:
        pc = r["paired_consistency"]["structures"]
        pair = " | ".join(f"{pc[s]['real']:.3f} / {pc[s]['synthetic']:.3f}" for s in STRUCTURES)
        lines.append(f"| `{name}` | {r['selected_step']} ({r['last_step']}) | {r['paired_consistency']['n_images']} | "
                     f"{pair} |")
    return lines + [""]


def _gan_sharing(cells: list[dict[str, Any]], cfg) -> str:
    """A sentence naming the GANs that served cells of several seeds (same training patients);
    ``cells``: :func:`load_cells`."""
    served: dict[str, set] = {}
    for r in cells:
        if r.get("gan"):
            served.setdefault(r["gan"], set()).add(r["seed"])
    shared = [f"`{g}` served seeds {', '.join(str(s) for s in sorted(seeds))}"
              for g, seeds in sorted(served.items()) if len(seeds) > 1]
    if not shared:
        return (" Each seed trained its own GAN: the seed-to-seed differences include the GAN's training randomness."
                if not cfg.shared_gan else "")
    return (" Seeds with the same training patients share one GAN and its synthetic set (" + "; ".join(shared)
            + "): their differences do not include a GAN's training randomness.")


EXPOSURE_COLUMNS = ("real_samples_seen", "synthetic_samples_seen")
FAILURE_COLUMNS = (*(f"{s}_failures" for s in STRUCTURES), "ef_failures")


def cell_lines(flat: list[dict[str, Any]]) -> list[str]:
    """Per U-Net: its steps, the real and synthetic samples it saw, and its failures."""
    lines = ["## Training runs: exposure and failures", "",
             "| cell | steps | real samples | synthetic samples | failed images (LV endo / LV epi / LA) | EF not measurable "
             "(most frequent reason) |", "|---|---|---|---|---|---|"]
    for c in sorted(flat, key=lambda c: (c["train_fraction"], c["synthetic_fraction"], c.get("exposure") or "", c["seed"])):
        fails = " / ".join(_count(c.get(f"{s}_failures")) for s in STRUCTURES)
        reason = f" ({c['ef_failure_reason']})" if c.get("ef_failure_reason") else ""
        lines.append(f"| `{c.get('cell_name', '')}` | {_count(c.get('steps'))} | {_count(c.get('real_samples_seen'))} | "
                     f"{_count(c.get('synthetic_samples_seen'))} | {fails} | {_count(c.get('ef_failures'))}{reason} |")
    return lines + [""]


def _count(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{int(v)}"


#: LV endo Dice above which a real-only baseline leaves synthetic data little room (the phantom
#: with many training patients reaches 0.97): a regime at or below it is "below ceiling"
CEILING_DICE = 0.93


def regime_lines(summary: list[dict[str, Any]]) -> list[str]:
    """One line per training fraction: the real-only baseline's LV endo Dice (mean over seeds)
    and whether the regime is below ceiling, so the primary contrasts can be read against it."""
    lines = []
    for row in summary:
        if row["synthetic_fraction"] != 0:
            continue
        dice = row.get("lv_endo_dice_mean", float("nan"))
        if not math.isfinite(dice):
            continue
        verdict = (f"below ceiling (<= {CEILING_DICE}): room for synthetic images to help" if dice <= CEILING_DICE
                   else f"near ceiling (> {CEILING_DICE}): little room for any gain")
        lines.append(f"- Training fraction {row['train_fraction']:g}: the U-Net without synthetic images reaches LV "
                     f"endo Dice {dice:.3f} on the test patients (mean over {row['n_seeds']} seed(s)), {verdict}.")
    return ["## Regimes", "", *lines, ""] if lines else []


def write_study_report(root: Path, cfg) -> Path:
    """Write cells.csv, results.csv/.md, wilcoxon.csv, dice_vs_synthetic.png, report.md."""
    root = Path(root)
    cells = load_cells(root)
    if not cells:
        raise RuntimeError(f"{root}: no finished cell to report on")
    attach_per_image(root, cells, cfg.split)
    attach_clinical(root, cells, cfg.split)
    unit = joined(c.get(DISTANCE_COLUMN, MM) for c in cells)
    flat = [{**{k: v for k, v in c.items() if k not in ("per_image_dice", "per_image", "clinical", "cell")},
             **cell_failures(c)} for c in cells]
    named = [{**row, "cell_name": c["cell"]} for row, c in zip(flat, cells)]
    stats.write_table_csv(flat, root / "cells.csv")
    bookkeeping = ("n_images", "n_train_patients", "steps", *EXPOSURE_COLUMNS, *FAILURE_COLUMNS, "ef_failure_reason")
    summary = stats.summarize_cells([{k: v for k, v in row.items() if k not in bookkeeping} for row in flat])
    for row in summary:
        row[DISTANCE_COLUMN] = unit  # the unit of the HD / MAD columns
    stats.write_table_csv(summary, root / "results.csv")
    table = stats.table_markdown(summary, distance_unit=unit)
    atomic_write_text(root / "results.md", table)
    tests = wilcoxon_rows(cells)
    if tests:
        stats.write_table_csv(tests, root / "wilcoxon.csv")
    primary = primary_rows(cells, cfg.primary)
    if primary:
        stats.write_table_csv(primary, root / "primary.csv")
    failures, sensitivity, clinical = (failure_rows(cells), sensitivity_rows(cells, cfg.primary),
                                       clinical_rows(cells, cfg.primary))
    for rows, name in ((failures, "failures.csv"), (sensitivity, "sensitivity.csv"), (clinical, "clinical_tests.csv")):
        if rows:
            stats.write_table_csv(rows, root / name)
    stats.plot_dice_vs_synthetic(summary, root / "dice_vs_synthetic.png",
                                 title=f"Dice vs synthetic fraction ({'phantom' if not cfg.data else cfg.data})")
    previews = sorted((root / "synthetic").glob("*.png"))
    if previews:
        shutil.copyfile(previews[-1], root / "samples.png")
    ph = cfg.phantom
    data = cfg.data or (f"built-in phantom ({cfg.n_phantom} patients, seed {cfg.data_seed}; image quality Good / "
                        f"Medium / Poor drawn at {' / '.join(f'{f:g}' for f in ph.quality_mix)}; acquisition style "
                        f"{ph.style}" + (f", test patients in style {ph.test_style}" if ph.test_style not in (None, ph.style)
                                         else "") + ")")
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
        "validation and test patients never reached a GAN or a synthetic set." + _gan_sharing(cells, cfg),
        f"Exposure arms of every synthetic fraction > 0: {', '.join(f'`{a}`' for a in cfg.exposures)} (`add`: the "
        "real samples of the cell without synthetic data plus the synthetic ones, more steps; `replace`: the same "
        "steps, synthetic samples in real ones' places; cells.csv: real_samples_seen, synthetic_samples_seen, steps). "
        f"Each cell is evaluated with its `{cfg.cell_model}` model.",
        distances_sentence(unit),
        "",
        *regime_lines(summary),
        *primary_lines(primary),
        "## Results (mean ± SD over seeds)",
        "",
        table,
        "![Dice against synthetic fraction](dice_vs_synthetic.png)",
        "",
        "## Secondary comparisons (exploratory)",
        "",
        f"{SECONDARY}: LV endo Dice by the seed-averaged test of the table below, which resamples patients but "
        "not training runs (its intervals are too narrow when seeds differ; docs/statistics.md).",
        "",
        *findings(tests),
        "",
    ]
    lines += test_table_lines(tests)
    lines += secondary_lines(failures, sensitivity, clinical, cfg.simpson)
    lines += quality_breakdown_lines(cells)
    lines += cell_lines(named)
    found, skipped = load_quality(root)
    lines += selection_lines(root)
    lines += quality_lines(found, skipped)
    if previews:
        caption = {"real": "Mask | synthetic image | real image of the same mask:",
                   "deformed": "Deformed mask | synthetic image | real image of the source mask:",
                   "sampled": "Sampled mask | synthetic image:"}.get(cfg.masks, "Mask | synthetic image:")
        lines += ["## Synthetic samples", "", caption, "",
                  "![synthetic samples](samples.png)", ""]
    lines += ["Files: `primary.csv` (the primary endpoint), `results.csv` (per cell), `cells.csv` (per U-Net), "
              "`wilcoxon.csv`, `failures.csv`, `sensitivity.csv`, `clinical_tests.csv` (secondary comparisons), "
              "`cells/*/eval-*/` "
              "(per-image CSV, worst cases, Bland-Altman), `gans/` (GAN runs; `gans/*/quality/` GAN quality reports), "
              "`synthetic/` (CAMUSx sets and their preview grids).", ""]
    report = root / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return root
