"""Secondary, exploratory comparisons of the study: the seed-averaged paired test per training
fraction, synthetic fraction, exposure arm, structure and metric (``wilcoxon.csv``).

Each test patient's difference (synthetic minus none) is averaged over its views, phases and
seeds and tested with the Wilcoxon signed-rank test, with a bootstrap interval over patients;
Holm corrects over the whole table. This test resamples patients but not training runs: the
study's conclusion rests on :mod:`cardigan_tf.jobs.study_primary`.
"""

from __future__ import annotations

import math
from typing import Any

from cardigan_tf import stats
from cardigan_tf.jobs.study_primary import arm_text, cells_by_key, contrasts
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics.segmentation import METRICS
from cardigan_tf.units import DISTANCE_COLUMN, MM, joined

METRIC_NAMES = {"dice": "Dice", "hd": "HD", "mad": "MAD"}
SECONDARY = "Secondary, exploratory (not corrected for the primary family; intervals only for interpretation)"
ALPHA = 0.05


def rows_from_dice(per_image_dice: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """result.json's ``{"patient/view/phase": {structure: dice}}`` as per-image rows (Dice only)."""
    return [dict(zip(("patient", "view", "phase"), key.split("/")), **{f"{s}_dice": float(v[s]) for s in v})
            for key, v in per_image_dice.items()]


def _per_image(cell: dict[str, Any]) -> list[dict[str, Any]]:
    if "per_image" in cell:
        return cell["per_image"]
    return rows_from_dice(cell.get("per_image_dice", {}))


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["patient"], r["view"], r["phase"]): r for r in rows}


def wilcoxon_rows(cells: list[dict[str, Any]], n_boot: int = 10000, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Synthetic fraction 0 against each other synthetic fraction in each exposure arm, per
    training fraction, structure and metric (Dice, HD, MAD), counting test patients, not images.

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
    by_key = cells_by_key(cells)
    for tf, sf, arm in contrasts(by_key):
        pairs = [(seed, by_key[(tf, 0.0, "", seed)], cell) for (t, f, a, seed), cell in sorted(by_key.items())
                 if t == tf and f == sf and a == arm and (tf, 0.0, "", seed) in by_key]
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
                    "train_fraction": tf, "synthetic_fraction": sf, "exposure": arm, "structure": s, "metric": m,
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


def findings(tests: list[dict]) -> list[str]:
    lines = []
    for t in tests:
        if t["structure"] != "lv_endo" or t["metric"] != "dice":
            continue
        lines.append(
            f"- {100 * t['train_fraction']:g}% of the training patients, "
            f"{arm_text(t['synthetic_fraction'], t.get('exposure', ''))}: "
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
        f"| train fraction | synthetic fraction | arm | structure | metric | patients | mean diff [95% CI] | per seed | "
        f"p uncorrected | p ({correction}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        holm = _fmt_p(t["pvalue_holm"])
        if t["significant"] == "yes":
            holm += " (significant)"
        lines.append(f"| {t['train_fraction']:g} | {t['synthetic_fraction']:g} | {t.get('exposure', '')} | "
                     f"{STRUCTURE_TITLES[t['structure']]} | "
                     f"{METRIC_NAMES[t['metric']]} | {t['n_patients']} | {_effect(t)} | {_seeds(t)} | "
                     f"{_fmt_p(t['pvalue'])} | {holm} |")
    return lines + [""]
