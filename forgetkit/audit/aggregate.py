"""Numbers that span sets or models: MIA AUCs (a member set against the held-out set), Model
Utility, and the comparisons with a reference model (Forget Quality, PrivLeak)."""

from __future__ import annotations

from typing import Any

from forgetkit.metrics import tofu
from forgetkit.metrics.mia import SCORES, privleak, roc_auc, roc_curve
from forgetkit.metrics.significance import auc_test

MEMBER_SETS = ("forget", "retain")


def membership(sets: dict[str, Any]) -> dict[str, Any]:
    """AUC, its two-sided test against 0.5 (``forgetkit.metrics.significance``) and ROC curve of each
    score, forget (and retain) records against held-out ones."""
    holdout = sets.get("holdout")
    if holdout is None or "mia_loss" not in holdout["per_example"]:
        return {}
    out: dict[str, Any] = {}
    for member in MEMBER_SETS:
        if member not in sets:
            continue
        out[member] = {}
        for score in SCORES:
            members = sets[member]["per_example"][f"mia_{score}"]
            others = holdout["per_example"][f"mia_{score}"]
            out[member][score] = {"auc": roc_auc(members, others), "test": auc_test(members, others),
                                  "roc": roc_curve(members, others)}
    return out


def utility(sets: dict[str, Any]) -> dict[str, Any]:
    return tofu.model_utility({name: s["summary"] for name, s in sets.items()})


def forget_truth_ratios(variant: dict[str, Any]) -> list[float] | None:
    values = variant["sets"]["forget"]["per_example"].get("truth_ratio")
    if not values:
        return None
    present = [v for v in values if v is not None]
    return present or None


def compare_with_reference(variant: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Forget Quality and PrivLeak of ``variant`` against a reference's truth ratios and AUCs."""
    out: dict[str, Any] = {}
    ours, theirs = forget_truth_ratios(variant), reference.get("truth_ratio")
    if ours and theirs:
        out["forget_quality"] = tofu.forget_quality(ours, theirs)
    leaks = {}
    for score, auc in reference.get("mia_auc", {}).items():
        mine = variant.get("mia", {}).get("forget", {}).get(score, {}).get("auc")
        if mine is not None and auc:
            leaks[score] = privleak(mine, auc)
    if leaks:
        out["privleak"] = leaks
    return out


def reference_stats(variant: dict[str, Any]) -> dict[str, Any]:
    """What a later audit needs from this model as its reference."""
    return {
        "truth_ratio": forget_truth_ratios(variant),
        "mia_auc": {score: v["auc"] for score, v in variant.get("mia", {}).get("forget", {}).items()},
    }
