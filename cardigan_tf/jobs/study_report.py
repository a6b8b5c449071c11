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
from cardigan_tf.jobs.study_primary import primary_lines, primary_rows
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS
from cardigan_tf.units import DISTANCE_COLUMN, MM, distances_sentence, joined

METRIC_NAMES = {"dice": "Dice", "hd": "HD", "mad": "MAD"}
SECONDARY = "Secondary, exploratory (not corrected for the primary family; intervals only for interpretation)"


def load_cells(root: Path) -> list[dict[str, Any]]:
    """Every finished cell's result.json under ``root/cells``."""
    out = []
    for path in sorted((root / "cells").glob("*/result.json")):
        result = json.loads(path.read_text())
        result["cell"] = path.parent.name
        out.append(result)
    return out


ALPHA = 0.05


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
                row: dict[str, Any] = {"patient": r["patient"], "view": r["view"], "phase": r["phase"]}
                for s in STRUCTURES:
                    for m in METRICS:
                        text = r.get(f"{s}_{m}")
                        row[f"{s}_{m}"] = float(text) if text not in (None, "") else float("nan")
                    if r.get(f"{s}_missing") not in (None, ""):
                        row[f"{s}_missing"] = float(r[f"{s}_missing"].strip().lower() in ("true", "1", "1.0"))
                rows.append(row)
            cell["per_image"], cell[DISTANCE_COLUMN] = rows, _read_unit(eval_dir, raw)
        elif "per_image_dice" in cell:
            cell["per_image"] = _rows_from_dice(cell["per_image_dice"])
            cell.setdefault(DISTANCE_COLUMN, MM)


def _rows_from_dice(per_image_dice: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """result.json's ``{"patient/view/phase": {structure: dice}}`` as per-image rows (Dice only)."""
    return [dict(zip(("patient", "view", "phase"), key.split("/")), **{f"{s}_dice": float(v[s]) for s in v})
            for key, v in per_image_dice.items()]


def _per_image(cell: dict[str, Any]) -> list[dict[str, Any]]:
    if "per_image" in cell:
        return cell["per_image"]
    return _rows_from_dice(cell.get("per_image_dice", {}))


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["patient"], r["view"], r["phase"]): r for r in rows}


def wilcoxon_rows(cells: list[dict[str, Any]], n_boot: int = 10000, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Synthetic fraction 0 against each other synthetic fraction, per training fraction,
    structure and metric (Dice, HD, MAD), counting test patients, not images.

    Each cell needs ``per_image`` rows (see :func:`attach_per_image`; ``per_image_dice`` alone is
    accepted for Dice). Images are paired by (seed, patient, view, phase); each patient's
    difference (synthetic minus none) is averaged over its views, phases and seeds, and those
    per-patient differences are tested (Wilcoxon signed-rank) and bootstrapped (95 % interval of
    the mean over patients). ``seed_diffs`` gives each seed's mean difference. The p-values are
    Holm-corrected over every test of the returned table (``pvalue_holm``, ``n_tests``);
    ``significant`` is "yes"/"no" after correction at ``alpha`` and empty when no test was possible.
    Every row has ``role`` "secondary": the study's conclusion rests on :mod:`cardigan_tf.jobs.study_primary`.
    """
    rows = []
    by_key = {(c["train_fraction"], c["synthetic_fraction"], c["seed"]): c for c in cells}
    train_fracs = sorted({c["train_fraction"] for c in cells})
    synth_fracs = sorted({c["synthetic_fraction"] for c in cells if c["synthetic_fraction"] > 0})
    for tf in train_fracs:
        for sf in synth_fracs:
            pairs = [(seed, by_key[(tf, 0.0, seed)], cell) for (t, f, seed), cell in sorted(by_key.items())
                     if t == tf and f == sf and (tf, 0.0, seed) in by_key]
            if not pairs:
                continue
            units = sorted({c.get(DISTANCE_COLUMN, MM) for _, base, other in pairs for c in (base, other)})
            for m in METRICS:
                for s in STRUCTURES:
                    key = f"{s}_{m}"
                    records = []
                    for seed, base, other in pairs:
                        ref = _index(_per_image(base))
                        for image, row in _index(_per_image(other)).items():
                            if image in ref and key in row and key in ref[image]:
                                records.append((image[0], seed, row[key] - ref[image][key]))
                    if not records:
                        continue
                    mixed = m != "dice" and len(units) > 1  # mm against px: no meaningful difference
                    diffs = stats.patient_mean_differences([] if mixed else records)
                    res = stats.paired_patient_test(list(diffs["patients"].values()), n_boot=n_boot)
                    seed_vals = list(diffs["seeds"].values())
                    note = f"distance units differ between cells ({', '.join(units)}): not compared" if mixed else res["note"]
                    rows.append({
                        "train_fraction": tf, "synthetic_fraction": sf, "structure": s, "metric": m,
                        DISTANCE_COLUMN: joined(units),
                        "n_patients": res["n"], "n_seeds": len(diffs["seeds"]), "n_image_pairs": diffs["n_images"],
                        "mean_diff": res["mean_diff"], "ci_low": res["ci_low"], "ci_high": res["ci_high"],
                        "median_diff": res["median_diff"],
                        "seed_diffs": " ".join(f"{sd}:{v:+.6g}" for sd, v in diffs["seeds"].items()),
                        "seed_diff_min": min(seed_vals) if seed_vals else float("nan"),
                        "seed_diff_max": max(seed_vals) if seed_vals else float("nan"),
                        "statistic": res["statistic"], "pvalue": res["pvalue"], "test_method": res["method"],
                        "note": note, "role": "secondary",
                    })
    adjusted = stats.holm([r["pvalue"] for r in rows])
    n_tests = sum(math.isfinite(r["pvalue"]) for r in rows)
    for r, p in zip(rows, adjusted):
        r["pvalue_holm"] = p
        r["n_tests"] = n_tests
        r["correction"] = f"Holm over {n_tests} tests" if n_tests else "none (no test possible)"
        r["significant"] = "" if not math.isfinite(p) else ("yes" if p <= alpha else "no")
    return rows


def _fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


def _diff(v: float, m: str) -> str:
    return "–" if not math.isfinite(v) else (f"{v:+.4f}" if m == "dice" else f"{v:+.2f}")


def _effect(t: dict[str, Any]) -> str:
    """"+0.0123 [95% CI -0.0040, +0.0280]" (Dice), "-1.20 [95% CI -2.00, -0.40] px" (HD, MAD)."""
    unit = f" {t[DISTANCE_COLUMN]}" if t["metric"] != "dice" and t.get(DISTANCE_COLUMN) else ""
    return (f"{_diff(t['mean_diff'], t['metric'])} [95% CI {_diff(t['ci_low'], t['metric'])}, "
            f"{_diff(t['ci_high'], t['metric'])}]{unit}")


def _seeds(t: dict[str, Any]) -> str:
    parts = [p.split(":", 1) for p in t["seed_diffs"].split()]
    return ", ".join(f"{_diff(float(v), t['metric'])} (seed {sd})" for sd, v in parts) or "–"


def _p_text(t: dict[str, Any]) -> str:
    if not math.isfinite(t["pvalue"]):
        return f"no test ({t['note']})" if t["note"] else "no test"
    verdict = "significant" if t["significant"] == "yes" else "not significant"
    return (f"Wilcoxon signed-rank on per-patient means p = {_fmt_p(t['pvalue_holm'])} after Holm correction "
            f"over {t['n_tests']} tests (uncorrected {_fmt_p(t['pvalue'])}): {verdict} at {ALPHA:g} after correction")


def _findings(tests: list[dict]) -> list[str]:
    lines = []
    for t in tests:
        if t["structure"] != "lv_endo" or t["metric"] != "dice":
            continue
        lines.append(
            f"- {100 * t['train_fraction']:g}% of the training patients, synthetic fraction {t['synthetic_fraction']:g}: "
            f"mean LV endo Dice difference {_effect(t)} against no synthetic images over {t['n_patients']} test "
            f"patients (each patient averaged over its views, phases and {t['n_seeds']} seed(s)); per seed "
            f"{_seeds(t)}; {_p_text(t)}."
        )
    if not lines:
        return ["- No synthetic fraction > 0 was run: no comparison."]
    few = [t for t in tests if 0 < t["n_patients"] < stats.MIN_PAIRS_FOR_005]
    if few and len(few) == len([t for t in tests if t["n_patients"] > 0]):
        n = max(t["n_patients"] for t in few)
        lines.append(f"- With {n} test patient(s) (fewer than {stats.MIN_PAIRS_FOR_005}) no two-sided signed-rank "
                     "test can reach p < 0.05: only the effects and their intervals are reported, and nothing "
                     "is called significant (a bootstrap interval over so few patients is itself too narrow).")
    return lines


def test_table_lines(tests: list[dict]) -> list[str]:
    """The markdown table of the paired comparisons (report.md)."""
    if not tests:
        return []
    n_tests = tests[0]["n_tests"]
    correction = f"Holm over {n_tests} tests" if n_tests else "no test possible"
    lines = [
        f"{SECONDARY}: every metric and structure. Paired comparisons, synthetic fraction 0 against each other fraction, counting test patients: each "
        "patient's difference (synthetic minus none) is averaged over its views, phases and seeds; mean over "
        "patients with a 95 % percentile bootstrap interval over patients, each seed's mean difference, and the "
        "two-sided Wilcoxon signed-rank test of the per-patient differences. Higher Dice and lower HD/MAD are "
        "better. Images whose HD/MAD is undefined under either setting (an empty prediction) are left out of "
        f"those comparisons (wilcoxon.csv: n_image_pairs). p-values are corrected for the {n_tests} tests of this table together (Holm); \"significant\" "
        f"means Holm-corrected p <= {ALPHA:g}.",
        "",
        f"| train fraction | synthetic fraction | structure | metric | patients | mean diff [95% CI] | per seed | "
        f"p uncorrected | p ({correction}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        holm = _fmt_p(t["pvalue_holm"])
        if t["significant"] == "yes":
            holm += " (significant)"
        lines.append(f"| {t['train_fraction']:g} | {t['synthetic_fraction']:g} | {STRUCTURE_TITLES[t['structure']]} | "
                     f"{METRIC_NAMES[t['metric']]} | {t['n_patients']} | {_effect(t)} | {_seeds(t)} | "
                     f"{_fmt_p(t['pvalue'])} | {holm} |")
    return lines + [""]


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


def _gan_sharing(cells: list[dict[str, Any]]) -> str:
    """A sentence naming the GANs that served cells of several seeds (same training patients);
    ``cells``: :func:`load_cells`."""
    served: dict[str, set] = {}
    for r in cells:
        if r.get("gan"):
            served.setdefault(r["gan"], set()).add(r["seed"])
    shared = [f"`{g}` served seeds {', '.join(str(s) for s in sorted(seeds))}"
              for g, seeds in sorted(served.items()) if len(seeds) > 1]
    if not shared:
        return ""
    return (" Seeds with the same training patients share one GAN and its synthetic set (" + "; ".join(shared)
            + "): their differences do not include a GAN's training randomness.")


def write_study_report(root: Path, cfg) -> Path:
    """Write cells.csv, results.csv/.md, wilcoxon.csv, dice_vs_synthetic.png, report.md."""
    root = Path(root)
    cells = load_cells(root)
    if not cells:
        raise RuntimeError(f"{root}: no finished cell to report on")
    attach_per_image(root, cells, cfg.split)
    unit = joined(c.get(DISTANCE_COLUMN, MM) for c in cells)
    flat = [{k: v for k, v in c.items() if k not in ("per_image_dice", "per_image", "cell")} for c in cells]
    stats.write_table_csv(flat, root / "cells.csv")
    bookkeeping = ("n_images", "n_train_patients")
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
        "validation and test patients never reached a GAN or a synthetic set." + _gan_sharing(cells),
        distances_sentence(unit),
        "",
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
        *_findings(tests),
        "",
    ]
    lines += test_table_lines(tests)
    found, skipped = load_quality(root)
    lines += quality_lines(found, skipped)
    if previews:
        caption = {"real": "Mask | synthetic image | real image of the same mask:",
                   "deformed": "Deformed mask | synthetic image | real image of the source mask:",
                   "sampled": "Sampled mask | synthetic image:"}.get(cfg.masks, "Mask | synthetic image:")
        lines += ["## Synthetic samples", "", caption, "",
                  "![synthetic samples](samples.png)", ""]
    lines += ["Files: `primary.csv` (the primary endpoint), `results.csv` (per cell), `cells.csv` (per U-Net), "
              "`wilcoxon.csv` (secondary comparisons), `cells/*/eval-*/` "
              "(per-image CSV, worst cases, Bland-Altman), `gans/` (GAN runs; `gans/*/quality/` GAN quality reports), "
              "`synthetic/` (CAMUSx sets and their preview grids).", ""]
    report = root / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return root
