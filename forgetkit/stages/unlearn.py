"""``forgetkit unlearn``: train a LoRA adapter that makes the model forget the forget set."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from forgetkit import registry
from forgetkit.adapters import add_reference_adapter, build_peft_model, load_init_adapter, lora_config, save_adapter
from forgetkit.artifacts import Metadata, atomic_folder, check_artifact, input_record, write_folder_metadata, write_json
from forgetkit.console import console
from forgetkit.data import encode
from forgetkit.distributed import gather_objects, main_writes, make_accelerator, ranks_of, shard_base, sharded_base_requested
from forgetkit.errors import ForgetkitError
from forgetkit.metrics.extraction import exact_memorisation, extraction_likelihood, mean, teacher_forced
from forgetkit.models import discover_targets, enable_gradient_checkpointing, load_model
from forgetkit.nullspace import confine
from forgetkit.plugins import load_loss
from forgetkit.stages.common import load_examples, table
from forgetkit.stopping import TargetMonitor, TargetParams
from forgetkit.wording import reworded, used_templates
from forgetkit.training import TrainConfig, check_config, train
from forgetkit.zero import deepspeed_requested, gathered

TRAINING_LOG = "training_log.json"


@dataclasses.dataclass
class UnlearnParams:
    loss: str = "ihl"
    loss_params: dict[str, str] = dataclasses.field(default_factory=dict)
    rank: int = 8  # used without --init; with it, the init's rank applies
    alpha: float | None = None
    targets: str = "all"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    until_forgotten: bool = False
    target: TargetParams | None = None  # stop at a forgetting target measured like the audit (forgetkit.stopping)
    rewordings: int = 0  # each forget question also trained under this many training-only wordings
    model_dtype: str = "auto"
    truncate: bool = False
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass
    null_space: float | None = None  # adapter reads only this share of input directions, those retain uses least


def forgetting_status(model, tokenizer, forget, holdout) -> dict[str, float]:
    """EL10 and exact memorisation (answer-token MA) on forget and held-out examples (Jang et al. 2023's stopping rule: the forget
    set counts as forgotten once it is no more extractable than data the model never saw)."""
    status = {}
    for label, examples in (("forget", forget), ("holdout", holdout)):
        el = extraction_likelihood(model, tokenizer, examples, ns=(10,))[10]
        em = exact_memorisation(teacher_forced(model, examples, tokenizer.pad_token_id))
        status[f"{label}_el10"] = mean(el) or 0.0
        status[f"{label}_em"] = mean(em) or 0.0
    return status


def run_unlearn(
    model_ref: str,
    forget: str,
    output: str | Path,
    params: UnlearnParams,
    *,
    retain: str | None = None,
    init: str | None = None,
    holdout: str | None = None,
    resume: bool = False,
    trust_remote_code: bool = False,
) -> Metadata:
    output = Path(output)
    loss_fn = load_loss(params.loss, params.loss_params)
    if params.until_forgotten and holdout is None:
        raise ForgetkitError("--until-forgotten needs a held-out set (--holdout) to compare against")
    if params.target is not None and holdout is None:
        raise ForgetkitError(f"--target {params.target.name} needs a held-out set (--holdout) to compare against")
    if params.target is not None and params.until_forgotten:
        raise ForgetkitError("give either --until-forgotten or --target, not both (--target holdout is the complete rule)")
    registry.ensure_ready()
    accelerator = make_accelerator()
    ranks = ranks_of(accelerator)
    # FSDP splits the base here; DeepSpeed's engine partitions it (ZeRO-3) when training starts.
    in_deepspeed = deepspeed_requested()
    sharded = sharded_base_requested() and ranks.world > 1 and not in_deepspeed
    check_config(params.train, deepspeed=in_deepspeed)  # before the checkpoint folder is made
    if params.null_space is not None and retain is None:
        raise ForgetkitError("--null-space needs a retain set (--retain): it keeps the adapter off the directions retain uses")
    if params.null_space is not None and not 0.0 < params.null_space < 1.0:
        raise ForgetkitError(f"--null-space {params.null_space}: give the share of directions left free, between 0 and 1")
    if params.null_space is not None and (sharded or in_deepspeed):
        raise ForgetkitError("--null-space is not supported with a split base (FSDP or DeepSpeed ZeRO-3) yet")
    if params.train.adversary.steps and sharded:
        raise ForgetkitError("--adversary-steps is not supported with a split base (FSDP) yet; use a data-parallel launch")
    if params.target is not None and (sharded or in_deepspeed):
        raise ForgetkitError("--target is not supported with a split base (FSDP or DeepSpeed ZeRO-3) yet; "
                             "use --until-forgotten there, or a data-parallel launch")
    # A split base is built on the host and split before it reaches the device: no process ever
    # holds the whole model in device memory.
    load_device = torch.device("cpu") if sharded or in_deepspeed else accelerator.device
    loaded = load_model(model_ref, dtype=params.model_dtype, device=load_device,
                        runs_on=accelerator.device, trust_remote_code=trust_remote_code)
    tokenizer = loaded.tokenizer

    # Which wordings training saw, so the audit can say its paraphrase attack used none of them.
    wording = {"rewordings_per_question": params.rewordings, "templates": []}

    def prepare_forget(records):
        wording["templates"] = used_templates(records, params.rewordings)
        return loss_fn.prepare_forget(reworded(records, params.rewordings))

    forget_records, forget_examples = load_examples(forget, loaded, truncate=params.truncate, prepare=prepare_forget)
    forget_examples = loss_fn.prepare_examples(
        forget_records, forget_examples,
        lambda records: encode(records, tokenizer, context_length=loaded.context_length, truncate=params.truncate))
    retain_examples = load_examples(retain, loaded, truncate=params.truncate)[1] if retain else None
    holdout_examples = training_holdout = None
    if holdout:
        holdout_records, holdout_examples = load_examples(holdout, loaded, truncate=params.truncate)
        # What the loss sees may carry more (e.g. wrong answers); the stopping checks score the plain records.
        training_holdout = loss_fn.prepare_holdout(
            holdout_records, holdout_examples,
            lambda records: encode(records, tokenizer, context_length=loaded.context_length, truncate=params.truncate))
    # The stopping rule measures the original forget targets, not a loss's rewritten ones (idk).
    original_forget = (
        load_examples(forget, loaded, truncate=params.truncate)[1] if params.until_forgotten else forget_examples
    )

    torch.manual_seed(params.train.seed)
    mutates_base = False
    if init is not None:
        init_meta = check_artifact(init, "init", loaded.info)
        mutates_base = bool(init_meta.results.get("mutates_base", False))
        model = load_init_adapter(loaded.model, init, mutates_base)
        if loss_fn.needs_reference and mutates_base:
            add_reference_adapter(model, init)
        rank, alpha = init_meta.parameters["rank"], init_meta.parameters["lora_alpha"]
    else:
        rank = params.rank
        alpha = float(params.alpha if params.alpha is not None else 2 * params.rank)
        model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, params.targets), rank, alpha))

    confinement = None
    if params.null_space is not None:
        # After FILA/PiSSA the base is W - s B A: confine keeps base + adapter = W while it projects A.
        confinement = confine(model, retain_examples, tokenizer.pad_token_id, params.null_space, residual_base=mutates_base)
    checkpointed = enable_gradient_checkpointing(model) if params.gradient_checkpointing else 0
    sharding = shard_base(model, ranks, accelerator.device) if sharded else None

    checkpoints = output.with_name(output.name + ".checkpoints")
    with main_writes(ranks) as writer:
        if writer:
            _guard_resume(checkpoints, params, resume)

    monitor = None
    if params.target is not None:
        monitor = TargetMonitor(model, loaded, forget, holdout, params.target, input_record(forget).get("sha256", ""),
                                ranks, truncate=params.truncate, retain=retain)

    def stop_check(epoch: int, step: int) -> str | None:
        if monitor is not None:
            return monitor(epoch, step)
        if not params.until_forgotten:
            return None
        # Every process measures the whole status (with a split base all must run the same passes);
        # rank 0's decides, so no process can stop an epoch before the others.
        status = gather_objects(forgetting_status(model, tokenizer, original_forget, holdout_examples), ranks)[0]
        if ranks.is_main:
            console.print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in status.items()))
        # "<=": a never-seen set often has EL10 exactly 0, and matching it is the goal.
        if status["forget_el10"] <= status["holdout_el10"] and status["forget_em"] <= status["holdout_em"]:
            return f"forgotten after epoch {epoch}: forget EL10 and EM at or below the held-out set's"
        return None

    with confinement.after_every_step() if confinement else contextlib.nullcontext():
        result = train(
            model,
            loss_fn,
            forget_examples,
            retain_examples,
            tokenizer.pad_token_id,
            params.train,
            accelerator=accelerator,
            bf16_autocast=accelerator.device.type == "cuda" and params.model_dtype != "float32",
            checkpoint_dir=checkpoints,
            resume=resume,
            stop_check=stop_check,
            check_every=params.target.check_every if params.target else 0,
            holdout=training_holdout,
            # Every forward pass of a split base gathers weights across processes: all take the same number.
            equal_passes=sharded or in_deepspeed,
            deepspeed=in_deepspeed,
        )
    sharding = sharding or result.sharded_base
    target_record = None
    if monitor is not None:
        if result.stopped_early is None and (not monitor.evaluations or monitor.evaluations[-1]["step"] != result.steps):
            monitor(result.epochs_run, result.steps)  # the final weights are a candidate too
        restored = monitor.restore_best(result.steps)
        target_record = monitor.record(result.stopped_early, result.steps, restored)
        if ranks.is_main:
            console.print(target_record["stopped"])
    model = accelerator.unwrap_model(model)
    final = result.log[-1] if result.log else {}
    metadata = Metadata(
        stage="unlearn",
        base_model=loaded.info,
        inputs={
            name: input_record(path)
            for name, path in (("forget", forget), ("retain", retain), ("init", init), ("holdout", holdout))
            if path is not None
        },
        parameters={**dataclasses.asdict(params), "rank": rank, "lora_alpha": alpha},
        results={
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "stopped_early": result.stopped_early,
            "final_terms": {k: v for k, v in final.items() if k not in ("epoch", "step")},
            "train_tokens": result.tokens,
            "seconds": round(result.seconds, 3),
            "tokens_per_second": round(result.tokens / result.seconds, 1) if result.seconds else None,
            "adapter_rank": rank * 2 if mutates_base else rank,
            "converted_from_residual_base": mutates_base,
            "processes": ranks.world,
            "sharded_base": sharding,  # blocks, and the weight bytes one process held against the whole model's
            "checkpointed_blocks": checkpointed,
            # Per confined layer, the share of retain's input energy the adapter can still read.
            "null_space_leak": (
                {"max": max(confinement.leak.values()), "mean": sum(confinement.leak.values()) / len(confinement.leak)}
                if confinement else None
            ),
            "target": target_record,
            "forget_wording": wording,
        },
    )
    adapter_weights = [p for name, p in model.named_parameters() if "lora_" in name]
    with gathered(adapter_weights), main_writes(ranks) as writer:  # ZeRO-3 partitions the adapter too
        if writer:
            with atomic_folder(output) as staging:
                save_adapter(model, staging, Path(init) if init else None, mutates_base,
                             confinement.initial_a if confinement is not None else None)
                write_folder_metadata(staging, metadata)
                write_json(staging / TRAINING_LOG, result.log)
            registry.record(output)
            shutil.rmtree(checkpoints, ignore_errors=True)
            _print_summary(result, output)
    return metadata


def _guard_resume(checkpoints: Path, params: UnlearnParams, resume: bool) -> None:
    """Checkpoints belong to one set of parameters; refuse to mix runs."""
    fingerprint = json.dumps(dataclasses.asdict(params), sort_keys=True, default=str)
    marker = checkpoints / "params.json"
    if checkpoints.exists() and not resume:
        shutil.rmtree(checkpoints)
    if resume and marker.is_file() and marker.read_text() != fingerprint:
        raise ForgetkitError(f"{checkpoints}: checkpoints were made with other parameters; rerun without --resume")
    checkpoints.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def _print_summary(result, output: Path) -> None:
    per_epoch: dict[int, list[dict]] = {}
    for entry in result.log:
        per_epoch.setdefault(entry["epoch"], []).append(entry)
    keys = list(dict.fromkeys(k for entry in result.log for k in entry if k not in ("epoch", "step")))

    def mean_of(entries: list[dict], key: str) -> float | None:
        values = [e[key] for e in entries if key in e]  # a plugin loss may log a term only at some steps
        return sum(values) / len(values) if values else None

    rows = [[epoch] + [mean_of(entries, k) for k in keys] for epoch, entries in per_epoch.items()]
    console.print(table("Unlearning (mean per epoch)", ["epoch", *keys], rows))
    if result.stopped_early:
        console.print(result.stopped_early)
    console.print(
        f"[green]wrote[/] {output}  ({result.steps} steps, {result.seconds:.1f}s, "
        f"{result.tokens / max(result.seconds, 1e-9):.0f} tokens/s)"
    )
