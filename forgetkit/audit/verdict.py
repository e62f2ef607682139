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

Verdict: "not forgotten" when a direct check fails (the data still comes out when asked);
"partially forgotten" when the direct checks pass but another fails (its probabilities still
give it away, or it comes back under attack); "forgotten" when every check that could run passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


def _check(name: str, kind: str, value: float | None, bound: float | None, passed: bool | None, rule: str,
           skipped: str | None = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "value": value, "threshold": bound, "rule": rule, "passed": passed,
            "skipped": skipped}


def _upper(name: str, kind: str, value: float | None, bound: float | None, rule: str) -> dict[str, Any]:
    if value is None or bound is None:
        return _check(name, kind, value, bound, None, rule, skipped="not measured")
    return _check(name, kind, value, bound, value <= bound + 1e-12, rule)


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
    for key, label, margin, absolute in levels:
        value = forget.get(key)
        if value is None:
            continue
        if control is not None and control.get(key) is not None:
            checks.append(_upper(f"{view_name}: forget {label}", "attack", value, control[key] + margin,
                                 f"<= held-out {key} under the same attack + {margin}"))
        else:
            checks.append(_upper(f"{view_name}: forget {label}", "attack", value, absolute, f"<= {absolute} (no held-out set)"))
    margins = {"rouge_l": t.rouge_margin, "el10": t.el10_margin, "em": t.em_margin, "probability": t.probability_margin,
               "canary_exposure": t.exposure_margin_bits, "secret_in_answer": t.secret_margin}
    against = "the held-out control's change" if control is not None else "no change (no held-out control)"
    for key, margin in margins.items():
        cell = view.get("matrix", {}).get(key)
        if cell is not None and cell.get("recovery") is not None:
            checks.append(_upper(f"{view_name}: {key} recovered", "attack", cell["recovery"], margin,
                                 f"forget change - control change <= {margin} (against {against})"))
    for score, auc in (view.get("mia") or {}).get("attacked", {}).items():
        rule = f"|AUC - 0.5| <= {t.mia_auc_band}, forget vs held-out both attacked"
        checks.append(_check(f"{view_name}: MIA {score} AUC", "attack", auc, t.mia_auc_band, abs(auc - 0.5) <= t.mia_auc_band, rule))
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
    checks = [
        _upper("forget ROUGE-L", "direct", forget.get("rouge_l"), rouge_bound, rouge_rule),
        _upper("forget EL10", "direct", forget.get("el10"), el_bound, el_rule),
        _upper("forget canary exposure (bits)", "likelihood", forget.get("canary_exposure"), exposure_bound, exposure_rule),
    ]
    low_bound, low_rule = bound("canary_exposure_low", t.exposure_margin_bits, t.exposure_absolute_bits)
    checks.append(_upper("forget canary exposure from the bottom (bits)", "likelihood", forget.get("canary_exposure_low"),
                         low_bound, low_rule))

    for score in ("loss", "min_k_pp"):
        auc = variant.get("mia", {}).get("forget", {}).get(score, {}).get("auc")
        rule = f"|AUC - 0.5| <= {t.mia_auc_band}"
        if auc is None:
            checks.append(_check(f"MIA {score} AUC", "likelihood", None, t.mia_auc_band, None, rule, "not measured"))
        else:
            checks.append(_check(f"MIA {score} AUC", "likelihood", auc, t.mia_auc_band, abs(auc - 0.5) <= t.mia_auc_band, rule))
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
        checks.append(_upper("sampling: forget leak rate", "attack", sampled["forget"]["leak_rate"], limit, rule))

    ran = [c for c in checks if c["passed"] is not None]
    failed = [c for c in ran if not c["passed"]]
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
        "thresholds": dataclasses.asdict(thresholds),
        "rule": "not forgotten: a direct check fails; partially forgotten: direct checks pass, another fails; "
        "forgotten: every check that ran passes",
    }
