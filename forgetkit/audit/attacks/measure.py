"""The one code path every attack is measured through.

An attack only makes something: a changed model (rounded weights, a relearned adapter) or changed
prompts (reworded questions, shots, an answer prefix). The ordinary per-set evaluation
(``forgetkit.audit.evaluate.evaluate_set``) then runs on the forget set and, under the same attack, on
the held-out set (the control), so every metric the unattacked audit computes is attacked too, and a
metric added to the audit is attacked for free.

Per attack ("view") the report holds, for each side, the unattacked and attacked summaries, the MIA
AUCs of attacked forget against attacked control, and a metric matrix. *Recovery* is how far the
attack moves the forget set toward remembering, beyond what the same attack does to the control:

    recovery = (forget attacked - forget unattacked) - (control attacked - control unattacked)

for metrics where a higher value means more is remembered; a control that learns from a relearning
step as much as the forget set does cancels out, a forget set that comes back faster does not.

Beside each number the view keeps its p-value (``tests``, from the per-record values, which the report
does not keep): the attacked forget level above the attacked control's, the recovery above zero (per-record
changes, forget against control), and the attacked MIA AUCs away from 0.5; the verdict uses them to tell a
gap from sampling noise (``forgetkit.metrics.significance``).
"""

from __future__ import annotations

from typing import Any

from forgetkit.audit import aggregate
from forgetkit.metrics.significance import change_excess_test, excess_test

# Every per-set number the matrix shows (the audit's summary keys that exist for the sets measured).
MATRIX_METRICS = ("rouge_l", "el5", "el10", "ma", "em", "es", "probability", "truth_ratio", "canary_exposure",
                  "canary_exposure_low", "secret_in_answer", "nll")
# Metrics where a higher value means more of the record is remembered: recovery is measured on these.
REMEMBERING_METRICS = ("rouge_l", "el5", "el10", "ma", "em", "es", "probability", "canary_exposure", "secret_in_answer")
MIA_SCORES = ("loss", "min_k_pp")


def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    return result["summary"]


def side(unattacked: dict[str, Any], attacked: dict[str, Any]) -> dict[str, Any]:
    """One set's numbers with and without the attack (evaluate_set results; per-record arrays dropped)."""
    return {"unattacked": summary_of(unattacked), "attacked": summary_of(attacked)}


def view_result(attack: str, details: dict[str, Any], results: dict[str, tuple[dict, dict]]) -> dict[str, Any]:
    """Assemble one attack view from ``results[set] = (unattacked, attacked)`` evaluate_set results:
    per-set summaries, the attacked MIA AUCs (forget vs held-out control) and the metric matrix."""
    out: dict[str, Any] = {"attack": attack, "details": details}
    out["sets"] = {name: side(before, after) for name, (before, after) in results.items()}
    if "forget" in results and "holdout" in results:
        memberships = [aggregate.membership({"forget": results["forget"][index], "holdout": results["holdout"][index]})
                       .get("forget", {}) for index in (0, 1)]
        out["mia"] = {label: {score: value["auc"] for score, value in membership.items() if score in MIA_SCORES}
                      for label, membership in zip(("unattacked", "attacked"), memberships)}
        out["tests"] = noise_tests(results["forget"], results["holdout"])
        out["tests"]["mia"] = {score: value["test"] for score, value in memberships[1].items() if score in MIA_SCORES}
    out["matrix"] = matrix(out["sets"])
    return out


def noise_tests(forget: tuple[dict, dict], control: tuple[dict, dict]) -> dict[str, dict[str, dict | None]]:
    """Tests (p-values, ``forgetkit.metrics.significance``) from the per-record values of (unattacked,
    attacked) evaluate_set results: the attacked forget set above the attacked control ("attacked"), and
    its change above the control's ("recovery")."""
    out: dict[str, dict[str, dict | None]] = {"attacked": {}, "recovery": {}}
    f_before, f_after = forget[0]["per_example"], forget[1]["per_example"]
    c_before, c_after = control[0]["per_example"], control[1]["per_example"]
    for metric in REMEMBERING_METRICS + ("canary_exposure_low",):
        if metric not in f_after or metric not in c_after:
            continue
        out["attacked"][metric] = excess_test(f_after[metric], c_after[metric])
        if metric in REMEMBERING_METRICS and metric in f_before and metric in c_before:
            out["recovery"][metric] = change_excess_test(f_before[metric], f_after[metric],
                                                         c_before[metric], c_after[metric])
    return out


def matrix(sets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: forget and control, unattacked and attacked, and the forget set's recovery."""
    forget, control = sets.get("forget"), sets.get("holdout")
    out: dict[str, dict[str, Any]] = {}
    for metric in MATRIX_METRICS:
        f = [forget["unattacked"].get(metric), forget["attacked"].get(metric)] if forget else [None, None]
        if f[0] is None or f[1] is None:
            continue
        c = [control["unattacked"].get(metric), control["attacked"].get(metric)] if control else [None, None]
        cell: dict[str, Any] = {"forget": f, "control": c if None not in c else None}
        if metric in REMEMBERING_METRICS:
            control_change = (c[1] - c[0]) if None not in c else 0.0
            cell["recovery"] = (f[1] - f[0]) - control_change
        out[metric] = cell
    return out
