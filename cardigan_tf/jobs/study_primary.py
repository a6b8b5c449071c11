"""The study's primary endpoint: one metric of one structure, each synthetic fraction against none.

The endpoint is declared in the study config (:class:`cardigan_tf.configs.study.PrimaryEndpoint`).
Per (training fraction, synthetic fraction > 0) the cells of that synthetic fraction and of
synthetic fraction 0 at the same training fraction give a long per-image table (arm = synthetic
fraction, seed, patient, value); :func:`cardigan_tf.stats_hierarchical.hierarchical_paired_comparison`
averages images within (seed, patient) and resamples patients (paired) and seeds. Holm runs over
these contrasts only; the minimal detectable difference says what "not significant" rules out.
A contrast is tested only with at least two seeds per arm (one seed leaves the training-run
variance unknown: a difference between two runs is not an effect of synthetic data) and
:data:`MIN_PATIENTS` test patients; otherwise its estimate and interval are reported untested.
Where the per-image rows carry ``<structure>_missing`` flags, the failure counts of both arms are
compared per patient (:func:`cardigan_tf.stats_failures.failure_sign_test`), a secondary line.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cardigan_tf import stats
from cardigan_tf.labels import STRUCTURE_TITLES
from cardigan_tf.stats_failures import failure_sign_test
from cardigan_tf.stats_hierarchical import hierarchical_paired_comparison
from cardigan_tf.stats_power import detectable_difference
from cardigan_tf.units import DISTANCE_COLUMN, MM, joined

METRIC_NAMES = {"dice": "Dice", "hd": "HD", "mad": "MAD"}
#: below this many test patients the primary contrast is estimated but not tested (as the secondary table)
MIN_PATIENTS = stats.MIN_PAIRS_FOR_005
NAN = float("nan")


def arm_of(cell: dict[str, Any]) -> str:
    """A cell's exposure arm: "" without synthetic data; "replace" for a cell saved before the
    arms existed (it kept the steps of the cell without synthetic data)."""
    return "" if cell["synthetic_fraction"] == 0 else (cell.get("exposure") or "replace")


def cells_by_key(cells: list[dict[str, Any]]) -> dict[tuple[float, float, str, int], dict[str, Any]]:
    """(training fraction, synthetic fraction, arm, seed) -> cell."""
    return {(c["train_fraction"], c["synthetic_fraction"], arm_of(c), c["seed"]): c for c in cells}


def contrasts(by_key: dict) -> list[tuple[float, float, str]]:
    """(training fraction, synthetic fraction > 0, arm) of every contrast against fraction 0."""
    return sorted({(t, f, a) for t, f, a, _ in by_key if f > 0}, key=lambda k: (k[0], k[1], k[2]))


def _arm_cells(by_key: dict, tf: float, sf: float, arm: str, paired_seeds: bool) -> tuple[dict, dict]:
    """Seed -> cell of synthetic fraction 0 and of ``sf`` in ``arm`` at ``tf`` (common seeds when paired)."""
    base = {seed: c for (t, f, _, seed), c in by_key.items() if t == tf and f == 0.0}
    other = {seed: c for (t, f, a, seed), c in by_key.items() if t == tf and f == sf and a == arm}
    if paired_seeds:
        common = set(base) & set(other)
        base, other = ({s: c for s, c in arm.items() if s in common} for arm in (base, other))
    return base, other


def _long_table(arms: dict[float, dict], key: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "seed": seed, "patient": r["patient"], "value": r.get(key, NAN)}
            for arm, by_seed in arms.items() for seed, cell in sorted(by_seed.items())
            for r in cell["per_image"]]


def failure_flags(pairs, endpoint: str) -> tuple[list, list, list]:
    """Patients and 0/1 failure flags of both arms of ``pairs`` ((seed, cell without synthetic
    data, cell of the contrast)): ``endpoint`` a structure (its ``<structure>_missing`` flag,
    paired by image) or "ef" (EF not measurable, paired by patient)."""
    patients, fa, fb = [], [], []
    for _, base, other in pairs:
        if endpoint == "ef":
            ref = {r["patient"]: r for r in base.get("clinical", [])}
            items = [(r["patient"], ref[r["patient"]]["ef_failed"], r["ef_failed"])
                     for r in other.get("clinical", []) if r["patient"] in ref]
        else:
            key = f"{endpoint}_missing"
            ref = {(r["patient"], r["view"], r["phase"]): r for r in base.get("per_image", []) if key in r}
            items = [(r["patient"], ref[i][key], r[key]) for r in other.get("per_image", []) if key in r
                     for i in [(r["patient"], r["view"], r["phase"])] if i in ref]
        for p, a, b in items:
            patients.append(p)
            fa.append(a)
            fb.append(b)
    return patients, fa, fb


def _failures(base: dict, other: dict, structure: str) -> dict[str, Any]:
    """Failure-count comparison of the image pairs (same seed, patient, view, phase) of both arms."""
    pairs = [(seed, base[seed], other[seed]) for seed in sorted(set(base) & set(other))]
    patients, fail_a, fail_b = failure_flags(pairs, structure)
    if not patients:
        return {"failure_rate_none": NAN, "failure_rate_synthetic": NAN, "failure_pvalue": NAN,
                "failure_method": "", "failure_note": "no per-image failure flags"}
    res = failure_sign_test(patients, fail_a, fail_b)
    return {"failure_rate_none": res["rate_a"], "failure_rate_synthetic": res["rate_b"],
            "failure_patients_more_none": res["patients_more_a"],
            "failure_patients_more_synthetic": res["patients_more_b"],
            "failure_pvalue": res["pvalue"], "failure_method": res["method"], "failure_note": res["note"]}


def _contrast(base: dict, other: dict, sf: float, endpoint) -> dict[str, Any]:
    """One contrast's estimate, interval, p-value, variance components and detectable difference."""
    key = f"{endpoint.structure}_{endpoint.metric}"
    units = sorted({c.get(DISTANCE_COLUMN, MM) for arm in (base, other) for c in arm.values()})
    empty = {"estimate": NAN, "ci_low": NAN, "ci_high": NAN, "pvalue": NAN, "se": NAN, "df": NAN,
             "seed_sd_none": NAN, "seed_sd_synthetic": NAN, "patient_sd": NAN, "mdd": NAN,
             "n_patients": 0, "n_seeds_none": len(base), "n_seeds_synthetic": len(other),
             "method": "", "training_variance_estimated": ""}
    if endpoint.metric != "dice" and len(units) > 1:
        return {**empty, DISTANCE_COLUMN: joined(units),
                "note": f"distance units differ between cells ({', '.join(units)}): not compared"}
    try:
        res = hierarchical_paired_comparison(_long_table({0.0: base, sf: other}, key), (0.0, sf),
                                             paired_seeds=endpoint.paired_seeds, level=1 - endpoint.alpha,
                                             n_boot=endpoint.n_boot, rng_seed=endpoint.rng_seed)
    except ValueError as exc:
        return {**empty, DISTANCE_COLUMN: joined(units), "note": str(exc)}
    notes = [res["note"]] if res["note"] else []
    dropped = sum(res["n_dropped"].values())
    if dropped:
        notes.append(f"{dropped} image(s) with an undefined value left out")
    tested = res["training_variance_estimated"] and res["n_patients"] >= MIN_PATIENTS
    if not res["training_variance_estimated"]:
        notes.append("the interval holds for these two training runs only, not for retrained U-Nets: no test")
    if res["n_patients"] < MIN_PATIENTS:
        notes.append(f"{res['n_patients']} test patient(s), fewer than {MIN_PATIENTS}: interval for "
                     "interpretation only, no test")
    pvalue = res["pvalue"] if tested else NAN
    finite_se = tested and math.isfinite(res["se"]) and res["se"] > 0 and math.isfinite(res["df"])
    mdd = detectable_difference(res, alpha=endpoint.alpha, power=endpoint.power)["mdd"] if finite_se else NAN
    return {
        DISTANCE_COLUMN: joined(units),
        "estimate": res["estimate"], "ci_low": res["ci_low"], "ci_high": res["ci_high"], "pvalue": pvalue,
        "se": res["se"], "df": res["df"], "seed_sd_none": res["seed_sd"][0.0], "seed_sd_synthetic": res["seed_sd"][sf],
        "patient_sd": res["patient_sd"], "mdd": mdd, "n_patients": res["n_patients"],
        "n_seeds_none": res["n_seeds"][0.0], "n_seeds_synthetic": res["n_seeds"][sf], "method": res["method"],
        "training_variance_estimated": "yes" if res["training_variance_estimated"] else "no",
        "note": "; ".join(notes),
    }


def primary_rows(cells: list[dict[str, Any]], endpoint) -> list[dict[str, Any]]:
    """One row per (training fraction, synthetic fraction > 0, exposure arm) contrast of the primary endpoint.

    ``cells``: result dicts with ``train_fraction``, ``synthetic_fraction``, ``seed`` and
    ``per_image`` rows (:func:`cardigan_tf.jobs.study_report.attach_per_image`); ``endpoint``: a
    :class:`~cardigan_tf.configs.study.PrimaryEndpoint`. Columns: the contrast, the endpoint,
    ``estimate`` (synthetic minus none) with its ``1 - alpha`` interval, ``pvalue``,
    ``pvalue_holm`` over the ``n_contrasts`` tests of this family, ``significant`` ("yes"/"no";
    empty without a test), ``mdd`` at ``power``, the variance components, the failure counts and
    ``distance_unit`` (of the cells' HD / MAD, whatever the endpoint's metric).
    """
    by_key = cells_by_key([c for c in cells if "per_image" in c])
    rows = []
    for tf, sf, arm in contrasts(by_key):
        base, other = _arm_cells(by_key, tf, sf, arm, endpoint.paired_seeds)
        if not base or not other:
            continue
        rows.append({"train_fraction": tf, "synthetic_fraction": sf, "exposure": arm, "role": "primary",
                     "structure": endpoint.structure, "metric": endpoint.metric,
                     **_contrast(base, other, sf, endpoint), **_failures(base, other, endpoint.structure),
                     **_exposure(base, other)})
    adjusted = stats.holm([r["pvalue"] for r in rows])
    n_tests = sum(math.isfinite(r["pvalue"]) for r in rows)
    for r, p in zip(rows, adjusted):
        r.update(pvalue_holm=p, n_contrasts=n_tests, alpha=endpoint.alpha, power=endpoint.power,
                 paired_seeds="yes" if endpoint.paired_seeds else "no",
                 significant="" if not math.isfinite(p) else ("yes" if p <= endpoint.alpha else "no"))
    return rows


def _exposure(base: dict, other: dict) -> dict[str, Any]:
    """Mean real and synthetic samples seen by the training runs of both arms of a contrast."""
    def mean(arm, key):
        vals = [c.get(key) for c in arm.values() if c.get(key) is not None]
        return sum(vals) / len(vals) if vals else NAN

    return {"real_seen_none": mean(base, "real_samples_seen"), "real_seen_synthetic": mean(other, "real_samples_seen"),
            "synthetic_seen": mean(other, "synthetic_samples_seen"),
            "steps_none": mean(base, "steps"), "steps_synthetic": mean(other, "steps")}


def arm_text(sf: float, arm: str) -> str:
    """"synthetic fraction 0.5 (add)"."""
    return f"synthetic fraction {sf:g}" + (f" ({arm})" if arm else "")


def _num(v: float, metric: str) -> str:
    return "–" if not math.isfinite(v) else (f"{v:+.4f}" if metric == "dice" else f"{v:+.2f}")


def _count(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.0f}"


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")


def _df(df: float) -> str:
    return "–" if not math.isfinite(df) else f"{df:.1f}"


def _p_is(p: float) -> str:
    text = _p(p)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def _method(method: str) -> str:
    """A contrast's method string without its own degrees of freedom (the table lists them)."""
    return re.sub(r"(Satterthwaite df) [0-9.]+", r"\1 (per contrast: table)", method)


def _unit(r: dict[str, Any]) -> str:
    """" px" / " mm" after a distance, "" after a Dice."""
    return f" {r[DISTANCE_COLUMN]}" if r["metric"] != "dice" and r.get(DISTANCE_COLUMN) else ""


def _sentence(r: dict[str, Any]) -> str:
    m, unit = r["metric"], _unit(r)
    head = (f"- {100 * r['train_fraction']:g}% of the training patients, "
            f"{arm_text(r['synthetic_fraction'], r.get('exposure', ''))}: {_num(r['estimate'], m)} [{_num(r['ci_low'], m)}, {_num(r['ci_high'], m)}]{unit}")
    if not math.isfinite(r["pvalue"]):
        return f"{head}; no test ({r['note'] or 'no comparison possible'})."
    verdict = "significant" if r["significant"] == "yes" else "not significant"
    mdd = (f"; the design could detect {_num(r['mdd'], m).lstrip('+')}{unit} with {100 * r['power']:g} % power"
           if math.isfinite(r["mdd"]) else "")
    failures = ""
    if math.isfinite(r.get("failure_pvalue", NAN)):
        failures = (f" Failures (empty structure, secondary): {100 * r['failure_rate_none']:.1f} % without, "
                    f"{100 * r['failure_rate_synthetic']:.1f} % with synthetic images, sign test over patients "
                    f"p {_p_is(r['failure_pvalue'])}.")
    note = f" ({r['note']})" if r["note"] else ""
    return f"{head}, p {_p_is(r['pvalue'])} (Holm {_p(r['pvalue_holm'])}): {verdict}{mdd}{note}.{failures}"


def primary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The "Primary endpoint" section of report.md."""
    if not rows:
        return ["## Primary endpoint", "", "- No synthetic fraction > 0 was run beside fraction 0: no contrast.", ""]
    r0 = rows[0]
    name = f"{STRUCTURE_TITLES[r0['structure']]} {METRIC_NAMES[r0['metric']]}"
    level = f"{100 * (1 - r0['alpha']):g} %"
    methods = sorted({_method(r["method"]) for r in rows if r["method"]})
    lines = [
        "## Primary endpoint",
        "",
        f"Declared in the study config before the results (`primary`): per-patient mean {name} over views and "
        f"phases, each synthetic fraction in each exposure arm against none at the same training fraction "
        f"(synthetic minus none; `add`: the same real samples as the cell without synthetic data plus the "
        f"synthetic ones, more steps; `replace`: the same steps, synthetic samples in real ones' places), "
        f"seeds {'paired (seed k of both arms trains on the same patients)' if r0['paired_seeds'] == 'yes' else 'independent'}. "
        f"Method: {'; '.join(methods) or '–'}. The {level} interval excludes 0 exactly when p < {r0['alpha']:g}; "
        f"Holm corrects over the {r0['n_contrasts'] or 'no'} tested contrast(s) of this family only; \"significant\" means "
        f"Holm-adjusted p <= {r0['alpha']:g}. MDD: the smallest true difference this design detects with "
        f"{100 * r0['power']:g} % power. Everything after this section is secondary (primary.csv holds this table).",
        "",
        f"| train fraction | synthetic fraction | arm | real samples seen (none / synthetic) | patients | "
        f"seeds (none / synthetic) | difference{f' ({_unit(r0).strip()})' if _unit(r0) else ''} [{level} CI] | "
        "df | p | p (Holm) | MDD | seed SD (none / synthetic) | patient SD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metric"]
        lines.append(f"| {r['train_fraction']:g} | {r['synthetic_fraction']:g} | {r.get('exposure', '')} | "
                     f"{_count(r.get('real_seen_none', NAN))} / {_count(r.get('real_seen_synthetic', NAN))} | {r['n_patients']} | "
                     f"{r['n_seeds_none']} / {r['n_seeds_synthetic']} | {_num(r['estimate'], m)} "
                     f"[{_num(r['ci_low'], m)}, {_num(r['ci_high'], m)}] | {_df(r['df'])} | {_p(r['pvalue'])} | {_p(r['pvalue_holm'])} | "
                     f"{_num(r['mdd'], m).lstrip('+')} | {_num(r['seed_sd_none'], m).lstrip('+')} / "
                     f"{_num(r['seed_sd_synthetic'], m).lstrip('+')} | {_num(r['patient_sd'], m).lstrip('+')} |")
    return lines + ["", *(_sentence(r) for r in rows), ""]
