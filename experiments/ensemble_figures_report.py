"""The tables, checks and plot of ``experiments/ensemble_figures.py``: paired per-patient
comparisons of the arms' evaluations, the uncertainty ranking and the cost table.

Each arm is one evaluation folder (``per_image.csv``, ``clinical.csv``, ``summary.json`` of
:func:`cardigan_tf.jobs.evaluation.evaluate_run`) on the same test patients. A comparison
(``ensemble`` - ``single``, ``ensemble_tta`` - ``single``) of one metric is
:func:`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison` on the two arms'
per-image rows (EF absolute error: one row per patient), one training run per arm: the
patient-level paired bootstrap with its Student-t interval (P - 1 df) and the p-value by
inverting it, as the study reports a contrast with one seed per arm.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cardigan_tf.files import atomic_path, atomic_write_text
from cardigan_tf.labels import STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.metrics.uncertainty import FAILURE_DICE
from cardigan_tf.stats_hierarchical import DEFAULT_LEVEL, DEFAULT_N_BOOT, hierarchical_paired_comparison

BASELINE = "single"
ARMS = ("single", "ensemble", "ensemble_tta")
ARM_TITLES = {"single": "single U-Net", "ensemble": "K-fold ensemble", "ensemble_tta": "K-fold ensemble + TTA"}
#: the study's primary endpoint
PRIMARY = "lv_endo_dice"
#: an uncertainty ranking is reported where the arm has at least this many failures
MIN_FAILURES = 5
#: the issue's goal for that ranking
GOAL_AUC = 0.8
#: (metric, title, the better direction: +1 higher, -1 lower)
MEASURES = (("dice", "Dice", 1), ("hd", "HD", -1), ("mad", "MAD", -1))
EF_METRIC = "ef_abs_error"
COMPARISON_FIELDS = ["comparison", "metric", "structure", "measure", "unit", "better", "n_patients",
                     "n_patients_excluded", "n_images_a", "n_images_b", "mean_a", "mean_b", "estimate", "ci_low", "ci_high", "level", "pvalue", "verdict",
                     "method"]
COST_FIELDS = ["item", "arm", "batch", "value", "unit", "bound", "within", "note"]


def metrics() -> list[tuple[str, str, str, int]]:
    """(metric column, structure, measure title, better direction) of every compared metric."""
    out = [(f"{s}_{m}", s, title, sign) for s in STRUCTURES for m, title, sign in MEASURES]
    return out + [(EF_METRIC, "lv", "EF abs. error", -1)]


def read_csv(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def arm_rows(eval_dir: Path, metric: str) -> list[dict]:
    """The rows ``{"patient", "value"}`` of one arm for ``metric``: per image from
    ``per_image.csv``, or per patient ``|EF pred - EF gt|`` from ``clinical.csv``."""
    if metric == EF_METRIC:
        return [{"patient": r["patient"], "value": abs(_float(r["ef_pred"]) - _float(r["ef_gt"]))}
                for r in read_csv(Path(eval_dir) / "clinical.csv")]
    return [{"patient": r["patient"], "value": _float(r[metric])} for r in read_csv(Path(eval_dir) / "per_image.csv")]


def scored_in_both(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """Both arms' rows of the patients that have a finite value in both arms, and the patients
    left out (e.g. an EF that the LV of one arm's masks does not allow measuring)."""
    def scored(rows):
        return {r["patient"] for r in rows if math.isfinite(r["value"])}
    both = scored(rows_a) & scored(rows_b)
    left_out = sorted({r["patient"] for r in rows_a + rows_b} - both)
    return [r for r in rows_a if r["patient"] in both], [r for r in rows_b if r["patient"] in both], left_out


def patient_differences(rows_a: list[dict], rows_b: list[dict]) -> dict[str, float]:
    """Per patient: mean of arm B's finite values - mean of arm A's (patients both arms scored)."""
    def means(rows):
        acc: dict[str, list[float]] = {}
        for r in rows:
            if math.isfinite(r["value"]):
                acc.setdefault(r["patient"], []).append(r["value"])
        return {p: float(np.mean(v)) for p, v in acc.items()}
    a, b = means(rows_a), means(rows_b)
    return {p: b[p] - a[p] for p in sorted(set(a) & set(b))}


def verdict(low: float, high: float, better: int) -> str:
    """``better`` / ``worse`` when the interval lies on one side of 0, else ``no difference shown``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not tested"
    if low > 0 or high < 0:
        return "better" if (low > 0) == (better > 0) else "worse"
    return "no difference shown"


def compare(eval_dirs: dict[str, Path], units: dict[str, str], n_boot: int = DEFAULT_N_BOOT) -> tuple[list[dict], dict]:
    """The comparison rows (:data:`COMPARISON_FIELDS`) of every arm against :data:`BASELINE` and
    every metric, and the per-patient differences {(comparison, metric): {patient: d}} (the plot)."""
    rows, diffs = [], {}
    for arm in [a for a in eval_dirs if a != BASELINE]:
        for metric, structure, title, better in metrics():
            a, b, left_out = scored_in_both(arm_rows(eval_dirs[BASELINE], metric), arm_rows(eval_dirs[arm], metric))
            table = [{"arm": name, "seed": 0, **r} for name, part in ((BASELINE, a), (arm, b)) for r in part]
            unit = "%" if metric == EF_METRIC else units.get(title.lower(), "")
            row = {"comparison": f"{arm} - {BASELINE}", "metric": metric, "structure": structure, "measure": title,
                   "unit": unit, "better": "higher" if better > 0 else "lower", "level": DEFAULT_LEVEL,
                   "n_patients_excluded": len(left_out)}
            try:
                res = hierarchical_paired_comparison(table, (BASELINE, arm), value="value", n_boot=n_boot,
                                                     level=DEFAULT_LEVEL)
            except ValueError as exc:  # e.g. fewer than 2 patients scored in both arms
                row.update({k: float("nan") for k in ("estimate", "ci_low", "ci_high", "pvalue", "mean_a", "mean_b")},
                           n_patients=0, n_images_a=len(a), n_images_b=len(b), verdict="not tested",
                           method=f"not tested: {exc}")
            else:
                row.update(n_patients=res["n_patients"], n_images_a=res["n_images"][BASELINE],
                           n_images_b=res["n_images"][arm], mean_a=res["arm_means"][BASELINE],
                           mean_b=res["arm_means"][arm], estimate=res["estimate"], ci_low=res["ci_low"],
                           ci_high=res["ci_high"], pvalue=res["pvalue"],
                           verdict=verdict(res["ci_low"], res["ci_high"], better), method=res["method"])
            rows.append(row)
            diffs[(arm, metric)] = patient_differences(a, b)
    return rows, diffs


def checks(rows: list[dict]) -> dict[str, dict]:
    """Per comparison: ``not_worse`` (no metric of any structure whose interval lies on the
    worse side of 0), the metrics that are worse, and ``primary_better`` (the LV endo Dice
    interval above 0)."""
    out = {}
    for r in rows:
        c = out.setdefault(r["comparison"], {"not_worse": True, "worse": [], "primary_better": False,
                                             "primary": None})
        if r["verdict"] == "worse":
            c["not_worse"] = False
            c["worse"].append(r["metric"])
        if r["metric"] == PRIMARY:
            c["primary"] = r
            c["primary_better"] = r["verdict"] == "better"
    return out


def rankings(summaries: dict[str, dict]) -> list[dict]:
    """Per arm and score: the failure ranking of its ``summary.json`` (AUC where >= 5 failures)."""
    out = []
    for arm, summary in summaries.items():
        for score, r in summary.get("failure_ranking", {}).items():
            enough = r["n_failures"] >= MIN_FAILURES
            if not enough:
                goal = f"n/a (< {MIN_FAILURES} failures)"
            elif not math.isfinite(_float(r["auc"])):
                goal = "n/a (no image above the threshold)"
            else:
                goal = "yes" if r["auc"] >= GOAL_AUC else "NO"
            out.append({"arm": arm, "score": score, "n": r["n"], "n_failures": r["n_failures"],
                        "auc": r["auc"] if enough else float("nan"), "dice_top": r["dice_top"],
                        "dice_rest": r["dice_rest"], "n_top": r["n_top"], "goal": goal})
    return out


def test_dice(summary: dict) -> dict[str, float]:
    """Mean test Dice per structure of an evaluation's ``summary.json``."""
    stats = summary["by_phase"]["all"]
    return {s: stats.get(s, {}).get("dice", {}).get("mean", float("nan")) for s in STRUCTURES}


def _num(v, digits: int = 3) -> str:
    v = _float(v)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _csv_text(fields: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cost_markdown(cost: list[dict]) -> list[str]:
    lines = ["| item | arm | batch | value | bound | within | note |", "|---|---|---|---|---|---|---|"]
    for r in cost:
        digits = 1 if r["unit"] in ("s", "MB") else 2
        bound = f"{_num(r['bound'], digits)} {r['unit']}" if math.isfinite(_float(r["bound"])) else "-"
        lines.append(f"| {r['item']} | {r['arm']} | {r['batch'] or '-'} | {_num(r['value'], digits)} {r['unit']} | "
                     f"{bound} | {r['within'] or '-'} | {r['note']} |")
    return lines


def markdown(context: dict, rows: list[dict], verdicts: dict, ranks: list[dict], cost: list[dict]) -> str:
    """figures.md: the setting, the checks, the comparisons, the uncertainty ranking, the cost."""
    tested = [r for r in rows if not r["method"].startswith("not tested")]
    first = next((r for r in tested if "nan df" not in r["method"]), tested[0] if tested else None)
    lines = [f"# Single U-Net vs {context['folds']}-fold ensemble vs ensemble + TTA", "",
             *[f"- {line}" for line in context["lines"]], "",
             "## Goals", ""]
    for comp, c in verdicts.items():
        p = c["primary"] or {}
        lines.append(f"- **{comp}**: not worse on any structure: **{'yes' if c['not_worse'] else 'NO'}**"
                     + (f" (worse: {', '.join(c['worse'])})" if c["worse"] else "")
                     + f"; LV endo Dice better with the interval above 0: **{'yes' if c['primary_better'] else 'no'}** "
                     f"({_num(p.get('estimate'), 4)} [{_num(p.get('ci_low'), 4)}, {_num(p.get('ci_high'), 4)}], "
                     f"p = {_num(p.get('pvalue'), 3)})")
    for r in [r for r in cost if r["within"]]:
        batch = f" batch {r['batch']}" if r["batch"] else ""
        lines.append(f"- cost bound, {r['item']} {r['arm']}{batch}: {r['within']} "
                     f"({_num(r['value'], 2)} {r['unit']} against {_num(r['bound'], 2)} {r['unit']})")
    for r in ranks:
        lines.append(f"- uncertainty ({r['score']}) ranks the failures of {r['arm']} with AUC >= {GOAL_AUC}: "
                     f"{r['goal']}"
                     + (f" (AUC {_num(r['auc'])}, {r['n_failures']} failures)" if r["goal"] in ("yes", "NO") else ""))
    lines += ["", "## Paired per test patient", "",
              f"Each row: the mean over test patients of (arm - single), each patient's value the mean over its "
              f"images (views x phases; EF: one value per patient). Method: "
              f"`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison` with one training run per arm: "
              f"{first['method'] if first else 'n/a'}. Verdict: the {DEFAULT_LEVEL:.0%} interval on the better or "
              "worse side of 0, or containing it. A patient without a finite value in one arm (an EF that its LV masks "
              "do not allow measuring, a structure missing from all its images) is left out of that row (patients: "
              "compared, left out).", "",
              "| comparison | structure | measure | patients | single | arm | difference [95 % CI] | p | better | "
              "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = 4 if r["measure"] == "Dice" else 2
        title = STRUCTURE_TITLES.get(r["structure"], "LV")
        lines.append(f"| {r['comparison']} | {title} | {r['measure']} ({r['unit']}) | {r['n_patients']}, "
                     f"{r['n_patients_excluded']} | {_num(r['mean_a'], d)} | "
                     f"{_num(r['mean_b'], d)} | {_num(r['estimate'], d)} [{_num(r['ci_low'], d)}, "
                     f"{_num(r['ci_high'], d)}] | {_num(r['pvalue'], 3)} | {r['better']} | {r['verdict']} |")
    lines += ["", f"## Uncertainty ranks the failures (LV endo Dice < {FAILURE_DICE:.2f})", "",
              f"| arm | score | images | failures | AUC | Dice, 10 % most uncertain | Dice, the rest | AUC >= {GOAL_AUC} |",
              "|---|---|---|---|---|---|---|---|"]
    for r in ranks:
        lines.append(f"| {r['arm']} | {r['score']} | {r['n']} | {r['n_failures']} | {_num(r['auc'])} | "
                     f"{_num(r['dice_top'])} (n = {r['n_top']}) | {_num(r['dice_rest'])} | {r['goal']} |")
    lines += ["", "## Each fold model alone on the test patients", "",
              "Not a paired test: the mean over test images of each fold's U-Net, beside the arms (how much of "
              "a difference is the ensembling and how much the single run's own luck: one training run per arm "
              "does not measure the training-run variance).", "",
              "| model | " + " | ".join(f"{STRUCTURE_TITLES[s]} Dice" for s in STRUCTURES) + " |",
              "|---|" + "---|" * len(STRUCTURES)]
    for name, summary in context["test_dice"].items():
        lines.append(f"| {name} | " + " | ".join(_num(summary.get(s), 4) for s in STRUCTURES) + " |")
    lines += ["", "## Cost", "", *context["cost_lines"], "", *cost_markdown(cost), "",
              "Files: `figures.csv` (the comparisons), `cost.csv`, `figures.png` (per-patient differences), "
              "`eval/<arm>/` (each arm's evaluation), `runs/` (the trained runs), `export/` (the SavedModels).", ""]
    return "\n".join(lines)


def plot(path: Path, rows: list[dict], diffs: dict) -> Path:
    """figures.png: per metric, the per-patient differences of each comparison (dots), their mean
    and 95 % interval (bar), and 0."""
    ms = metrics()
    comps = sorted({r["comparison"] for r in rows}, key=lambda c: ARMS.index(c.split(" - ")[0]))
    fig = Figure(figsize=(3.0 * 5, 3.2 * 2), dpi=100)
    rng = np.random.default_rng(0)
    by = {(r["comparison"], r["metric"]): r for r in rows}
    for i, (metric, structure, title, better) in enumerate(ms):
        ax = fig.add_subplot(2, 5, i + 1)
        ax.axhline(0.0, color="0.5", lw=0.8)
        for j, comp in enumerate(comps):
            arm = comp.split(" - ")[0]
            d = np.array(list(diffs.get((arm, metric), {}).values()), np.float64)
            ax.scatter(j + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.6, color=f"C{j}")
            r = by.get((comp, metric))
            if r and math.isfinite(_float(r["estimate"])):
                lo, hi = _float(r["ci_low"]), _float(r["ci_high"])
                ax.errorbar([j + 0.3], [r["estimate"]], yerr=[[r["estimate"] - lo], [hi - r["estimate"]]],
                            fmt="o", color="k", capsize=3, ms=4)
        unit = by.get((comps[0], metric), {}).get("unit", "") if comps else ""
        ax.set_title(f"{STRUCTURE_TITLES.get(structure, 'LV')} {title}" + (f" ({unit})" if unit and unit != "fraction"
                                                                           else ""), fontsize=9)
        ax.set_xticks(range(len(comps)), [c.split(" - ")[0].replace("_", "+\n") for c in comps], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(-0.5, len(comps) - 0.3)
        if i % 5 == 0:
            ax.set_ylabel("arm - single, per patient", fontsize=8)
        ax.text(0.02, 0.98, "higher is better" if better > 0 else "lower is better", transform=ax.transAxes,
                fontsize=6, va="top", color="0.4")
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write(out: Path, context: dict, rows: list[dict], diffs: dict, summaries: dict[str, dict],
          cost: list[dict]) -> dict:
    """figures.csv, cost.csv, figures.json, figures.png and figures.md (written last) in ``out``."""
    verdicts = checks(rows)
    ranks = rankings(summaries)
    atomic_write_text(out / "figures.csv", _csv_text(COMPARISON_FIELDS, rows))
    atomic_write_text(out / "cost.csv", _csv_text(COST_FIELDS, cost))
    record = {"context": context, "checks": verdicts, "rankings": ranks, "cost": cost}
    atomic_write_text(out / "figures.json", json.dumps(record, indent=2, default=str) + "\n")
    plot(out / "figures.png", rows, diffs)
    atomic_write_text(out / "figures.md", markdown(context, rows, verdicts, ranks, cost))
    return record
