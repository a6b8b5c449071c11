"""The study's secondary endpoints: failures counted, distances with failures scored, EF and volumes.

Everything here is secondary and exploratory (the conclusion rests on
:mod:`cardigan_tf.jobs.study_primary`); each contrast is a (training fraction, synthetic
fraction > 0, exposure arm) against synthetic fraction 0, as the primary one.

- **Failures** (:func:`failure_rows`): an image fails a structure when the structure is empty in
  the prediction or the reference (``<structure>_missing``; HD/MAD undefined); a patient's EF
  fails when Simpson's method cannot measure it on the predicted masks (``reason_pred`` in
  ``clinical.csv``, e.g. the LV in pieces). Rates per arm and the patient-level exact sign test
  (:func:`cardigan_tf.stats_failures.failure_sign_test`) over the paired runs.
- **Sensitivity of HD / MAD** (:func:`sensitivity_rows`): the comparison with failures left out
  (which favours the arm that fails more) beside the same comparison with every failure scored
  at a stated worst-case value, the largest value of that metric measured anywhere in the study.
- **EF and volumes** (:func:`clinical_rows`): per patient the absolute EF error (percentage
  points) and the signed EDV / ESV errors (ml; the arm's bias), predicted against the
  ground-truth masks under the same Simpson convention (``simpson`` of the study config), by
  the primary method (:func:`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison`) on
  the patients every compared run could measure; with an unknown spacing there are no volumes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from cardigan_tf.jobs.study_primary import arm_of, arm_text, cells_by_key, contrasts, failure_flags
from cardigan_tf.labels import QUALITIES, STRUCTURE_TITLES, STRUCTURES
from cardigan_tf.stats_failures import failure_sign_test
from cardigan_tf.stats_hierarchical import hierarchical_paired_comparison
from cardigan_tf.units import DISTANCE_COLUMN, MM

NAN = float("nan")
#: the clinical indices compared: per-patient value column -> (title, unit)
CLINICAL = {"ef_abs_error": ("EF absolute error", "%"), "edv_error": ("EDV error (bias)", "ml"),
            "esv_error": ("ESV error (bias)", "ml")}
FAILURE_TITLES = {**{s: f"{STRUCTURE_TITLES[s]} empty" for s in STRUCTURES}, "ef": "EF not measurable"}


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else NAN


def attach_clinical(root: Path, cells: list[dict[str, Any]], split: str) -> None:
    """Give every cell ``clinical``: per patient ``ef_abs_error``, ``edv_error``, ``esv_error``,
    ``ef_failed`` (0/1) and ``reason``, read from ``cells/<cell>/eval-<split>/clinical.csv``
    (no file: no rows)."""
    for cell in cells:
        path = Path(root) / "cells" / cell["cell"] / f"eval-{split}" / "clinical.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                for r in csv.DictReader(fh):
                    ef_pred, ef_gt = _float(r.get("ef_pred")), _float(r.get("ef_gt"))
                    if not math.isfinite(ef_gt):
                        continue  # the reference itself is not measurable: no failure of the U-Net's
                    failed = bool(r.get("reason_pred")) or not math.isfinite(ef_pred)
                    rows.append({"patient": r["patient"], "ef_failed": float(failed),
                                 "reason": (r.get("reason_pred") or "").split(":", 1)[-1].split("(")[0].strip(),
                                 "ef_abs_error": abs(ef_pred - ef_gt),
                                 "edv_error": _float(r.get("edv_pred")) - _float(r.get("edv_gt")),
                                 "esv_error": _float(r.get("esv_pred")) - _float(r.get("esv_gt"))})
        cell["clinical"] = rows


def cell_failures(cell: dict[str, Any]) -> dict[str, Any]:
    """Failure counts of one cell (cells.csv columns): ``<structure>_failures`` of its images,
    ``ef_failures`` of its patients and the most frequent reason."""
    out: dict[str, Any] = {}
    for s in STRUCTURES:
        flags = [r[f"{s}_missing"] for r in cell.get("per_image", []) if f"{s}_missing" in r]
        out[f"{s}_failures"] = int(sum(flags)) if flags else NAN
    clinical = cell.get("clinical", [])
    out["ef_failures"] = int(sum(r["ef_failed"] for r in clinical)) if clinical else NAN
    reasons = [r["reason"] for r in clinical if r["ef_failed"] and r["reason"]]
    out["ef_failure_reason"] = max(set(reasons), key=reasons.count) if reasons else ""
    return out


def _pairs(by_key: dict, tf: float, sf: float, arm: str) -> list[tuple[int, dict, dict]]:
    """(seed, cell without synthetic data, cell of the contrast) for the seeds both have."""
    return [(seed, by_key[tf, 0.0, "", seed], c) for (t, f, a, seed), c in sorted(by_key.items(), key=str)
            if t == tf and f == sf and a == arm and (tf, 0.0, "", seed) in by_key]


def failure_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per contrast and failure kind (each structure empty; EF not measurable): the failure rate
    of both arms and the patient-level exact sign test."""
    by_key = cells_by_key(cells)
    rows = []
    for tf, sf, arm in contrasts(by_key):
        pairs = _pairs(by_key, tf, sf, arm)
        for endpoint in FAILURE_TITLES:
            patients, fa, fb = failure_flags(pairs, endpoint)
            if not patients:
                continue
            res = failure_sign_test(patients, fa, fb)
            rows.append({"train_fraction": tf, "synthetic_fraction": sf, "exposure": arm, "failure": endpoint,
                         "unit_of_count": "patient" if endpoint == "ef" else "image", "n_pairs": len(patients),
                         "failures_none": int(sum(fa)), "failures_synthetic": int(sum(fb)),
                         "rate_none": res["rate_a"], "rate_synthetic": res["rate_b"],
                         "patients_more_none": res["patients_more_a"], "patients_more_synthetic": res["patients_more_b"],
                         "pvalue": res["pvalue"], "method": res["method"], "note": res["note"], "role": "secondary"})
    return rows


def _long(pairs, rows_of, key: str, worst: float | None = None, keep=None) -> list[dict[str, Any]]:
    """Long table (arm 0 / 1, seed, patient, value) of the pairs; ``worst`` replaces an undefined
    value; ``keep``: the patients to keep."""
    out = []
    for seed, base, other in pairs:
        for arm, cell in ((0, base), (1, other)):
            for r in rows_of(cell):
                if keep is not None and r["patient"] not in keep:
                    continue
                v = r.get(key, NAN)
                if worst is not None and not math.isfinite(v):
                    v = worst
                out.append({"arm": arm, "seed": seed, "patient": r["patient"], "value": v})
    return out


def _compare(table, endpoint) -> dict[str, Any]:
    try:
        res = hierarchical_paired_comparison(table, (0, 1), paired_seeds=endpoint.paired_seeds,
                                             level=1 - endpoint.alpha, n_boot=endpoint.n_boot, rng_seed=endpoint.rng_seed)
    except ValueError as exc:
        return {"estimate": NAN, "ci_low": NAN, "ci_high": NAN, "pvalue": NAN, "note": str(exc)}
    tested = res["training_variance_estimated"]
    return {"estimate": res["estimate"], "ci_low": res["ci_low"], "ci_high": res["ci_high"],
            "pvalue": res["pvalue"] if tested else NAN, "mean_none": res["arm_means"][0],
            "mean_synthetic": res["arm_means"][1],
            "note": res["note"] or ("" if tested else "one training run per arm: interval for these runs only, no test")}


def _complete_patients(pairs, rows_of, key: str) -> set:
    """Patients with a finite ``key`` in every run of both arms; the (patient, value) table per
    run is otherwise incomplete, which the paired comparison does not accept."""
    keep = None
    for _, base, other in pairs:
        for cell in (base, other):
            ok = {r["patient"] for r in rows_of(cell) if math.isfinite(r.get(key, NAN))}
            keep = ok if keep is None else keep & ok
    return keep or set()


def sensitivity_rows(cells: list[dict[str, Any]], endpoint) -> list[dict[str, Any]]:
    """Per contrast, structure and distance metric: failures left out (and patients without any
    measured image with them) against failures scored at the study's worst measured value of
    that metric (``worst_value``)."""
    by_key = cells_by_key(cells)
    units = sorted({c.get(DISTANCE_COLUMN, MM) for c in cells})
    if len(units) != 1:
        return []
    rows = []
    for s in STRUCTURES:
        for m in ("hd", "mad"):
            key = f"{s}_{m}"
            values = [r.get(key, NAN) for c in cells for r in c.get("per_image", [])]
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            worst = max(finite)
            for tf, sf, arm in contrasts(by_key):
                pairs = _pairs(by_key, tf, sf, arm)
                if not pairs:
                    continue
                per_image = lambda c: c.get("per_image", [])  # noqa: E731
                measured = _complete_patients(pairs, per_image, key)  # a patient with no finite value drops out
                dropped = _compare(_long(pairs, per_image, key, keep=measured), endpoint) if measured else {}
                scored = _compare(_long(pairs, per_image, key, worst=worst), endpoint)
                n_fail = [sum(1 for r in per_image(c) if not math.isfinite(r.get(key, NAN)))
                          for _, b, o in pairs for c in (b, o)]
                rows.append({"train_fraction": tf, "synthetic_fraction": sf, "exposure": arm, "structure": s,
                             "metric": m, DISTANCE_COLUMN: units[0], "worst_value": worst,
                             "failures_none": sum(n_fail[0::2]), "failures_synthetic": sum(n_fail[1::2]),
                             "estimate_failures_dropped": dropped.get("estimate", NAN),
                             "estimate_failures_worst": scored["estimate"], "ci_low_worst": scored["ci_low"],
                             "ci_high_worst": scored["ci_high"], "pvalue_worst": scored["pvalue"],
                             "note": scored["note"], "role": "secondary"})
    return rows


def clinical_rows(cells: list[dict[str, Any]], endpoint) -> list[dict[str, Any]]:
    """Per contrast: EF absolute error and EDV / ESV bias, synthetic minus none, on the patients
    every compared run measured (``n_patients``; ``n_left_out`` the others)."""
    by_key = cells_by_key(cells)
    rows = []
    for tf, sf, arm in contrasts(by_key):
        pairs = _pairs(by_key, tf, sf, arm)
        clinical = lambda c: c.get("clinical", [])  # noqa: E731
        everyone = {r["patient"] for _, b, o in pairs for c in (b, o) for r in clinical(c)}
        for key, (title, unit) in CLINICAL.items():
            keep = _complete_patients(pairs, clinical, key)
            if not pairs or not keep:
                continue
            res = _compare(_long(pairs, clinical, key, keep=keep), endpoint)
            rows.append({"train_fraction": tf, "synthetic_fraction": sf, "exposure": arm, "index": key,
                         "unit": unit, "n_patients": len(keep), "n_left_out": len(everyone - keep), **res,
                         "role": "secondary"})
    return rows


def _n(v: float, digits: int = 2, sign: bool = True) -> str:
    return "–" if not math.isfinite(v) else (f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}")


def _pv(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


def secondary_lines(failures: list[dict], sensitivity: list[dict], clinical: list[dict], simpson: str) -> list[str]:
    """The "Failures", "HD / MAD sensitivity" and "EF and volumes" sections of report.md."""
    lines = ["## Failures (secondary, exploratory)", ""]
    if failures:
        lines += ["Counted, not dropped: an image fails a structure when it is empty (HD/MAD undefined); a patient's "
                  "EF fails when Simpson's method cannot measure the predicted masks. Exact sign test over patients "
                  "(patients with more failures under one arm against the other; failures.csv).", "",
                  "| train fraction | arm | failure | counted per | failures (none / synthetic) | rate (none / synthetic) | p |",
                  "|---|---|---|---|---|---|---|"]
        for r in failures:
            lines.append(f"| {r['train_fraction']:g} | {arm_text(r['synthetic_fraction'], r['exposure'])} | "
                         f"{FAILURE_TITLES[r['failure']]} | {r['unit_of_count']} | {r['failures_none']} / "
                         f"{r['failures_synthetic']} of {r['n_pairs']} | {100 * r['rate_none']:.1f} % / "
                         f"{100 * r['rate_synthetic']:.1f} % | {_pv(r['pvalue'])} |")
    else:
        lines.append("- No contrast: no failure counts.")
    lines += ["", "## HD / MAD with failures scored (sensitivity, secondary)", ""]
    if sensitivity:
        lines += ["Leaving failed images out favours the arm that fails more; here every failure is also scored at "
                  "the worst value of that metric measured anywhere in the study (sensitivity.csv).", "",
                  "| train fraction | arm | structure | metric | worst value | failures (none / synthetic) | "
                  "difference, failures left out | difference, failures = worst [CI] | p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sensitivity:
            lines.append(f"| {r['train_fraction']:g} | {arm_text(r['synthetic_fraction'], r['exposure'])} | "
                         f"{STRUCTURE_TITLES[r['structure']]} | {r['metric'].upper()} | {_n(r['worst_value'], sign=False)} "
                         f"{r[DISTANCE_COLUMN]} | {r['failures_none']} / {r['failures_synthetic']} | "
                         f"{_n(r['estimate_failures_dropped'])} | {_n(r['estimate_failures_worst'])} "
                         f"[{_n(r['ci_low_worst'])}, {_n(r['ci_high_worst'])}] | {_pv(r['pvalue_worst'])} |")
    else:
        lines.append("- Not computed (no contrast, or distance units differ between cells).")
    lines += ["", "## EF and volumes (secondary)", ""]
    if clinical:
        lines += [f"Per patient against the ground-truth masks under the same Simpson convention (`{simpson}`), "
                  "synthetic minus none, by the primary method on the patients every compared run measured "
                  "(clinical.csv of each cell; study: clinical_tests.csv).", "",
                  "| train fraction | arm | index | patients (left out) | none | synthetic | difference [CI] | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in clinical:
            title, unit = CLINICAL[r["index"]]
            lines.append(f"| {r['train_fraction']:g} | {arm_text(r['synthetic_fraction'], r['exposure'])} | "
                         f"{title} ({unit}) | {r['n_patients']} ({r['n_left_out']}) | "
                         f"{_n(r.get('mean_none', NAN), sign=False)} | {_n(r.get('mean_synthetic', NAN), sign=False)} | "
                         f"{_n(r['estimate'])} [{_n(r['ci_low'])}, {_n(r['ci_high'])}] | {_pv(r['pvalue'])} |")
    else:
        lines.append("- No EF measured by every compared run (or no contrast).")
    return lines + [""]


def quality_breakdown_lines(cells: list[dict[str, Any]]) -> list[str]:
    """LV endo Dice per image quality (CAMUS' Good / Medium / Poor) for every arm, mean over
    its runs' test images (n images), as the CAMUS paper breaks results down."""
    qualities = [q for q in QUALITIES if any(r.get("quality") == q for c in cells for r in c.get("per_image", []))]
    if not qualities:
        return []
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["train_fraction"], c["synthetic_fraction"], arm_of(c)), []).append(c)
    lines = ["## By image quality (secondary)", "",
             "LV endo Dice of the test images of each image quality, mean over the arm's training runs (images).", "",
             "| train fraction | arm | " + " | ".join(qualities) + " |", "|---|---|" + "---|" * len(qualities)]
    for (tf, sf, arm), group in sorted(groups.items()):
        parts = []
        for q in qualities:
            vals = [r["lv_endo_dice"] for c in group for r in c.get("per_image", [])
                    if r.get("quality") == q and math.isfinite(r.get("lv_endo_dice", NAN))]
            parts.append(f"{sum(vals) / len(vals):.3f} ({len(vals)})" if vals else "–")
        name = arm_text(sf, arm) if sf > 0 else "no synthetic images"
        lines.append(f"| {tf:g} | {name} | " + " | ".join(parts) + " |")
    return lines + [""]
