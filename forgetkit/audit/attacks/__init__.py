"""Attacks that try to bring back what unlearning removed, each measured by the audit's own
evaluation (``measure``): every metric of the unattacked audit, on the forget set and on the held-out
control under the same attack.

Names for ``--attacks``: the prompt attacks ``paraphrase``, ``prefix``, ``in-context``, ``role-play``
(``prompts``); the weight attacks ``quantize`` (int8 and int4), ``nf4``, ``gguf-q8_0``, ``gguf-q4_0``
(``weights``); ``relearn`` (``relearn``: two kinds, several step budgets); ``sampling``
(``sampling``). Each report entry is a *view*: one attacked model or prompt set (``int4``,
``relearn-part-30``, ``prefix``...), holding the attack's name, its details, per-set summaries, the
attacked MIA AUCs and the metric matrix with each metric's recovery against the control.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from forgetkit.audit.attacks.measure import view_result
from forgetkit.audit.attacks.prompts import PROMPT_ATTACKS, PromptAttack, attacked_records, prompt_attack
from forgetkit.audit.attacks.relearn import KINDS, relearn_side
from forgetkit.audit.attacks.sampling import sampling_attack
from forgetkit.audit.attacks.weights import GGUF_FORMATS, rounded_model
from forgetkit.audit.evaluate import EvalOptions, evaluate_set
from forgetkit.audit.sets import EvalSet
from forgetkit.data import SHOTS_FIELD, Record, prompt_and_answer
from forgetkit.errors import ForgetkitError
from forgetkit.models import LoadedModel

WEIGHT_FAMILIES = {"quantize": ("int8", "int4"), "nf4": ("nf4",), **{name: (name,) for name in GGUF_FORMATS}}
ATTACKS = (*PROMPT_ATTACKS, *WEIGHT_FAMILIES, "relearn", "sampling")
NEEDS_A_WHOLE_COPY = (*WEIGHT_FAMILIES, "relearn")  # refused with a split (sharded) base


@dataclasses.dataclass
class AttackParams:
    relearn_fraction: float = 0.25
    relearn_budgets: tuple[int, ...] = (10, 30, 100)  # steps after which the relearned model is measured
    relearn_lr: float = 1e-3
    relearn_rank: int = 8
    relearn_batch_size: int = 4
    relearn_kinds: tuple[str, ...] = KINDS
    samples: int = 32
    temperature: float = 1.0
    top_k: int = 50
    seed: int = 0

    @property
    def relearn_steps(self) -> int:
        return max(self.relearn_budgets)


@dataclasses.dataclass
class Target:
    """What an attack is run on: one audited model, its evaluation sets and their unattacked results."""

    model: torch.nn.Module
    materialise: Callable[[], torch.nn.Module]  # a fresh plain copy, for attacks that change weights
    loaded: LoadedModel
    sets: dict[str, EvalSet]
    unattacked: dict[str, dict[str, Any]]  # evaluate_set results of ``model`` on ``sets``
    options: EvalOptions
    training_templates: list[str] | None = None  # wordings the adapter was trained under
    light_unattacked: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # retain, answers only


MEASURED = ("forget", "holdout")


def parse_budgets(text: str) -> tuple[int, ...]:
    try:
        budgets = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        budgets = ()
    if not budgets or budgets[0] < 1:
        raise ForgetkitError(f"--relearn-steps takes positive step counts separated by commas, not '{text}'")
    return budgets


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ForgetkitError(f"--relearn-kinds takes {' and/or '.join(KINDS)}, not '{text}'")
    return kinds


def run_prompt_attack(attack: PromptAttack, target: Target) -> dict[str, Any]:
    """The audited model on changed copies of the forget and held-out records."""
    name, forget = attack.name, target.sets["forget"]
    if not forget.qa:
        return {"attack": name, "skipped": "the forget set has no question/answer records"}
    results, details = {}, {}
    for role in MEASURED:
        if role in target.sets:
            evalset = target.sets[role]
            records, unchanged = fitting(attacked_records(attack, evalset.records), evalset.records, target.loaded)
            changed = evalset.with_records(records, target.loaded)
            if unchanged:
                details[f"{role}_records_too_long_to_attack"] = unchanged
            results[role] = (target.unattacked[role], evaluate_set(target.model, target.loaded.tokenizer, changed, target.options))
    details["wording"] = {"attack": attack.wording}
    if name == "paraphrase":
        details["wording"].update(paraphrase_provenance(forget, target.training_templates))
    return view_result(name, details, results)


def fitting(attacked: list[Record], original: list[Record], loaded: LoadedModel) -> tuple[list[Record], int]:
    """The attacked records, with fewer shots where all of them do not fit the model's context; a record
    that still does not fit stays as it was (and is counted), so an attack never cuts an answer short."""
    if loaded.context_length is None:
        return attacked, 0
    def fits(record: Record) -> bool:
        prompt, answer = prompt_and_answer(record, loaded.tokenizer)
        return len(prompt) + len(answer) <= loaded.context_length

    out, unchanged = [], 0
    for new, old in zip(attacked, original):
        shots = list(new.get(SHOTS_FIELD) or [])
        while not fits(new) and len(shots) > 1:  # fewer earlier turns before giving up on the record
            shots.pop()
            new = Record(fields={**new.fields, SHOTS_FIELD: list(shots)}, source=new.source)
        ok = fits(new)
        out.append(new if ok else old)
        unchanged += not ok
    return out, unchanged


def paraphrase_provenance(forget: EvalSet, training_templates: list[str] | None) -> dict[str, Any]:
    """Which wording training used, and how many attacked questions it saw (none, unless a training
    template happens to produce an attack's wording): a trained-on paraphrase is not an attack."""
    from forgetkit.audit.attacks.prompts import paraphrase_attack

    records = [forget.records[i] for i in forget.qa]
    attacked = attacked_records(paraphrase_attack(), records)
    trained = {t.format(question=r["question"]) for t in training_templates or [] for r in records}
    return {
        "paraphrases": "dataset" if all(r.get("paraphrased_question") for r in records) else "template",
        "training": ("training templates: " + " | ".join(training_templates)) if training_templates
        else "the forget set's own questions only",
        "attacked_questions_seen_in_training": sum(r["question"] in trained for r in attacked),
    }


def run_model_attack(name: str, model: torch.nn.Module, details: dict[str, Any], target: Target) -> dict[str, Any]:
    """An attacked model on the forget and held-out sets as they are, and on the retain set the answers
    and likelihoods only (is the attacked model still useful; no extraction or canary passes there)."""
    results = {role: (target.unattacked[role], evaluate_set(model, target.loaded.tokenizer, target.sets[role], target.options))
               for role in MEASURED if role in target.sets}
    if "retain" in target.sets:
        light = dataclasses.replace(target.options, suites=("tofu",))
        if "retain" not in target.light_unattacked:
            target.light_unattacked["retain"] = evaluate_set(target.model, target.loaded.tokenizer, target.sets["retain"], light)
        results["retain"] = (target.light_unattacked["retain"],
                             evaluate_set(model, target.loaded.tokenizer, target.sets["retain"], light))
    return view_result(name, details, results)


def run_weight_attack(rounding: str, target: Target) -> dict[str, Any]:
    model, details = rounded_model(rounding, target.materialise(), target.loaded)
    return run_model_attack(rounding, model, details, target)


def run_relearn(target: Target, params: AttackParams) -> dict[str, Any]:
    views: dict[str, Any] = {}
    for kind in params.relearn_kinds:
        sides = {role: relearn_side(kind, target.model, target.materialise, target.loaded, target.sets[role],
                                    target.unattacked[role], target.options, params)
                 for role in MEASURED if role in target.sets}
        sides = {role: value for role, value in sides.items() if value is not None}
        if "forget" not in sides:
            views[f"relearn-{kind}"] = {"attack": "relearn", "skipped": "the forget set cannot serve this kind "
                                        "(part: at least 2 records; related: question/answer records)"}
            continue
        for steps in sorted(params.relearn_budgets):
            details = {"kind": kind, "steps": steps, "lr": params.relearn_lr, "rank": params.relearn_rank,
                       **{f"{role}_{k}": v for role, side in sides.items() for k, v in side.items() if k != "steps"}}
            if kind == "part":
                details["fraction"] = params.relearn_fraction
            views[f"relearn-{kind}-{steps}"] = view_result(
                "relearn", details, {role: side["steps"][steps] for role, side in sides.items()})
    return views


def run_attack(name: str, target: Target, params: AttackParams) -> dict[str, Any]:
    """The report entries (views) of one named attack."""
    if name in PROMPT_ATTACKS:
        pool = target.sets["retain"].records if "retain" in target.sets else []
        return {name: run_prompt_attack(prompt_attack(name, pool), target)}
    if name in WEIGHT_FAMILIES:
        return {rounding: run_weight_attack(rounding, target) for rounding in WEIGHT_FAMILIES[name]}
    if name == "relearn":
        return run_relearn(target, params)
    if name == "sampling":
        return {"sampling": {"attack": "sampling", **sampling_attack(target.model, target.loaded, target.sets,
                                                                       target.options, params)}}
    raise KeyError(name)
