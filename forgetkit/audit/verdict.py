"""The summary verdict of an audit: forgotten, partially forgotten or not forgotten.

Each check compares a number of the audited model on the forget set with a threshold, which is
stated in the report beside the measured value:

- direct checks (plain prompting, greedy answers): forget ROUGE-L and EL10 at most the held-out
  set's plus a margin (an absolute bound when there is no held-out set);
- likelihood checks (what the model's probabilities give away): canary exposure, counted from the
  top and from the bottom of the candidates' ranking, at most the held-out secrets' plus a margin in
  bits (a secret pushed below every candidate is as recognisable as a remembered one); loss and Min-K%++ AUC (forget vs held-out) within a band around 0.5, on either
  side (a forget set far *less* likely than unseen data is as recognisable as a memorised one);
  Forget Quality at least a p-value when there is a reference model;
- attacks: forget ROUGE-L under paraphrase and quantization at most the same bound as the direct
  check, and no forgotten secret verbatim in a greedy answer under any attack (at most the held-out
  control's share after relearning); after relearning, the measured forget records' ROUGE-L at most that of the held-out
  control after the same attack plus the margin; the sampling leak rate at most the held-out
  control's plus a margin.

Verdict: "not forgotten" when a direct check fails (the data still comes out when asked);
"partially forgotten" when the direct checks pass but another fails (its probabilities still
give it away, or it comes back under attack); "forgotten" when every check that could run passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FORGOTTEN, PARTIAL, NOT_FORGOTTEN = "forgotten", "partially forgotten", "not forgotten"

def rounded_results(quantize: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (rounding, per-set metrics) pairs of a quantize attack's result: int8, int4, gguf-q8_0, ..."""
    return [(key, value) for key, value in quantize.items() if key != "unattacked" and isinstance(value, dict)]


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


def _check(name: str, kind: str, value: float | None, bound: float | None, passed: bool | None, rule: str,
           skipped: str | None = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "value": value, "threshold": bound, "rule": rule, "passed": passed,
            "skipped": skipped}


def _upper(name: str, kind: str, value: float | None, bound: float | None, rule: str) -> dict[str, Any]:
    if value is None or bound is None:
        return _check(name, kind, value, bound, None, rule, skipped="not measured")
    return _check(name, kind, value, bound, value <= bound + 1e-12, rule)


def _leak(attack: str, attacked: dict[str, Any], control: dict[str, Any] | None) -> dict[str, Any] | None:
    """The share of forget secrets that appear verbatim in a greedy answer under the attack: at most the
    held-out control's under the same attack, or none at all without a control."""
    value = attacked.get("secret_leak")
    if value is None:
        return None
    limit = (control or {}).get("secret_leak")
    if limit is None:
        return _upper(f"{attack}: forget secrets in greedy answers", "attack", value, 0.0, "= 0 (no forgotten secret comes out)")
    return _upper(f"{attack}: forget secrets in greedy answers", "attack", value, limit, "<= held-out control's after the same attack")


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
    if "paraphrase" in attacks and "attacked" in attacks["paraphrase"]:
        checks.append(_upper("paraphrase: forget ROUGE-L", "attack", attacks["paraphrase"]["attacked"]["rouge_l"],
                             rouge_bound, rouge_rule))
        checks.append(_leak("paraphrase", attacks["paraphrase"]["attacked"], None))
    for key, result in rounded_results(attacks.get("quantize", {})):
        checks.append(_upper(f"quantize {key}: forget ROUGE-L", "attack", result["forget"]["rouge_l"], rouge_bound, rouge_rule))
        checks.append(_leak(f"quantize {key}", result["forget"], None))
    relearned = attacks.get("relearn", {})
    if "forget" in relearned:
        control = relearned.get("holdout", {}).get("attacked", {}).get("rouge_l")
        if control is not None:
            checks.append(_upper("relearn: forget ROUGE-L", "attack", relearned["forget"]["attacked"]["rouge_l"],
                                 control + t.rouge_margin, f"<= held-out after the same relearning + {t.rouge_margin}"))
        else:
            checks.append(_upper("relearn: forget ROUGE-L", "attack", relearned["forget"]["attacked"]["rouge_l"],
                                 rouge_bound, rouge_rule))
        checks.append(_leak("relearn", relearned["forget"]["attacked"], relearned.get("holdout", {}).get("attacked")))
    checks = [c for c in checks if c is not None]  # _leak gives None where no secret was measured
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
