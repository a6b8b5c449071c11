"""Comparisons that count patients and training runs (issue 19): the Wilcoxon method label
against what scipy ran; the hierarchical bootstrap calibrated on simulated studies of known
truth (false-positive rate, power, coverage; the seed-averaged test beside it); the interval and
p-value as one statement; the one-seed reduction; the detectable difference and the failure-rate
tests against hand values and by simulation. Every simulation has a fixed seed."""

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
from scipy import stats as sps

from cardigan_tf.stats import paired_patient_test, wilcoxon_method, wilcoxon_paired, wilcoxon_test
from cardigan_tf.stats_failures import failure_sign_test, mcnemar_exact
from cardigan_tf.stats_hierarchical import NOTE_ONE_SEED, compare_cell_means, hierarchical_paired_comparison
from cardigan_tf.stats_power import (
    detectable_difference,
    minimal_detectable_difference,
    observed_detectable_difference,
)
from cardigan_tf.stats_simulation import REGIMES, long_table, simulate_images

#: simulated studies per setting and bootstrap replicates per study (the calibration tests)
N_STUDIES = 1000
N_BOOT = 1000
ALPHA = 0.05
#: studies for the seed-averaged test (one call each)
N_OLD = 400


def test_wilcoxon_label_is_the_method_scipy_ran():
    # 14 pairs, one zero: scipy counts the zero, so 14 > 13 and it uses the normal approximation
    # (13 non-zero differences would have allowed exhaustive permutations)
    d = np.r_[0.0, 0.001 * np.arange(1, 14)]
    res = paired_patient_test(d, n_boot=200)
    assert res["method"] == "normal approximation"
    assert res["pvalue"] == pytest.approx(sps.wilcoxon(d, method="asymptotic").pvalue, rel=1e-12)
    assert res["pvalue"] == pytest.approx(sps.wilcoxon(d).pvalue, rel=1e-12)
    assert res["pvalue"] != pytest.approx(sps.wilcoxon(d[1:], method="exact").pvalue, rel=1e-3)
    # 7 pairs with a zero: all 2**7 sign flips
    seven = paired_patient_test([0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06], n_boot=200)
    assert seven["method"] == "exact permutation (ties or zeros)"
    # no zeros, no ties: exact; 51 pairs: normal approximation
    assert paired_patient_test(0.001 * np.arange(1, 7), n_boot=200)["method"] == "exact"
    assert paired_patient_test(0.001 * np.arange(1, 52), n_boot=200)["method"] == "normal approximation"
    a = np.linspace(0.8, 0.9, 20)
    assert wilcoxon_paired(a, a - 0.001 * np.arange(20))["method"] == "normal approximation"  # one zero, n 20
    assert wilcoxon_paired(a, a - 0.001 * np.arange(1, 21))["method"] == "exact"
    assert wilcoxon_paired(a[:3], a[:3] - 0.01)["method"] == ""  # too few: no test ran


def test_wilcoxon_rule_matches_scipy_auto():
    """The explicit method reproduces scipy's own choice: a scipy that changes its rule fails here."""
    rng = np.random.default_rng(19)
    for n in (6, 10, 14, 50, 51):
        for kind in ("plain", "zeros", "ties"):
            d = np.round(rng.normal(0.01, 0.02, n), 6)
            if kind == "zeros":
                d[:2] = 0.0
            elif kind == "ties":
                d[1] = -d[0]
            (res, method), auto = wilcoxon_test(d), sps.wilcoxon(d)
            assert res.pvalue == auto.pvalue and res.statistic == auto.statistic
            expected = ("asymptotic" if n > 50 else "exact" if kind == "plain"
                        else "permutation" if n <= 13 else "asymptotic")  # scipy's limits: 50, 13
            assert method == wilcoxon_method(d) == expected, (n, kind)


@lru_cache(maxsize=None)
def _simulated(regime: str, effect: float = 0.0, paired_seeds: bool = False, n_seeds: int | None = None):
    """Cell means of N_STUDIES simulated studies and the hierarchical comparison of each."""
    design = REGIMES[regime] if n_seeds is None else replace(REGIMES[regime], n_seeds=n_seeds)
    a, b = simulate_images(design, N_STUDIES, np.random.default_rng(2024), effect)
    cells_a, cells_b = a.mean(axis=-1), b.mean(axis=-1)
    res = compare_cell_means(cells_a, cells_b, paired_seeds=paired_seeds, n_boot=N_BOOT, rng_seed=7)
    return cells_a, cells_b, res


def _rejects(res) -> float:
    return float(np.mean(res["pvalue"] < ALPHA))


def _covers(res, effect: float) -> float:
    return float(np.mean((res["ci_low"] <= effect) & (effect <= res["ci_high"])))


def _old_method(cells_a, cells_b) -> tuple[float, float]:
    """The seed-averaged test (per-patient means, patient bootstrap, Wilcoxon): the share of
    studies whose p < ALPHA and whose interval excludes 0."""
    d = cells_b.mean(axis=1) - cells_a.mean(axis=1)
    res = [paired_patient_test(x, n_boot=N_BOOT, seed=i) for i, x in enumerate(d[:N_OLD])]
    return (float(np.mean([r["pvalue"] < ALPHA for r in res])),
            float(np.mean([r["ci_low"] > 0 or r["ci_high"] < 0 for r in res])))


def test_false_positive_rate_and_coverage_under_the_null():
    _, _, res = _simulated("reference")
    assert res["n_patients"] == 10 and res["n_seeds_a"] == res["n_seeds_b"] == 3
    assert 0.02 <= _rejects(res) <= 0.08
    assert 0.92 <= _covers(res, 0.0) <= 0.98
    assert 3.0 < np.median(res["df"]) < 6.0  # two arms of 3 seeds: about 4 df
    assert res["method"].startswith("hierarchical bootstrap: patients (paired) x seeds within arm")


def test_power_and_coverage_with_a_known_effect():
    # the design's SE is about 0.0045 (seed part 2 (0.005^2 + 0.01^2 / 40) / 3, patient part
    # 2 0.01^2 / 12 / 10); +0.015 is 3.4 SE; with 4.7 df the noncentral t gives power 0.75, the
    # slightly conservative test reached 0.67 over 4000 studies
    effect = 0.015
    _, _, res = _simulated("reference", effect)
    assert 0.55 <= _rejects(res) <= 0.85
    assert 0.90 <= _covers(res, effect) <= 0.99
    assert np.mean(res["estimate"]) == pytest.approx(effect, abs=0.0005)


def test_seed_averaged_test_is_anti_conservative_when_seeds_vary():
    """Seeds averaged inside each patient hide the training-run variance: with seed effects it
    rejects a true null far more often than alpha; the hierarchical test stays calibrated."""
    for regime in ("reference", "seed-dominated"):
        cells_a, cells_b, res = _simulated(regime)
        old_p, old_ci = _old_method(cells_a, cells_b)
        assert old_p > 0.3 and old_ci > 0.3, regime
        assert 0.02 <= _rejects(res) <= 0.08, regime
    # without seed effects the old test is about right and the new one conservative (the image
    # noise enters both its seed part and its patient part)
    cells_a, cells_b, res = _simulated("seeds-stable")
    old_p, _ = _old_method(cells_a, cells_b)
    assert 0.02 <= old_p <= 0.08
    assert 0.005 <= _rejects(res) <= 0.05


def test_paired_seeds_calibrated_and_tighter_when_seeds_share_an_effect():
    _, _, paired = _simulated("shared-seeds", paired_seeds=True)
    _, _, unpaired = _simulated("shared-seeds")
    assert 0.02 <= _rejects(paired) <= 0.08
    assert _rejects(unpaired) <= 0.05  # valid, but blind to the pairing
    assert np.median(paired["se"]) < 0.6 * np.median(unpaired["se"])
    assert np.all(paired["df"] <= 2 + 9)  # S - 1 = 2 for the seeds, P - 1 = 9 for the patients
    assert "paired seeds" in paired["method"] and np.isfinite(paired["seed_diff_sd"]).all()


def test_interval_excludes_zero_exactly_when_p_below_alpha():
    cells_a, cells_b, _ = _simulated("reference", 0.01)
    for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        res = compare_cell_means(cells_a[:200], cells_b[:200], n_boot=200, rng_seed=3, level=level)
        excludes = (res["ci_low"] > 0) | (res["ci_high"] < 0)
        assert np.array_equal(excludes, res["pvalue"] < 1 - level)
        assert 0 < excludes.mean() < 1  # both outcomes occur at every level
    # at level 1 - p the interval ends at 0
    one = compare_cell_means(cells_a[0], cells_b[0], n_boot=500, rng_seed=3)
    edge = compare_cell_means(cells_a[0], cells_b[0], n_boot=500, rng_seed=3, level=1 - float(one["pvalue"]))
    assert min(abs(edge["ci_low"]), abs(edge["ci_high"])) == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_variance_is_the_seed_part_plus_the_patient_part():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.9, 0.01, (4, 12)), rng.normal(0.91, 0.01, (3, 12))
    res = compare_cell_means(a, b, n_boot=40000, rng_seed=1)
    x_a, x_b, d = a.mean(axis=1), b.mean(axis=1), b.mean(axis=0) - a.mean(axis=0)
    assert res["estimate"] == pytest.approx(d.mean()) == pytest.approx(x_b.mean() - x_a.mean())
    assert res["var_seeds"] == pytest.approx(x_a.var(ddof=1) / 4 + x_b.var(ddof=1) / 3)
    assert res["var_patients"] == pytest.approx(d.var(ddof=1) / 12)
    assert res["se"] ** 2 == pytest.approx(res["var_seeds"] + res["var_patients"], rel=0.02)
    parts = [(x_a.var(ddof=1) / 4, 3), (x_b.var(ddof=1) / 3, 2), (d.var(ddof=1) / 12, 11)]
    df = sum(v for v, _ in parts) ** 2 / sum(v * v / k for v, k in parts)
    assert res["df"] == pytest.approx(df)
    half = sps.t.ppf(0.975, df) * res["se"]
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert res["seed_sd_a"] == pytest.approx(x_a.std(ddof=1)) and res["patient_sd"] == pytest.approx(d.std(ddof=1))


def test_one_seed_is_a_patient_level_paired_bootstrap_and_says_so():
    rng = np.random.default_rng(6)
    a = rng.normal(0.9, 0.02, (1, 15))
    b = a + rng.normal(0.004, 0.006, (1, 15))
    res = compare_cell_means(a, b, n_boot=40000, rng_seed=2)
    d = (b - a)[0]
    assert res["training_variance_estimated"] is False and NOTE_ONE_SEED in res["method"]
    assert res["method"].startswith("patient-level paired bootstrap")
    assert res["df"] == 14 and res["var_seeds"] == 0 and math.isnan(res["seed_sd_a"])
    assert res["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(15), rel=0.01)
    t = sps.ttest_1samp(d, 0.0)  # the bootstrap-SE t interval is the one-sample t interval
    assert res["pvalue"] == pytest.approx(t.pvalue, rel=0.05)
    assert res["ci_low"] == pytest.approx(t.confidence_interval().low, rel=0.02)
    # one training run per arm cannot see the training-run variance: in the reference design it
    # rejects a true null about 45 % of the time
    _, _, single = _simulated("reference", n_seeds=1)
    assert _rejects(single) > 0.3


def test_table_matches_cell_means_and_hand_values():
    a, b = simulate_images(REGIMES["reference"], 1, np.random.default_rng(8), 0.01)
    table = long_table(a[0], b[0], arms=("real", "synthetic"))
    res = hierarchical_paired_comparison(table, ("real", "synthetic"), n_boot=3000, rng_seed=4)
    cells = compare_cell_means(a[0].mean(axis=-1), b[0].mean(axis=-1), n_boot=3000, rng_seed=4)
    for key in ("estimate", "ci_low", "ci_high", "pvalue", "se", "df", "patient_sd"):
        assert res[key] == pytest.approx(float(cells[key]), rel=1e-12), key
    assert res["seed_sd"]["real"] == pytest.approx(float(cells["seed_sd_a"]))
    assert res["n_patients"] == 10 and res["n_seeds"] == {"real": 3, "synthetic": 3}
    assert res["n_images"] == {"real": 120, "synthetic": 120} and res["level"] == 0.95
    rows = [dict(zip(table, values)) for values in zip(*table.values())]  # the same table as rows
    assert hierarchical_paired_comparison(rows, ("real", "synthetic"), n_boot=3000, rng_seed=4)["ci_low"] == res["ci_low"]
    assert hierarchical_paired_comparison(table, ("synthetic", "real"), n_boot=3000)["estimate"] == pytest.approx(
        -res["estimate"])
    # cells weigh images equally within (seed, patient), then seeds, then patients; NaN dropped
    tiny = [("A", 0, "p1", 0.80), ("A", 0, "p1", 0.90), ("A", 1, "p1", 0.70), ("A", 0, "p2", 0.60),
            ("A", 1, "p2", 0.70), ("A", 1, "p2", float("nan")), ("B", 5, "p1", 0.90), ("B", 6, "p1", 0.80),
            ("B", 5, "p2", 0.75), ("B", 6, "p2", 0.65), ("other", 0, "p1", 0.1)]
    rows = [dict(zip(("arm", "seed", "patient", "value"), r)) for r in tiny]
    res = hierarchical_paired_comparison(rows, ("A", "B"), n_boot=200)
    # A: p1 (0.85 + 0.70) / 2 = 0.775, p2 0.65; B: p1 0.85, p2 0.70 -> differences 0.075, 0.05
    assert res["estimate"] == pytest.approx(0.0625)
    assert res["arm_means"] == pytest.approx({"A": 0.7125, "B": 0.775})
    assert res["n_dropped"] == {"A": 1, "B": 0} and res["n_images"] == {"A": 5, "B": 4}
    assert res["seed_sd"]["B"] == pytest.approx(np.std([0.825, 0.725], ddof=1))


def test_bad_tables_name_what_is_missing():
    def rows(spec):
        return [{"arm": a, "seed": s, "patient": p, "value": 0.9 + 0.01 * i} for i, (a, s, p) in enumerate(spec)]

    full = [(a, s, p) for a in "AB" for s in (0, 1) for p in ("p1", "p2", "p3")]
    with pytest.raises(ValueError, match=r"arm 'B' has no seeds \(no rows"):
        hierarchical_paired_comparison(rows([r for r in full if r[0] == "A"]), ("A", "B"))
    with pytest.raises(ValueError, match=r"only in arm 'A': \['p3'\] \(1\), only in arm 'B': \[\] \(0\)"):
        hierarchical_paired_comparison(rows([r for r in full if r[0] == "A" or r[2] != "p3"]), ("A", "B"))
    with pytest.raises(ValueError, match=r"arm 'A' seed 1 has no finite value for patients \['p2'\]"):
        hierarchical_paired_comparison(rows([r for r in full if r != ("A", 1, "p2")]), ("A", "B"))
    with pytest.raises(ValueError, match=r"seeds per arm \{'A': 2, 'B': 1\}"):
        hierarchical_paired_comparison(rows([r for r in full if r[:2] != ("B", 1)]), ("A", "B"))
    shifted = [(a, s + (a == "B"), p) for a, s, p in full]
    with pytest.raises(ValueError, match=r"same seed labels.*only in arm 'A': \[0\].*only in arm 'B': \[2\]"):
        hierarchical_paired_comparison(rows(shifted), ("A", "B"), paired_seeds=True)
    assert hierarchical_paired_comparison(rows(shifted), ("A", "B"), n_boot=100)["n_seeds"] == {"A": 2, "B": 2}
    with pytest.raises(ValueError, match=r"row 0 lacks \['value'\]"):
        hierarchical_paired_comparison([{"arm": "A", "seed": 0, "patient": "p"}], ("A", "B"))
    with pytest.raises(ValueError, match="two different labels"):
        hierarchical_paired_comparison(rows(full), ("A", "A"))
    with pytest.raises(ValueError, match="at least 2 patients"):
        compare_cell_means(np.ones((2, 1)), np.ones((2, 1)))


def test_minimal_detectable_difference_by_hand():
    assert minimal_detectable_difference(0.004) == pytest.approx((1.959964 + 0.841621) * 0.004, rel=1e-6)
    assert minimal_detectable_difference(0.004, df=4) == pytest.approx((2.776445 + 0.940965) * 0.004, rel=1e-6)
    assert minimal_detectable_difference(0.01, alpha=0.01, power=0.9) == pytest.approx((2.575829 + 1.281552) * 0.01,
                                                                                          rel=1e-6)
    with pytest.raises(ValueError, match="alpha and power"):
        minimal_detectable_difference(0.01, power=1.0)
    fitted = {"arms": ("A", "B"), "n_patients": 10, "n_seeds": {"A": 3, "B": 3}, "se": 0.005, "df": 4.5,
              "seed_sd": {"A": 0.006, "B": 0.004}, "seed_diff_sd": float("nan"), "patient_sd": 0.01,
              "paired_seeds": False, "training_variance_estimated": True}
    same = detectable_difference(fitted)
    assert same["mdd"] == pytest.approx(observed_detectable_difference(0.005, 4.5)) and "bootstrap SE" in same["basis"]
    planned = detectable_difference(fitted, n_patients=40, n_seeds=5)
    parts = [(0.006 ** 2 / 5, 4), (0.004 ** 2 / 5, 4), (0.01 ** 2 / 40, 39)]
    se = math.sqrt(sum(v for v, _ in parts))
    df = sum(v for v, _ in parts) ** 2 / sum(v * v / k for v, k in parts)
    assert planned["se"] == pytest.approx(se) and planned["df"] == pytest.approx(df)
    assert planned["mdd"] == pytest.approx((sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * se)
    assert planned["n_seeds"] == {"A": 5, "B": 5} and planned["mdd"] < same["mdd"]
    one = {**fitted, "n_seeds": {"A": 1, "B": 1}, "training_variance_estimated": False}
    with pytest.raises(ValueError, match="one seed per arm"):
        detectable_difference(one, n_seeds=3)


def test_power_at_the_detectable_difference():
    """The MDD a study of the reference design reports (detectable_difference of its own
    comparison) is detected about as often as promised; the sum-of-quantiles MDD of the median SE
    falls short (0.71: the SE is an estimate with 4 df), and the normal-quantile MDD, blind to
    the 4 df of 3 + 3 seeds, would be detected less than half the time."""
    _, _, null = _simulated("reference")
    reported = [detectable_difference({"arms": ("A", "B"), "n_patients": 10, "n_seeds": {"A": 3, "B": 3},
                                       "se": se, "df": df})["mdd"]
                for se, df in zip(null["se"][:200], null["df"][:200])]
    mdd = round(float(np.median(reported)), 4)
    assert 0.015 <= mdd <= 0.020
    assert 0.74 <= _rejects(_simulated("reference", mdd)[2]) <= 0.88
    se, df = float(np.median(null["se"])), float(np.median(null["df"]))
    plain = round(minimal_detectable_difference(se, df=df), 4)
    assert plain < mdd and _rejects(_simulated("reference", plain)[2]) < 0.74
    mdd_normal = round(minimal_detectable_difference(se), 4)
    assert _rejects(_simulated("reference", mdd_normal)[2]) < 0.6


def test_observed_detectable_difference_by_hand():
    """Noncentral-t power of the median-unbiased SD: at 30 df the power at the MDD computed here is
    0.80 by scipy's noncentral t, and the SD factor is sqrt(30 / chi2 median)."""
    mdd = observed_detectable_difference(0.01, 30)
    sigma = 0.01 * math.sqrt(30 / sps.chi2.ppf(0.5, 30))
    crit = sps.t.isf(0.025, 30)
    assert sps.nct.sf(crit, 30, mdd / sigma) + sps.nct.cdf(-crit, 30, mdd / sigma) == pytest.approx(0.80, abs=2e-3)
    assert observed_detectable_difference(0.01, 4) > minimal_detectable_difference(0.01, df=4) * 1.09
    with pytest.raises(ValueError, match="must be > 0"):
        observed_detectable_difference(0.0, 4)


def test_mcnemar_exact_by_hand():
    # 8 images fail under B only, 2 under A only, 3 under both, 7 under neither
    fail_a = [0] * 8 + [1] * 2 + [1] * 3 + [0] * 7
    fail_b = [1] * 8 + [0] * 2 + [1] * 3 + [0] * 7
    res = mcnemar_exact(fail_a, fail_b)
    assert res["pvalue"] == pytest.approx(2 * sps.binom.cdf(2, 10, 0.5)) == pytest.approx(0.109375)
    assert (res["b_only"], res["a_only"], res["both"], res["neither"], res["n_pairs"]) == (8, 2, 3, 7, 20)
    assert res["rate_a"] == pytest.approx(5 / 20) and res["rate_b"] == pytest.approx(11 / 20)
    assert "exploratory" in res["method"] and res["note"] == ""
    assert mcnemar_exact(fail_b, fail_a)["pvalue"] == pytest.approx(0.109375)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["pvalue"] == 1.0 and mcnemar_exact([1, 0], [1, 0])["note"]
    assert mcnemar_exact([1, np.nan, 0], [0, 1, 0])["n_pairs"] == 2  # NaN: not scored
    assert mcnemar_exact([True] * 6, [False] * 6)["pvalue"] == pytest.approx(2 / 2 ** 6)
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([2, 0], [1, 0])
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([1, 0], [1])


def test_failure_sign_test_by_hand():
    # six patients with more failures under B, one tied, none with more under A: p = 2 / 2**6
    patient = [f"p{i}" for i in range(7) for _ in range(2)]
    fail_a = [0, 0] * 6 + [1, 0]
    fail_b = [1, 0] * 5 + [1, 1] + [0, 1]
    res = failure_sign_test(patient, fail_a, fail_b)
    assert (res["patients_more_b"], res["patients_more_a"], res["patients_tied"], res["n_patients"]) == (6, 0, 1, 7)
    assert res["pvalue"] == pytest.approx(0.03125) and res["rate_a"] == pytest.approx(1 / 14)
    assert res["rate_b"] == pytest.approx(8 / 14) and "sign test" in res["method"]
    with pytest.raises(ValueError, match="same length"):
        failure_sign_test(["p1"], [1, 0], [1, 0])


def test_failure_tests_false_positive_rate():
    """Same failure distribution in both arms. Independent images: McNemar holds alpha (exact,
    so at or below it). Failures clustered in patients (each patient has its own propensity under
    each arm): McNemar, counting images, rejects too often; the patient-level sign test holds."""
    rng = np.random.default_rng(11)
    n_studies, n_patients, n_images = 400, 30, 8
    flat = rng.random((2, n_studies, n_patients * n_images)) < 0.1
    mcnemar_flat = np.mean([mcnemar_exact(a, b)["pvalue"] < ALPHA for a, b in zip(*flat)])
    assert 0.005 <= mcnemar_flat <= ALPHA
    propensity = sps.norm.cdf(-1.4 + rng.normal(0.0, 1.0, (2, n_studies, n_patients, 1)))
    clustered = (rng.random((2, n_studies, n_patients, n_images)) < propensity).reshape(2, n_studies, -1)
    patient = np.repeat(np.arange(n_patients), n_images)
    mcnemar_clustered = np.mean([mcnemar_exact(a, b)["pvalue"] < ALPHA for a, b in zip(*clustered)])
    sign_clustered = np.mean([failure_sign_test(patient, a, b)["pvalue"] < ALPHA for a, b in zip(*clustered)])
    assert mcnemar_clustered > 0.15
    assert 0.005 <= sign_clustered <= ALPHA
