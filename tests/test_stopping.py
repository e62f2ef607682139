"""unlearn --target: stopping where the audit's checks first hold, keeping the best state, refusals."""

import json

import pytest
from peft import PeftModel

from forgetkit.audit.verdict import VerdictThresholds
from forgetkit.errors import ForgetkitError
from forgetkit.models import load_model
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.stopping import TargetMonitor, TargetParams
from forgetkit.training import TrainConfig

# IHL from plain LoRA on the memorised quickstart model at a high step, so the target comes in a few
# dozen steps. The canary margin is wide open: IHL leaves the secrets ranked first among their
# candidates for long after the rest is forgotten (see BENCHMARKS.md), and this test is about the rule.
REACHABLE = VerdictThresholds(exposure_margin_bits=6.0, mia_auc_band=0.2)
RETAIN_GUARD = "retain NLL rise (nats)"
TRAIN = TrainConfig(lr=3e-3, epochs=8, batch_size=4, micro_batch_size=4, seed=0)


def _unlearn(memorised, out, thresholds, train=TRAIN, every=2, patience=0):
    params = UnlearnParams(loss="ihl", train=train, target=TargetParams("holdout", check_every=every, thresholds=thresholds,
                                                                        patience=patience))
    return run_unlearn(str(memorised / "model"), str(memorised / "forget.jsonl"), out, params,
                       retain=str(memorised / "retain.jsonl"), holdout=str(memorised / "holdout.jsonl"))


def _audit(memorised, adapter, out, thresholds):
    report = run_audit(str(memorised / "model"), out,
                       AuditParams(suites=("extraction", "mia"), max_new_tokens=32, canary_candidates=63,
                                   thresholds=thresholds, skip_base=True),
                       forget=str(memorised / "forget.jsonl"), holdout=str(memorised / "holdout.jsonl"), adapter=str(adapter))
    return report["results"]["unlearned"]["verdict"]


def test_target_stops_at_the_step_where_the_audit_checks_first_hold(memorised, tmp_path):
    meta = _unlearn(memorised, tmp_path / "adapter", REACHABLE)
    target = meta.results["target"]
    assert target["reached"] and target["stopped"].startswith("target 'holdout' reached at step")
    evaluations = target["evaluations"]
    stop = evaluations[-1]
    assert stop["stage"] == "full" and stop["failed"] == [] and stop["step"] == meta.results["steps"]
    assert stop["step"] < TRAIN.epochs * 5  # 20 forget records in batches of 4: 5 steps an epoch
    # Every earlier evaluation failed a check: this is the first step (of those checked) where all hold.
    assert all(e["failed"] for e in evaluations[:-1]) and len(evaluations) == stop["step"] // 2
    # The audit of the written adapter, with the same options, passes the same checks with the same numbers.
    verdict = _audit(memorised, tmp_path / "adapter", tmp_path / "report.json", REACHABLE)
    assert verdict["failed"] == []
    audited = {c["name"]: c["value"] for c in verdict["checks"] if c["passed"] is not None}
    kept = dict(stop["values"])
    assert 0 <= kept.pop(RETAIN_GUARD) <= 1.0  # the stopping rule's own utility guard (with --retain)
    assert set(audited) == set(kept)
    for name, value in kept.items():
        assert audited[name] == pytest.approx(value, abs=1e-6), name


def test_target_not_reached_keeps_the_best_evaluation_not_the_last(memorised, tmp_path):
    # A canary bound no model can meet (exposure <= held-out - 3 bits): the target is never reached, and
    # IHL at this step carries the MIA AUCs through 0.5 and out the other side, so the last state is not
    # the best one.
    unreachable = VerdictThresholds(exposure_margin_bits=-3.0, mia_auc_band=0.1)
    train = TrainConfig(lr=6e-3, epochs=10, batch_size=4, micro_batch_size=4, seed=0)
    # Patience 3: training ends three checks after the best one instead of running the 50-step budget.
    meta = _unlearn(memorised, tmp_path / "adapter", unreachable, train=train, every=3, patience=3)
    target = meta.results["target"]
    assert not target["reached"] and target["restored_best"]
    kept = next(e for e in target["evaluations"] if e["step"] == target["kept_step"])
    last = target["evaluations"][-1]
    assert kept["step"] < last["step"] == meta.results["steps"]
    assert last["step"] == kept["step"] + 3 * 3 < 50
    assert target["stopped"].startswith(f"target not reached; no better evaluation in 3 checks after step {kept['step']}")
    assert len(kept["failed"]) <= len(last["failed"])
    # The written adapter is the kept state: measured again, it gives the kept evaluation's numbers.
    loaded = load_model(str(memorised / "model"))
    model = PeftModel.from_pretrained(loaded.model, str(tmp_path / "adapter"))
    monitor = TargetMonitor(model, loaded, str(memorised / "forget.jsonl"), str(memorised / "holdout.jsonl"),
                            TargetParams("holdout", thresholds=unreachable), "")
    again = monitor.measure(generate=kept["stage"] == "full")
    values = {c["name"]: c["value"] for c in again["verdict"]["checks"] if c["passed"] is not None}
    for name, value in kept["values"].items():
        if name != RETAIN_GUARD:  # measured against the starting model, which this monitor did not see
            assert values[name] == pytest.approx(value, abs=1e-6), name


def test_a_collapsed_model_never_meets_the_target(memorised):
    """The retain guard: with every logit zero the model predicts the uniform distribution, so the retain
    answers' NLL is log(vocabulary) exactly, far above the starting model's, whatever the forget checks say."""
    import math

    import torch

    loaded = load_model(str(memorised / "model"))
    monitor = TargetMonitor(loaded.model, loaded, str(memorised / "forget.jsonl"), str(memorised / "holdout.jsonl"),
                            TargetParams("holdout"), "", retain=str(memorised / "retain.jsonl"))
    assert monitor.retain_start < 0.1 and len(monitor.retain.records) == 64  # memorised
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.zero_()
    verdict = monitor.measure(generate=False)["verdict"]
    guard = next(c for c in verdict["checks"] if c["name"] == RETAIN_GUARD)
    vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
    assert guard["value"] == pytest.approx(math.log(vocabulary) - monitor.retain_start, abs=1e-4)
    assert not guard["passed"] and RETAIN_GUARD in verdict["failed"]


def test_reference_target_refuses_a_report_made_on_another_forget_set(memorised, tmp_path):
    report = tmp_path / "reference.json"
    report.write_text(json.dumps({
        "kind": "forgetkit-audit-report", "inputs": {"forget": {"sha256": "0" * 64}},
        "results": {"model": {"reference_stats": {"truth_ratio": [0.5, 0.6], "mia_auc": {}}}},
    }))
    params = UnlearnParams(train=TRAIN, target=TargetParams("reference", reference_report=str(report)))
    with pytest.raises(ForgetkitError, match="reference report was made on a different forget set"):
        run_unlearn(str(memorised / "model"), str(memorised / "forget.jsonl"), tmp_path / "out", params,
                    retain=str(memorised / "retain.jsonl"), holdout=str(memorised / "holdout.jsonl"))


def test_target_needs_a_holdout_and_excludes_until_forgotten(memorised, tmp_path):
    model, forget = str(memorised / "model"), str(memorised / "forget.jsonl")
    with pytest.raises(ForgetkitError, match="--target holdout needs a held-out set"):
        run_unlearn(model, forget, tmp_path / "a", UnlearnParams(train=TRAIN, target=TargetParams("holdout")))
    with pytest.raises(ForgetkitError, match="either --until-forgotten or --target"):
        run_unlearn(model, forget, tmp_path / "b", UnlearnParams(train=TRAIN, until_forgotten=True, target=TargetParams("holdout")),
                    holdout=str(memorised / "holdout.jsonl"))


def test_forget_quality_shortfall_counts_decades_so_an_auc_miss_does_not_outweigh_it():
    from forgetkit.stopping import _shortfall

    def check(name, value, threshold):
        return {"name": name, "value": value, "threshold": threshold, "passed": False}

    # Forget Quality 0.022 against a 0.05 bound is log10(0.05 / 0.022) = 0.357 decades short.
    assert _shortfall(check("Forget Quality", 0.022, 0.05)) == pytest.approx(0.3565, abs=1e-4)
    assert _shortfall(check("Forget Quality", 5e-7, 0.05)) == pytest.approx(5.0)
    # An evaluation whose loss AUC is 0.046 out of the band (0.354 against 0.5 +- 0.1) but whose FQ passed
    # ranks ahead of one in the band whose FQ is still 0.022 (under "0.05 - FQ" it ranked behind: 0.028).
    later = _shortfall(check("MIA loss AUC", 0.354, 0.1))
    earlier = _shortfall(check("Forget Quality", 0.022, 0.05))
    assert later == pytest.approx(0.046) and later < earlier
    assert _shortfall({"name": "Forget Quality", "value": 0.3, "threshold": 0.05, "passed": True}) == 0.0


def _tofu_format(source, target):
    """QA records with TOFU's paraphrased and perturbed answers (three other records' answers)."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "question" in r]
    out = [{**r, "paraphrased_answer": r["answer"], "perturbed_answer": [rows[(i + k) % len(rows)]["answer"] for k in (1, 2, 3)]}
           for i, r in enumerate(rows)]
    target.write_text("".join(json.dumps(r) + "\n" for r in out))
    return str(target)


def test_holdout_target_estimates_forget_quality_against_the_starting_models_held_out_truth_ratios(memorised, tmp_path):
    """With TOFU-format records, --target holdout checks Forget Quality without a reference model: the KS
    p-value of the forget truth ratios against the held-out ones *as the starting model scored them*
    (frozen), recomputed here by hand from two audits."""
    import torch
    from scipy.stats import ks_2samp

    model = str(memorised / "model")
    forget = _tofu_format(memorised / "forget.jsonl", tmp_path / "forget.jsonl")
    holdout = _tofu_format(memorised / "holdout.jsonl", tmp_path / "holdout.jsonl")
    loaded = load_model(model)
    monitor = TargetMonitor(loaded.model, loaded, forget, holdout, TargetParams("holdout", holdout_quality=True), "")
    audit = run_audit(model, tmp_path / "start.json", AuditParams(suites=("tofu",), max_new_tokens=4, canary_candidates=0),
                      forget=forget, holdout=holdout)["results"]["model"]["sets"]
    start_holdout = [r for r in audit["holdout"]["per_example"]["truth_ratio"] if r is not None]
    assert monitor.holdout_ratios == pytest.approx(start_holdout, rel=1e-6) and len(start_holdout) == 16  # the QA records

    def measured(variant):
        return next(c for c in variant["verdict"]["checks"] if c["name"] == "Forget Quality vs held-out")

    # The memorised model: its forget truth ratios are nothing like never-seen people's.
    start_forget = [r for r in audit["forget"]["per_example"]["truth_ratio"] if r is not None]
    check = measured(monitor.measure(generate=False))
    assert check["value"] == pytest.approx(ks_2samp(start_forget, start_holdout).pvalue, rel=1e-6)
    assert check["value"] < 0.05 and not check["passed"]
    # Every logit zero: every answer is as likely as every other, so each forget truth ratio is exactly 1;
    # the held-out sample stays the starting model's.
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.zero_()
    check = measured(monitor.measure(generate=False))
    assert check["value"] == pytest.approx(ks_2samp([1.0] * len(start_forget), start_holdout).pvalue, rel=1e-6)
    # Off unless asked; asked of records without perturbed answers, refused in one line.
    assert TargetMonitor(loaded.model, loaded, forget, holdout, TargetParams("holdout"), "").holdout_ratios is None
    plain = str(memorised / "holdout.jsonl")
    with pytest.raises(ForgetkitError, match="holdout.jsonl: --holdout-quality needs held-out records with 'perturbed_answer'"):
        TargetMonitor(loaded.model, loaded, forget, plain, TargetParams("holdout", holdout_quality=True), "")
    with pytest.raises(ForgetkitError, match="forget.jsonl: --holdout-quality needs forget records with 'perturbed_answer'"):
        TargetMonitor(loaded.model, loaded, str(memorised / "forget.jsonl"), holdout, TargetParams("holdout", holdout_quality=True), "")
