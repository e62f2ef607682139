"""The audit's noise tests: p-values against hand computations, and a verdict that fails a gap only
when it is beyond the margin and significant."""

import itertools
import math

import numpy as np
import pytest

from forgetkit.audit.attacks.measure import matrix, noise_tests
from forgetkit.audit.verdict import VerdictThresholds, decide
from forgetkit.metrics.significance import auc_test, change_excess_test, excess_test


def p(forget, control):
    return excess_test(forget, control)["p_value"]


def test_excess_test_is_the_exact_permutation_share():
    # 3 forget records of 1 and 3 control records of 0: only 1 of C(6,3) = 20 relabellings gives a
    # difference as large, so p = 1/20.
    assert excess_test([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == {"p_value": pytest.approx(1 / 20), "smallest_p_value": 1 / 20}
    # Forget (3, 1) against control (2, 0): enumerate every split of {3, 1, 2, 0} into two pairs.
    values, observed = [3.0, 1.0, 2.0, 0.0], 2.0 - 1.0
    diffs = [np.mean([values[i] for i in pick]) - np.mean([values[i] for i in range(4) if i not in pick])
             for pick in itertools.combinations(range(4), 2)]
    expected = sum(d >= observed - 1e-12 for d in diffs) / len(diffs)
    assert p([3.0, 1.0], [2.0, 0.0]) == pytest.approx(expected)  # = 2/6
    assert p([0.0, 0.0], [1.0, 1.0]) == pytest.approx(1.0)  # the wrong direction is never significant
    assert p([None, 1.0, 1.0], [0.0, None, 0.0]) == pytest.approx(1 / 6)  # None are left out
    assert excess_test([None], [1.0]) is None
    assert p([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_change_excess_test_tests_per_record_changes():
    # Forget records each gain 1, control records gain 0: the same as excess_test on the changes.
    test = change_excess_test([0.0, 0.2, 0.1], [1.0, 1.2, 1.1], [0.3, 0.1, 0.5], [0.3, 0.1, 0.5])
    assert test["p_value"] == pytest.approx(1 / 20)


def test_auc_test_matches_the_normal_approximation_of_mann_whitney():
    # 20 against 20 with AUC 0.3 (no ties): U = 120, mean 200, sd sqrt(20*20*41/12) = 36.97; with the
    # continuity correction z = (200 - 120 - 0.5) / 36.97 = 2.150, p = 2 * (1 - Phi(2.150)) = 0.0315.
    members = [float(i) for i in range(20)]
    non_members = [float(i) + 0.5 for i in range(20)]
    non_members = non_members[:12] + [x + 40 for x in non_members[12:]]  # some held-out records score far higher
    from forgetkit.metrics.mia import roc_auc

    auc = roc_auc(members, non_members)
    u = auc * 400
    z = (abs(u - 200) - 0.5) / math.sqrt(20 * 20 * 41 / 12)
    assert auc_test(members, non_members)["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-3)
    # A small set is tested exactly: 4 members all above 4 non-members, p = 2 / C(8, 4) = 1/35, which is
    # also the smallest p-value 4 against 4 records can give.
    assert auc_test([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]) == {"p_value": pytest.approx(2 / 70),
                                                                  "smallest_p_value": pytest.approx(2 / 70)}


def _view(forget_before, forget_after, control_before, control_after):
    """An attack view built like the audit builds it, from per-record ROUGE-L values."""
    def result(values):
        return {"summary": {"rouge_l": float(np.mean(values))}, "per_example": {"rouge_l": values}}

    sets = {"forget": {"unattacked": result(forget_before)["summary"], "attacked": result(forget_after)["summary"]},
            "holdout": {"unattacked": result(control_before)["summary"], "attacked": result(control_after)["summary"]}}
    view = {"attack": "relearn", "sets": sets, "matrix": matrix(sets),
            "tests": noise_tests((result(forget_before), result(forget_after)), (result(control_before), result(control_after)))}
    unattacked = {"forget": {"summary": {"rouge_l": float(np.mean(forget_before))}},
                  "holdout": {"summary": {"rouge_l": float(np.mean(control_before))}}}
    return {"sets": unattacked, "attacks": {"relearn-related-100": view}}


def test_a_recovery_beyond_the_margin_fails_only_when_it_is_not_noise():
    before = [0.1] * 20
    # Relearning brings 4 forget records of 20 back whole (+0.9 each) and 1 control record too:
    # recovery 3.6/20 - 0.9/20 = 0.135, beyond the 0.1 margin. Of the 40 changes five are 0.9 and the
    # rest 0, so the permutation p-value is P(at least 4 of the 5 land among the forget 20), the
    # hypergeometric tail (5*C(35,16) + C(35,15)) / C(40,20) = 0.171: four records are luck this often.
    four_back = [1.0] * 4 + [0.1] * 16
    one_back = [1.0] + [0.1] * 19
    name = "relearn-related-100: rouge_l recovered"
    noisy = {c["name"]: c for c in decide(_view(before, four_back, before, one_back), VerdictThresholds())["checks"]}
    tail = (5 * math.comb(35, 16) + math.comb(35, 15)) / math.comb(40, 20)
    assert noisy[name]["value"] == pytest.approx(0.135)
    assert noisy[name]["p_value"] == pytest.approx(tail, abs=0.01)  # 9,999 random relabellings, seed 0
    assert noisy[name]["passed"]
    assert name in decide(_view(before, four_back, before, one_back), VerdictThresholds())["within_noise"]
    strict = decide(_view(before, four_back, before, one_back), VerdictThresholds(alpha=1.0))
    assert name in strict["failed"]  # the margin alone fails it
    # Every forget record gains 0.3: beyond the margin and far from noise.
    everywhere = {c["name"]: c for c in decide(_view(before, [0.4] * 20, before, one_back), VerdictThresholds())["checks"]}
    assert not everywhere[name]["passed"] and everywhere[name]["p_value"] < 1e-3


def test_the_unattacked_auc_band_uses_the_mann_whitney_p_value():
    def variant(auc, p):
        summary = {"rouge_l": 0.0, "el10": 0.0}
        test = {"p_value": p, "smallest_p_value": 1e-11}
        return {"sets": {"forget": {"summary": summary}, "holdout": {"summary": summary}},
                "mia": {"forget": {"loss": {"auc": auc, "test": test}}}}

    assert decide(variant(0.35, 0.11), VerdictThresholds())["verdict"] == "forgotten"
    assert decide(variant(0.35, 0.11), VerdictThresholds(alpha=1.0))["failed"] == ["MIA loss AUC"]
    assert decide(variant(0.2, 0.001), VerdictThresholds())["failed"] == ["MIA loss AUC"]
    assert decide(variant(0.55, 0.6), VerdictThresholds(alpha=1.0))["verdict"] == "forgotten"


def test_a_set_too_small_to_test_leaves_the_margin_to_decide():
    """Two secrets against two: no arrangement gives p below 1/C(4, 2) = 0.17, so a test at 0.05 could
    never fail; the margin decides alone rather than pass everything."""
    def variant(forget_bits, control_bits):
        per = lambda bits: {"canary_exposure": bits}  # noqa: E731
        summary = lambda bits: {"rouge_l": 0.0, "el10": 0.0, "canary_exposure": float(np.mean(bits))}  # noqa: E731
        return {"sets": {"forget": {"summary": summary(forget_bits), "per_example": per(forget_bits)},
                         "holdout": {"summary": summary(control_bits), "per_example": per(control_bits)}}}

    name = "forget canary exposure (bits)"
    two = decide(variant([8.0, 8.0], [1.0, 1.0]), VerdictThresholds())
    assert two["failed"] == [name]
    assert "unless p" not in {c["name"]: c for c in two["checks"]}[name]["rule"]
    # Three against three can reach exactly 1/20 = 0.05: tested, and only the most extreme split fails.
    three = decide(variant([8.0] * 3, [1.0, 2.0, 0.5]), VerdictThresholds())
    assert three["failed"] == [name] and {c["name"]: c for c in three["checks"]}[name]["p_value"] == pytest.approx(0.05)
    # Two secrets at 8 bits, one at 0.4: mean 5.47 > 1.17 + 1, but any split with both 8s among the forget
    # three does as well (4 of 20): p = 0.2, noise.
    mixed = decide(variant([8.0, 8.0, 0.4], [1.0, 2.0, 0.5]), VerdictThresholds())
    assert mixed["verdict"] == "forgotten" and mixed["within_noise"] == [name]
    assert {c["name"]: c for c in mixed["checks"]}[name]["p_value"] == pytest.approx(0.2)
    # Four against four can reach 1/70: tested, and 8 bits on all four forget secrets is significant.
    four = decide(variant([8.0] * 4, [1.0, 1.0, 2.0, 0.5]), VerdictThresholds())
    check = {c["name"]: c for c in four["checks"]}[name]
    assert not check["passed"] and check["p_value"] == pytest.approx(1 / 70)


def test_one_record_a_side_is_tested_exactly():
    # 1 forget record above 3 control records: 1 split in C(4, 1) = 4 is as extreme.
    assert excess_test([5.0], [1.0, 2.0, 3.0]) == {"p_value": pytest.approx(1 / 4), "smallest_p_value": pytest.approx(1 / 4)}
