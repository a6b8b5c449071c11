"""Comparisons that count patients and training runs (issue 19): the Wilcoxon method label
against what scipy ran; the hierarchical bootstrap calibrated on simulated studies of known
truth (false-positive rate, power, coverage; the seed-averaged test beside it); the interval and
p-value as one statement; the one-seed reduction; the detectable difference and the failure-rate
tests against hand values and by simulation. Every simulation has a fixed seed."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from cardigan_tf.stats import paired_patient_test, wilcoxon_method, wilcoxon_paired, wilcoxon_test


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
