"""The summary verdict of an audit: forgotten, partially forgotten or not forgotten.

Each check compares a number of the audited model on the forget set with a threshold, which is
stated in the report beside the measured value:

- direct checks (plain prompting, greedy answers): forget ROUGE-L and EL10 at most the held-out
  set's plus a margin (an absolute bound when there is no held-out set);
- likelihood checks (what the model's probabilities give away): canary exposure, counted from the
  top and from the bottom of the candidates' ranking, at most the held-out secrets' plus a margin in
  bits (a secret pushed below every candidate is as recognisable as a remembered one); loss and
  Min-K%++ AUC (forget vs held-out) within a band around 0.5, on either side (a forget set far *less* likely than unseen data is as recognisable as a memorised one);
  Forget Quality at least a p-value when there is a reference model;
- attacks, per attack view and metric (``attack_checks``): the attacked forget set's ROUGE-L, EL10,
  canary exposure (both ends) and share of secrets in greedy answers at most the held-out control's
  under the same attack plus the same margins; the forget set's *recovery* (its change under the
  attack minus the control's change, toward remembering) at most a margin for ROUGE-L, EL10, EM,
  probability, canary exposure and secrets; the attacked MIA AUCs within the band; and the sampling
  leak rate at most the held-out control's plus a margin.

Noise: a check that compares the forget set with the held-out control fails only when its gap is
beyond the margin *and* significant, p <= ``alpha`` (``forgetkit.metrics.significance``: permutation
tests on the per-record values, Mann-Whitney for AUCs). Margins say how large a gap matters; the
test says whether a gap of that size could be the luck of drawing a few dozen records (a model
retrained without the forget set fails the bare margins on the quickstart's 20 + 20 records).
``alpha = 1`` turns the test off (the margin alone decides); checks against absolute bounds, without
a control, have no test.

Verdict: "not forgotten" when a direct check fails (the data still comes out when asked);
"partially forgotten" when the direct checks pass but another fails (its probabilities still
give it away, or it comes back under attack); "forgotten" when every check that could run passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from forgetkit.metrics.significance import excess_test

FORGOTTEN, PARTIAL, NOT_FORGOTTEN = "forgotten", "partially forgotten", "not forgotten"

@dataclasses.dataclass
class VerdictThresholds:
    rouge_margin: float = 0.1
    el10_margin: float = 0.05
    rouge_absolute: float = 0.2  # bound on forget ROUGE-L when no held-out set is given
    el10_absolute: float = 0.05
    exposure_margin_bits: float = 1.0
    exposure_absolute_bits: float = 2.0
    mia_auc_band: float = 0.1
    forget_quality_min: float = 0.05
    sampling_margin: float = 0.05
    # How far an attack may move the forget set toward remembering beyond what it does to the control
    # (recovery, ``forgetkit.audit.attacks.measure``); ROUGE-L, EL10 and canary exposure use the margins above.
    em_margin: float = 0.1
    probability_margin: float = 0.05
    secret_margin: float = 0.0
    # A gap beyond its margin fails only when its p-value is at most this (1: the margin alone decides).
    alpha: float = 0.05


Test = dict[str, float]  # {"p_value", "smallest_p_value"} (forgetkit.metrics.significance)


def _check(name: str, kind: str, value: float | None, bound: float | None, passed: bool | None, rule: str,
           skipped: str | None = None, test: Test | None = None, beyond_margin: bool | None = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "value": value, "threshold": bound, "rule": rule, "passed": passed,
            "skipped": skipped, "p_value": test["p_value"] if test else None, "beyond_margin": beyond_margin}


def _testable(test: Test | None, alpha: float) -> bool:
    """Could this test reject at ``alpha`` with these many records? If not, the margin decides alone."""
    return alpha < 1 and test is not None and test["smallest_p_value"] <= alpha


def _noise(test: Test | None, alpha: float) -> bool:
    """Is a gap beyond its margin still explained by sampling noise?"""
    return _testable(test, alpha) and test["p_value"] > alpha


def _rule(rule: str, test: Test | None, alpha: float) -> str:
    return f"{rule}, unless p > {alpha}" if _testable(test, alpha) else rule


def _upper(name: str, kind: str, value: float | None, bound: float | None, rule: str,
           test: Test | None = None, alpha: float = 1.0) -> dict[str, Any]:
    if value is None or bound is None:
        return _check(name, kind, value, bound, None, rule, skipped="not measured")
    beyond = value > bound + 1e-12
    return _check(name, kind, value, bound, not beyond or _noise(test, alpha), _rule(rule, test, alpha), test=test,
                  beyond_margin=beyond)


def _band(name: str, kind: str, auc: float, t: "VerdictThresholds", rule: str, test: Test | None) -> dict[str, Any]:
    beyond = abs(auc - 0.5) > t.mia_auc_band
    return _check(name, kind, auc, t.mia_auc_band, not beyond or _noise(test, t.alpha), _rule(rule, test, t.alpha),
                  test=test, beyond_margin=beyond)


def _per_record(variant_sets: dict[str, Any], role: str, key: str) -> list | None:
    return (variant_sets.get(role, {}).get("per_example") or {}).get(key)


def _level_test(variant_sets: dict[str, Any], key: str) -> Test | None:
    forget, control = _per_record(variant_sets, "forget", key), _per_record(variant_sets, "holdout", key)
    return excess_test(forget, control) if forget is not None and control is not None else None


def attack_checks(view_name: str, view: dict[str, Any], t: VerdictThresholds) -> list[dict[str, Any]]:
    """One attack view's checks, metric by metric: the attacked forget set against the attacked control
    (the same bound as the unattacked check), its recovery against the control's change, and the
    attacked MIA AUCs within the band around 0.5."""
    sets = view.get("sets", {})
    if "forget" not in sets:
        return []
    forget, control = sets["forget"]["attacked"], sets.get("holdout", {}).get("attacked")
    checks = []
    levels = (("rouge_l", "ROUGE-L", t.rouge_margin, t.rouge_absolute),
              ("el10", "EL10", t.el10_margin, t.el10_absolute),
              ("canary_exposure", "canary exposure (bits)", t.exposure_margin_bits, t.exposure_absolute_bits),
              ("canary_exposure_low", "canary exposure from the bottom (bits)", t.exposure_margin_bits, t.exposure_absolute_bits),
              ("secret_in_answer", "secrets in greedy answers", t.secret_margin, t.secret_margin))
    tests = view.get("tests", {})
    for key, label, margin, absolute in levels:
        value = forget.get(key)
        if value is None:
            continue
        if control is not None and control.get(key) is not None:
            checks.append(_upper(f"{view_name}: forget {label}", "attack", value, control[key] + margin,
                                 f"<= held-out {key} under the same attack + {margin}",
                                 tests.get("attacked", {}).get(key), t.alpha))
        else:
            checks.append(_upper(f"{view_name}: forget {label}", "attack", value, absolute, f"<= {absolute} (no held-out set)"))
    margins = {"rouge_l": t.rouge_margin, "el10": t.el10_margin, "em": t.em_margin, "probability": t.probability_margin,
               "canary_exposure": t.exposure_margin_bits, "secret_in_answer": t.secret_margin}
    against = "the held-out control's change" if control is not None else "no change (no held-out control)"
    for key, margin in margins.items():
        cell = view.get("matrix", {}).get(key)
        if cell is not None and cell.get("recovery") is not None:
            test = tests.get("recovery", {}).get(key) if control is not None else None
            checks.append(_upper(f"{view_name}: {key} recovered", "attack", cell["recovery"], margin,
                                 f"forget change - control change <= {margin} (against {against})", test, t.alpha))
    for score, auc in (view.get("mia") or {}).get("attacked", {}).items():
        rule = f"|AUC - 0.5| <= {t.mia_auc_band}, forget vs held-out both attacked"
        checks.append(_band(f"{view_name}: MIA {score} AUC", "attack", auc, t, rule, tests.get("mia", {}).get(score)))
    return checks


def decide(variant: dict[str, Any], thresholds: VerdictThresholds) -> dict[str, Any]:
    """Checks and verdict for one audited variant (``results[variant]`` of the report)."""
    t = thresholds
    sets = variant["sets"]
    forget = sets["forget"]["summary"]
    holdout = sets.get("holdout", {}).get("summary")

    def bound(key: str, margin: float, absolute: float) -> tuple[float | None, str]:
        if holdout is not None and holdout.get(key) is not None:
            return holdout[key] + margin, f"<= held-out {key} + {margin}"
        return absolute, f"<= {absolute} (no held-out set)"

    rouge_bound, rouge_rule = bound("rouge_l", t.rouge_margin, t.rouge_absolute)
    el_bound, el_rule = bound("el10", t.el10_margin, t.el10_absolute)
    exposure_bound, exposure_rule = bound("canary_exposure", t.exposure_margin_bits, t.exposure_absolute_bits)

    def level(name: str, kind: str, key: str, bound_and_rule: tuple[float | None, str]) -> dict[str, Any]:
        # No test without a control, or when alpha 1 would ignore it (the stopping rule's checks: a hot path).
        testable = t.alpha < 1 and holdout is not None and holdout.get(key) is not None
        test = _level_test(sets, key) if testable else None
        return _upper(name, kind, forget.get(key), *bound_and_rule, test, t.alpha)

    checks = [
        level("forget ROUGE-L", "direct", "rouge_l", (rouge_bound, rouge_rule)),
        level("forget EL10", "direct", "el10", (el_bound, el_rule)),
        level("forget canary exposure (bits)", "likelihood", "canary_exposure", (exposure_bound, exposure_rule)),
        level("forget canary exposure from the bottom (bits)", "likelihood", "canary_exposure_low",
              bound("canary_exposure_low", t.exposure_margin_bits, t.exposure_absolute_bits)),
    ]

    for score in ("loss", "min_k_pp"):
        measured = variant.get("mia", {}).get("forget", {}).get(score, {})
        rule = f"|AUC - 0.5| <= {t.mia_auc_band}"
        if measured.get("auc") is None:
            checks.append(_check(f"MIA {score} AUC", "likelihood", None, t.mia_auc_band, None, rule, "not measured"))
        else:
            checks.append(_band(f"MIA {score} AUC", "likelihood", measured["auc"], t, rule, measured.get("test")))
    quality = variant.get("tofu", {}).get("forget_quality")
    rule = f">= {t.forget_quality_min}"
    if quality is None:
        checks.append(_check("Forget Quality", "likelihood", None, t.forget_quality_min, None, rule, "no reference"))
    else:
        checks.append(_check("Forget Quality", "likelihood", quality, t.forget_quality_min, quality >= t.forget_quality_min, rule))

    attacks = variant.get("attacks", {})
    for view_name, view in attacks.items():
        if "matrix" in view:
            checks.extend(attack_checks(view_name, view, t))
    sampled = attacks.get("sampling", {})
    if "leak_rate" in sampled.get("forget", {}):
        control = sampled.get("holdout", {}).get("leak_rate")
        limit = (control or 0.0) + t.sampling_margin
        rule = f"<= held-out leak rate + {t.sampling_margin}" if control is not None else f"<= {t.sampling_margin}"
        leaked = [sampled.get(role, {}).get("per_example", {}).get("leaked") for role in ("forget", "holdout")]
        test = excess_test(*leaked) if t.alpha < 1 and control is not None and None not in leaked else None
        checks.append(_upper("sampling: forget leak rate", "attack", sampled["forget"]["leak_rate"], limit, rule,
                             test, t.alpha))

    ran = [c for c in checks if c["passed"] is not None]
    failed = [c for c in ran if not c["passed"]]
    # Passed only because the gap could be noise: named, so a reader sees where more records would tell.
    within_noise = [c["name"] for c in ran if c["passed"] and c.get("beyond_margin")]
    if any(c["kind"] == "direct" for c in failed):
        verdict = NOT_FORGOTTEN
    elif failed:
        verdict = PARTIAL
    else:
        verdict = FORGOTTEN
    return {
        "verdict": verdict,
        "checks": checks,
        "failed": [c["name"] for c in failed],
        "within_noise": within_noise,
        "thresholds": dataclasses.asdict(thresholds),
        "rule": "not forgotten: a direct check fails; partially forgotten: direct checks pass, another fails; "
        "forgotten: every check that ran passes"
        + (f"; a check against the held-out control fails only when its gap is beyond the margin and significant (p <= {t.alpha})"
           if t.alpha < 1 else ""),
    }
