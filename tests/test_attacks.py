"""Attacks measured through the audit's own evaluation: a pass-through equals the unattacked audit,
prompt attacks change only the prompt, NF4 is bitsandbytes' rounding, and relearning that brings the
forget set back beyond the control costs the verdict *forgotten* (while never-learned people keep it)."""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from forgetkit.audit.attacks import AttackParams, Target, fitting, run_model_attack, run_prompt_attack
from forgetkit.audit.attacks.prompts import ANSWER_PREFIX, PromptAttack, attacked_records, prompt_attack
from forgetkit.audit.evaluate import EvalOptions, evaluate_set
from forgetkit.audit.sets import load_eval_set
from forgetkit.data import collate
from forgetkit.models import load_model
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import load_examples
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig


def target_for(model_dir, data_dir):
    loaded = load_model(str(model_dir))
    sets = {role: load_eval_set(role, str(data_dir / f"{role}.jsonl"), loaded, truncate=False, canary_candidates=15,
                                need_truth_ratio=False) for role in ("forget", "holdout")}
    options = EvalOptions(max_new_tokens=6)
    unattacked = {role: evaluate_set(loaded.model, loaded.tokenizer, s, options) for role, s in sets.items()}
    return Target(loaded.model, lambda: loaded.model, loaded, sets, unattacked, options)


def test_an_attack_that_changes_nothing_gives_the_unattacked_numbers_exactly(tiny_models, data_dir):
    target = target_for(tiny_models["llama"], data_dir)
    for view in (run_prompt_attack(PromptAttack("none", lambda record, position: {}, "unchanged"), target),
                 run_model_attack("none", target.model, {}, target)):
        for role in ("forget", "holdout"):
            assert view["sets"][role]["attacked"] == view["sets"][role]["unattacked"] == target.unattacked[role]["summary"]
        assert view["mia"]["attacked"] == view["mia"]["unattacked"]
        assert view["matrix"]["canary_exposure"]["forget"][0] == view["matrix"]["canary_exposure"]["forget"][1]
        assert all(cell.get("recovery", 0.0) == 0.0 for cell in view["matrix"].values())
        assert {"rouge_l", "el10", "em", "probability", "canary_exposure", "secret_in_answer"} <= set(view["matrix"])


def test_prompt_attacks_change_the_prompt_and_keep_the_scored_answer(tiny_models, data_dir):
    target = target_for(tiny_models["llama"], data_dir)
    forget = target.sets["forget"]
    pool = target.sets["holdout"].records
    for name in ("paraphrase", "prefix", "in-context", "role-play"):
        attack = prompt_attack(name, pool)
        records, unchanged = fitting(attacked_records(attack, forget.records), forget.records, target.loaded)
        assert unchanged < len(forget.qa), name  # long records the attack would push past the context stay as they were
        changed = forget.with_records(records, target.loaded)
        attacked = [i for i in forget.qa if records[i] is not forget.records[i]]
        for i in attacked:
            before, after = forget.examples[i], changed.examples[i]
            assert after.input_ids[after.prompt_length:] == before.input_ids[before.prompt_length:], name  # same answer
            assert after.prompt_length > before.prompt_length, name
        # Plain-text records are measured as they are, canaries included.
        text = [i for i, r in enumerate(forget.records) if not r.is_qa]
        assert all(changed.examples[i].input_ids == forget.examples[i].input_ids for i in text)
        assert len(changed.canaries.candidates) == len(forget.canaries.candidates)
    qa = forget.qa[0]
    prefix = target.loaded.tokenizer(" " + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    changed = forget.with_records(attacked_records(prompt_attack("prefix", pool), forget.records), target.loaded)
    assert changed.examples[qa].input_ids[:changed.examples[qa].prompt_length][-len(prefix):] == prefix
    shots = attacked_records(prompt_attack("in-context", pool), forget.records)[qa]["_shots"]
    assert len(shots) == 3 and all(s["question"] in {r["question"] for r in pool if r.is_qa} for s in shots)
    fitted, _ = fitting(attacked_records(prompt_attack("in-context", pool), forget.records), forget.records, target.loaded)
    assert all(1 <= len(r["_shots"]) <= 3 for r in fitted if "_shots" in r.fields)
    view = run_prompt_attack(prompt_attack("in-context", pool), target)
    assert view["details"].get("forget_records_too_long_to_attack", 0) == len(forget.qa) - len(
        [i for i in forget.qa if fitting(attacked_records(prompt_attack("in-context", pool), forget.records),
                                         forget.records, target.loaded)[0][i] is not forget.records[i]])


def test_nf4_is_bitsandbytes_rounding_of_every_linear_weight_but_the_head(tiny_models):
    import bitsandbytes.functional as functional

    from forgetkit.audit.attacks.weights import nf4_quantise

    model = load_model(str(tiny_models["llama"])).model
    layer = model.model.layers[0].mlp.down_proj
    original = layer.weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    assert nf4_quantise(model) == 2 * 7
    packed, state = functional.quantize_4bit(original, blocksize=64, quant_type="nf4")
    assert torch.equal(layer.weight, functional.dequantize_4bit(packed, state))
    blocks = layer.weight.detach().reshape(-1, 64)
    assert max(len(torch.unique(b)) for b in blocks) <= 16 and not torch.equal(layer.weight, original)
    assert torch.equal(model.get_output_embeddings().weight, head)


def independent_relearning(model_dir, adapter, records_file, steps=30):
    """Mean answer NLL of the records not trained on, before and after a plain LoRA loop on 5 of them."""
    loaded = load_model(str(model_dir))
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload() if adapter else loaded.model
    pad = loaded.tokenizer.pad_token_id
    _, examples = load_examples(str(records_file), loaded)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    used, rest = order[:5], order[5:]

    def nll(m):
        m.eval()
        values = []
        with torch.no_grad():
            for i in rest:
                batch = collate([examples[i]], pad)
                values.append(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                labels=batch["labels"]).loss.item())
        return sum(values) / len(values)

    before = nll(model)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    optimiser = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-3)
    for step in range(steps):
        lora.train()
        batch = collate([examples[used[(step * 4 + k) % len(used)]] for k in range(4)], pad)
        lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    return before, nll(lora)


@pytest.fixture(scope="module")
def unlearned(memorised, tmp_path_factory):
    """The memorised quickstart model after the quickstart's IHL run (no FILA: the quickest adapter)."""
    out = tmp_path_factory.mktemp("relearn") / "adapter"
    train = TrainConfig(lr=1.5e-3, epochs=12, batch_size=4, micro_batch_size=4)
    run_unlearn(str(memorised / "model"), str(memorised / "forget.jsonl"), out, UnlearnParams(loss="ihl", train=train),
                retain=str(memorised / "retain.jsonl"))
    return out


RELEARN_ONLY = AuditParams(max_new_tokens=16, canary_candidates=63, attacks=("relearn",), skip_base=True,
                           attack=AttackParams(relearn_budgets=(30,), relearn_kinds=("part",)))


def test_relearning_that_brings_the_forget_set_back_costs_the_verdict(memorised, unlearned, tmp_path):
    model = memorised / "model"
    # First, outside forgetkit's attack code: 30 steps on 5 forget records bring the other 15 back far
    # beyond what the same on 5 held-out records does for the other held-out ones.
    forget_before, forget_after = independent_relearning(model, unlearned, memorised / "forget.jsonl")
    control_before, control_after = independent_relearning(model, unlearned, memorised / "holdout.jsonl")
    assert (forget_before - forget_after) > (control_before - control_after) + 2.0, (
        forget_before, forget_after, control_before, control_after)

    report = run_audit(str(model), tmp_path / "report.json", RELEARN_ONLY, forget=str(memorised / "forget.jsonl"),
                       holdout=str(memorised / "holdout.jsonl"), adapter=str(unlearned))
    result = report["results"]["unlearned"]
    view = result["attacks"]["relearn-part-30"]
    assert view["matrix"]["nll"]["forget"][1] < view["matrix"]["nll"]["forget"][0] - 2.0
    assert view["matrix"]["probability"]["recovery"] > 0.05
    failed = [name for name in result["verdict"]["failed"] if name.startswith("relearn-part-30")]
    assert failed and result["verdict"]["verdict"] != "forgotten"


def test_people_never_learned_keep_their_verdict_under_relearning(memorised, tmp_path):
    """The memorised model audited on people it never saw (the held-out set split in two): relearning
    teaches both halves alike, so no recovery check fails and the verdict is the one without attacks
    (whatever that is: with two secrets a side, canary exposure alone can tell the halves apart)."""
    import json

    rows = [json.loads(line) for line in (memorised / "holdout.jsonl").read_text().splitlines()]
    people = sorted({r["person"] for r in rows})
    halves = {}
    for name, chosen in (("forget", people[: len(people) // 2]), ("holdout", people[len(people) // 2:])):
        halves[name] = tmp_path / f"{name}.jsonl"
        halves[name].write_text("".join(json.dumps(r) + "\n" for r in rows if r["person"] in chosen))
    model = str(memorised / "model")
    plain = run_audit(model, tmp_path / "plain.json", AuditParams(max_new_tokens=16, canary_candidates=63),
                      forget=str(halves["forget"]), holdout=str(halves["holdout"]))
    attacked = run_audit(model, tmp_path / "attacked.json", RELEARN_ONLY,
                         forget=str(halves["forget"]), holdout=str(halves["holdout"]))
    verdict = attacked["results"]["model"]["verdict"]
    recovery = [c for c in verdict["checks"] if c["name"].startswith("relearn") and c["name"].endswith("recovered")]
    assert len(recovery) >= 5 and all(c["passed"] for c in recovery), [(c["name"], c["value"]) for c in recovery]
    # Each recovery carries the p-value of its per-record test (forget changes against control changes).
    assert all(0 < c["p_value"] <= 1 for c in recovery), [(c["name"], c["p_value"]) for c in recovery]
    assert verdict["verdict"] == plain["results"]["model"]["verdict"]["verdict"]
