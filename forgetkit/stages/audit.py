"""``forgetkit audit``: does the forget data still come out, can membership still be told, does it
come back under attack, and is the model still good?

Models audited side by side ("variants"): with ``--adapter``, the base model (adapter off) and the
unlearned model; without, the model itself; plus a reference model never trained on the forget set
(``--reference``), or that reference's statistics from an earlier report (``--reference-report``).
Per set and variant the suites' metrics (``forgetkit.audit.evaluate``); across sets MIA AUCs and
Model Utility; against the reference Forget Quality and PrivLeak; then attacks and a verdict.

Writes the JSON report (every number, per-record arrays) and beside it ``<name>.md``,
``<name>.html`` and ``<name>.plots/``. Reports hold numbers only: record text, generated
answers and secrets are added solely with ``include_examples``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from peft import PeftModel

from forgetkit import __version__
from forgetkit import registry
from forgetkit.artifacts import check_artifact, input_record, write_json
from forgetkit.audit import aggregate
from forgetkit.audit.attacks import ATTACKS, NEEDS_A_WHOLE_COPY, AttackParams, Target, run_attack
from forgetkit.audit.evaluate import SUITES, EvalOptions, evaluate_set
from forgetkit.audit.reference import REPORT_KIND, reference_from_report
from forgetkit.audit.report import write_readable
from forgetkit.audit.sets import EvalSet, load_eval_set
from forgetkit.audit.verdict import VerdictThresholds, decide
from forgetkit.console import console, progress_bar
from forgetkit.distributed import Ranks, main_writes, make_accelerator, ranks_of, shard_base, sharded_base_requested
from forgetkit.errors import ForgetkitError
from forgetkit.hub.resolve import local_artifact
from forgetkit.models import LoadedModel, load_model
from forgetkit.stages.common import table

REPORT_SCHEMA_VERSION = 3  # 3: attacks as views measured by the ordinary evaluation
FAILED_SHOWN = 6  # failed checks named on the console; the report lists every check
SUMMARY_KEYS = ("rouge_l", "el10", "em", "probability", "truth_ratio", "canary_exposure", "nll")


@dataclasses.dataclass
class AuditParams:
    suites: tuple[str, ...] = ("all",)
    attacks: tuple[str, ...] = ()
    max_new_tokens: int = 200
    batch_size: int = 16
    generation_batch_size: int = 32
    canary_candidates: int = 255
    include_examples: bool = False
    skip_base: bool = False  # with an adapter: audit only the unlearned model (the base was audited already)
    model_dtype: str = "auto"
    truncate: bool = False
    attack: AttackParams = dataclasses.field(default_factory=AttackParams)
    thresholds: VerdictThresholds = dataclasses.field(default_factory=VerdictThresholds)


def parse_names(values: tuple[str, ...] | list[str], known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Comma- or repeat-separated names; ``all`` expands to every known one."""
    names = [n.strip() for value in values for n in str(value).split(",") if n.strip()]
    if "all" in names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ForgetkitError(f"unknown {what} '{unknown[0]}'; choose from {', '.join(known)} or all")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass
class Variant:
    name: str
    model: torch.nn.Module
    context: Callable[[], Any]
    materialise: Callable[[], torch.nn.Module]  # a fresh plain copy, for attacks that change weights
    training_templates: list[str] | None = None  # the wordings its adapter was trained under (paraphrase attack)


def _check_suites(requested: tuple[str, ...], explicit: bool, sets: dict[str, EvalSet]) -> tuple[str, ...]:
    """Drop suites the data cannot serve when ``all`` was asked; refuse when one was named."""
    suites = list(requested)
    if "mia" in suites and "holdout" not in sets:
        if explicit:
            raise ForgetkitError("the mia suite needs a held-out set the model never saw (--holdout)")
        suites.remove("mia")
    if "tofu" in suites and sets["forget"].truth_ratio is None:
        if explicit:
            raise ForgetkitError(
                f"{sets['forget'].source}: the tofu suite needs forget records with 'perturbed_answer' "
                "(and 'paraphrased_answer') fields, as in TOFU"
            )
        suites.remove("tofu")
    return tuple(suites)


def _variants(loaded: LoadedModel, model_ref: str, adapter: str | None, params: AuditParams,
              trust_remote_code: bool) -> list[Variant]:
    def fresh_base() -> torch.nn.Module:
        return load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code).model

    if adapter is None:
        return [Variant("model", loaded.model, nullcontext, fresh_base)]
    adapter_meta = check_artifact(adapter, "unlearn", loaded.info)
    peft_model = PeftModel.from_pretrained(loaded.model, adapter)
    peft_model.eval()
    templates = (adapter_meta.results.get("forget_wording") or {}).get("templates") or None
    unlearned = Variant("unlearned", peft_model, nullcontext,
                        lambda: PeftModel.from_pretrained(fresh_base(), adapter).merge_and_unload(), templates)
    if params.skip_base:
        return [unlearned]
    return [Variant("base", peft_model, peft_model.disable_adapter, fresh_base), unlearned]


def _reference_variant(reference: str, loaded: LoadedModel, params: AuditParams, trust_remote_code: bool,
                       runs_on: torch.device) -> Variant:
    ref = load_model(reference, dtype=params.model_dtype, device=next(loaded.model.parameters()).device,
                     runs_on=runs_on, trust_remote_code=trust_remote_code)
    if ref.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        raise ForgetkitError(f"{reference}: the reference model's tokenizer differs from the audited model's")
    return Variant("reference", ref.model, nullcontext,
                   lambda: load_model(reference, dtype=params.model_dtype, trust_remote_code=trust_remote_code).model)


def audit_variant(variant: Variant, loaded: LoadedModel, sets: dict[str, EvalSet], options: EvalOptions,
                  params: AuditParams, advance: Callable[..., None]) -> dict[str, Any]:
    out: dict[str, Any] = {"sets": {}}
    with variant.context():
        for name, evalset in sets.items():
            out["sets"][name] = evaluate_set(variant.model, loaded.tokenizer, evalset, options)
            advance()
        out["mia"] = aggregate.membership(out["sets"]) if "mia" in options.suites else {}
        out["tofu"] = {"model_utility": aggregate.utility(out["sets"])} if "tofu" in options.suites else {}
        out["reference_stats"] = aggregate.reference_stats(out)
        target = Target(variant.model, variant.materialise, loaded, sets, out["sets"], options, variant.training_templates)
        attacks: dict[str, Any] = {}
        # The base model (adapter off) is the before-picture: it still holds the data, so attacking it
        # would measure nothing and cost as much again.
        seconds: dict[str, float] = {}
        for attack in params.attacks if variant.name != "base" else ():
            started = time.perf_counter()
            attacks.update(run_attack(attack, target, params.attack))
            seconds[attack] = round(time.perf_counter() - started, 2)
            advance()
        out["attacks"] = attacks
        if seconds:
            out["attack_seconds"] = seconds  # what each named attack cost, evaluation included
    return out


def run_audit(
    model_ref: str,
    output: str | Path,
    params: AuditParams,
    *,
    forget: str,
    retain: str | None = None,
    holdout: str | None = None,
    real_authors: str | None = None,
    world_facts: str | None = None,
    adapter: str | None = None,
    reference: str | None = None,
    reference_report: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    output = Path(output)
    if reference and reference_report:
        raise ForgetkitError("give either --reference or --reference-report, not both")
    explicit = "all" not in params.suites
    suites = parse_names(params.suites, SUITES, "suite")
    attack_names = parse_names(params.attacks, ATTACKS, "attack") if params.attacks else ()
    params = dataclasses.replace(params, suites=suites, attacks=attack_names)

    adapter = local_artifact(adapter)
    registry.ensure_ready()
    accelerator = make_accelerator()
    ranks = ranks_of(accelerator)
    sharded = sharded_base_requested() and ranks.world > 1
    if sharded and set(NEEDS_A_WHOLE_COPY) & set(attack_names):
        raise ForgetkitError(f"the {', '.join(NEEDS_A_WHOLE_COPY)} attacks load a whole copy of the model; "
                             "they are not supported with a split base (FSDP or DeepSpeed ZeRO-3) yet")
    # A sharded base is built on the host and split before it reaches the device.
    load_device = torch.device("cpu") if sharded else accelerator.device
    loaded = load_model(model_ref, dtype=params.model_dtype, device=load_device,
                        runs_on=accelerator.device, trust_remote_code=trust_remote_code)
    sources = {"forget": forget, "retain": retain, "holdout": holdout, "real_authors": real_authors,
               "world_facts": world_facts}
    sources = {role: path for role, path in sources.items() if path}
    sets = {
        role: load_eval_set(role, path, loaded, truncate=params.truncate,
                            canary_candidates=params.canary_candidates if "extraction" in suites else 0,
                            need_truth_ratio="tofu" in suites)
        for role, path in sources.items()
    }
    suites = _check_suites(suites, explicit, sets)
    params = dataclasses.replace(params, suites=suites)
    forget_sha = input_record(forget).get("sha256", "")
    reference_stats = reference_from_report(reference_report, forget_sha) if reference_report else None

    variants = _variants(loaded, model_ref, adapter, params, trust_remote_code)
    if reference:
        variants.append(_reference_variant(reference, loaded, params, trust_remote_code, accelerator.device))
    layouts = [shard_base(model, ranks, accelerator.device)
               for model in {id(v.model): v.model for v in variants}.values()] if sharded else []
    # With a sharded base every process evaluates every record: each forward pass gathers weights
    # from all processes, so all must run the same passes (record-sharded batches would not).
    options = EvalOptions(suites, params.max_new_tokens, params.batch_size, params.generation_batch_size,
                          params.include_examples, Ranks(0, 1) if sharded else ranks)
    results: dict[str, Any] = {}
    steps = sum(len(sets) + (len(params.attacks) if v.name != "base" else 0) for v in variants)
    with progress_bar("auditing", steps) as advance:
        for variant in variants:
            results[variant.name] = audit_variant(variant, loaded, sets, options, params, advance)

    if reference:
        reference_stats = {**results["reference"]["reference_stats"], "source": {"model": reference}}
    for name, value in results.items():
        if name == "reference":
            continue
        if reference_stats:
            value.setdefault("tofu", {}).update(aggregate.compare_with_reference(value, reference_stats))
        value["verdict"] = decide(value, params.thresholds)

    report = {
        "kind": REPORT_KIND,
        "schema_version": REPORT_SCHEMA_VERSION,
        "stage": "audit",
        "forgetkit_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": dataclasses.asdict(loaded.info),
        "adapter": input_record(adapter) if adapter else None,
        "reference": reference_stats,
        "inputs": {name: input_record(path) for name, path in sources.items()},
        "suites": list(suites),
        "attacks": list(params.attacks),
        "parameters": dataclasses.asdict(params),
        "processes": ranks.world,
        "sharded_base": layouts[0] if layouts else None,  # the model's split, and one process's share of it
        "redacted": not params.include_examples,
        "results": results,
    }
    with main_writes(ranks) as writer:
        if writer:
            _write_report(report, output)
    return report


def _write_report(report: dict[str, Any], output: Path) -> None:
    results = report["results"]
    readable = write_readable(report, output.with_suffix(".md"), output.with_suffix(".html"),
                              output.with_name(output.stem + ".plots"))
    write_json(output, report)
    registry.record(output)
    console.print(summary_table(results))
    if (mia := mia_table(results)) is not None:
        console.print(mia)
    console.print(verdict_lines(results))
    console.print(f"[green]wrote[/] {output}, {readable[0].name}, {readable[1].name} and {len(readable) - 2} plots")


def summary_table(results: dict[str, Any]):
    variants = list(results)
    sets = list(next(iter(results.values()))["sets"])
    columns = ["metric"] + [f"{s} {v}" if len(variants) > 1 else s for s in sets for v in variants]
    rows = []
    for key in SUMMARY_KEYS:
        row: list[Any] = [key] + [results[v]["sets"][s]["summary"].get(key) for s in sets for v in variants]
        if any(x is not None for x in row[1:]):
            rows.append(row)
    return table("Audit", columns, rows)


def mia_table(results: dict[str, Any]):
    rows = []
    for variant, value in results.items():
        for member, scores in value.get("mia", {}).items():
            rows.append([f"{variant}: {member} vs held-out"] + [scores[s]["auc"] for s in scores])
    if not rows:
        return None
    scores = list(next(v for v in results.values() if v.get("mia"))["mia"]["forget"])
    return table("Membership inference AUC (0.5 = indistinguishable)", ["model: sets"] + scores, rows)


def verdict_lines(results: dict[str, Any]) -> str:
    lines = []
    for name, value in results.items():
        if "verdict" not in value:
            continue
        verdict = value["verdict"]
        colour = {"forgotten": "green", "partially forgotten": "yellow"}.get(verdict["verdict"], "red")
        names = verdict["failed"]
        shown = ", ".join(names[:FAILED_SHOWN]) + (f" and {len(names) - FAILED_SHOWN} more, in the report"
                                                   if len(names) > FAILED_SHOWN else "")
        failed = f" (failed: {shown})" if names else ""
        tofu = value.get("tofu", {})
        extra = "".join(
            f", {label} {tofu[key]:.4g}" for key, label in (("forget_quality", "Forget Quality"),) if tofu.get(key) is not None
        )
        utility = (tofu.get("model_utility") or {}).get("value")
        if utility is not None:
            extra += f", Model Utility {utility:.4g}"
        noise = verdict.get("within_noise") or []
        if noise:
            extra += (f"; {len(noise)} check{'s' if len(noise) > 1 else ''} beyond the margin but within sampling noise "
                      "(more records would tell; see the report)")
        lines.append(f"{name}: [{colour}]{verdict['verdict']}[/]{failed}{extra}")
    return "\n".join(lines)
