"""Calibration of the two-arm comparisons on simulated studies of known truth.

Prints the tables of docs/statistics.md: for each regime of cardigan_tf.stats_simulation, the
share of studies whose test rejects at alpha 0.05 (the false-positive rate under a null, the
power under an effect) and the coverage of the 95 % interval, for

- the hierarchical comparison (cardigan_tf.stats_hierarchical.compare_cell_means),
- a percentile interval of the same bootstrap replicates (p by inverting it),
- the same bootstrap recomputing the statistic on a table resampled at both levels at once
  (patients x seeds, seeds inflated by sqrt(S / (S - 1)) within patient), t interval,
- the seed-averaged test (cardigan_tf.stats.paired_patient_test: per-patient means over seeds,
  percentile bootstrap over patients, Wilcoxon signed-rank p-value).

    python -m experiments.stats_calibration [--studies 4000] [--boot 2000]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
from scipy import stats as sps

from cardigan_tf.stats import paired_patient_test
from cardigan_tf.stats_hierarchical import compare_cell_means
from cardigan_tf.stats_power import minimal_detectable_difference
from cardigan_tf.stats_simulation import REGIMES, simulate_images

ALPHA = 0.05
OLD_STUDIES = 1000
CHUNK = 250


def percentile_rejects(reps: np.ndarray, effect: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    return float(np.mean((lo > 0) | (hi < 0))), float(np.mean((lo <= effect) & (effect <= hi)))


def two_level_rejects(cells_a, cells_b, res, n_boot, rng, effect) -> tuple[float, float]:
    """Resample patients (shared) and seeds per arm, recompute the difference of the resampled
    cells; t interval on its SD with the comparison's df."""
    reps = []
    for start in range(0, cells_a.shape[0], CHUNK):
        a, b = cells_a[start:start + CHUNK], cells_b[start:start + CHUNK]
        n, s, p = a.shape
        u = rng.multinomial(p, np.full(p, 1 / p), size=(n, n_boot)) / p
        out = 0.0
        for m, sign in ((b, 1.0), (a, -1.0)):
            patient_mean = m.mean(axis=1, keepdims=True)
            inflated = patient_mean + np.sqrt(s / (s - 1)) * (m - patient_mean)
            w = rng.multinomial(s, np.full(s, 1 / s), size=(n, n_boot)) / s
            out = out + sign * np.einsum("nbs,nsp,nbp->nb", w, inflated, u)
        reps.append(out)
    se = np.concatenate(reps).std(axis=1, ddof=1)
    half = sps.t.isf(ALPHA / 2, res["df"]) * se
    lo, hi = res["estimate"] - half, res["estimate"] + half
    return float(np.mean((lo > 0) | (hi < 0))), float(np.mean((lo <= effect) & (effect <= hi)))


def old_rejects(cells_a, cells_b, n_boot, effect) -> tuple[float, float, float]:
    d = cells_b.mean(axis=1) - cells_a.mean(axis=1)
    res = [paired_patient_test(x, n_boot=n_boot, seed=i) for i, x in enumerate(d[:OLD_STUDIES])]
    p = float(np.mean([r["pvalue"] < ALPHA for r in res]))
    ci = float(np.mean([r["ci_low"] > 0 or r["ci_high"] < 0 for r in res]))
    cover = float(np.mean([r["ci_low"] <= effect <= r["ci_high"] for r in res]))
    return p, ci, cover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--boot", type=int, default=2000)
    args = parser.parse_args()
    settings = [(name, design, 0.0, False) for name, design in REGIMES.items()]
    settings += [("shared-seeds, paired seeds", REGIMES["shared-seeds"], 0.0, True),
                 ("reference, 30 patients", replace(REGIMES["reference"], n_patients=30), 0.0, False),
                 ("reference, 5 seeds", replace(REGIMES["reference"], n_seeds=5), 0.0, False),
                 ("reference, 1 seed", replace(REGIMES["reference"], n_seeds=1), 0.0, False),
                 ("reference, effect +0.01", REGIMES["reference"], 0.01, False),
                 ("reference, effect +0.015", REGIMES["reference"], 0.015, False)]
    print(f"{args.studies} studies per row ({OLD_STUDIES} for the seed-averaged test), {args.boot} bootstrap "
          "replicates; rejection rate at alpha 0.05 / coverage of the 95 % interval\n")
    print("| setting | df | hierarchical | percentile | two-level recomputed | seed-averaged Wilcoxon "
          "| seed-averaged interval |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, design, effect, paired) in enumerate(settings):
        rng = np.random.default_rng(100 + i)
        a, b = simulate_images(design, args.studies, rng, effect)
        cells_a, cells_b = a.mean(axis=-1), b.mean(axis=-1)
        res = compare_cell_means(cells_a, cells_b, paired_seeds=paired, n_boot=args.boot, rng_seed=rng,
                                 return_replicates=True)
        new = (float(np.mean(res["pvalue"] < ALPHA)),
               float(np.mean((res["ci_low"] <= effect) & (effect <= res["ci_high"]))))
        perc = percentile_rejects(res["replicates"], effect)
        two = two_level_rejects(cells_a, cells_b, res, args.boot // 2, rng, effect) \
            if design.n_seeds > 1 and not paired else None
        old_p, old_ci, old_cover = old_rejects(cells_a, cells_b, 1000, effect)
        cell = "{:.3f} / {:.3f}".format
        print(f"| {name} | {np.median(res['df']):.1f} | {cell(*new)} | {cell(*perc)} | "
              f"{cell(*two) if two else '-'} | {old_p:.3f} | {cell(old_ci, old_cover)} |")
        if name == "reference":
            se, df = float(np.median(res["se"])), float(np.median(res["df"]))
            mdd_t, mdd_z = minimal_detectable_difference(se, df=df), minimal_detectable_difference(se)
    print()
    for label, mdd in (("Student-t", mdd_t), ("normal", mdd_z)):
        rng = np.random.default_rng(7)
        a, b = simulate_images(REGIMES["reference"], args.studies, rng, mdd)
        res = compare_cell_means(a.mean(axis=-1), b.mean(axis=-1), n_boot=args.boot, rng_seed=rng)
        print(f"reference design, MDD with {label} quantiles {mdd:.4f}: power {np.mean(res['pvalue'] < ALPHA):.3f}")


if __name__ == "__main__":
    main()
