"""The ``forgetkit`` command line: one sub-command per stage, each reading and writing artifacts."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from forgetkit import __version__
from forgetkit.console import console
from forgetkit.errors import ForgetkitError

app = typer.Typer(
    help="Make a language model forget specific data with small LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

TRUST = typer.Option(False, "--trust-remote-code", help="Allow model repositories to run their own code.")
DTYPE = typer.Option("auto", "--model-dtype", help="Weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")
TRUNCATE = typer.Option(False, "--truncate", help="Cut sequences longer than the model's context instead of failing.")
MODEL_HELP = "Base model: Hub id, local folder, .gguf file or a packaged shortcut (forgetkit models)."
CHECKPOINTING = typer.Option(False, "--gradient-checkpointing", help="Recompute activations in the backward pass: less memory, more time.")
REGISTRY = typer.Option(None, "--registry", help="Registry file (default: $FORGETKIT_REGISTRY, else in the cache).")


def user_errors(command: Callable) -> Callable:
    """Turn ForgetkitError into 'error: ...' on stderr and exit status 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from forgetkit.registry import use_registry

        # Every command takes --registry; choosing it here keeps the commands' bodies about their work.
        use_registry(kwargs.get("registry"))
        try:
            return command(*args, **kwargs)
        except ForgetkitError as exc:
            console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/]: nothing was written")
            raise typer.Exit(130)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"forgetkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """forgetkit: fisher -> init -> unlearn -> merge -> audit."""
    from forgetkit.console import quiet_libraries

    quiet_libraries()


@app.command()
@user_errors
def fisher(
    model: str = typer.Argument(..., help=MODEL_HELP),
    forget: str = typer.Argument(..., help="Forget set: .jsonl/.json/.csv or hf:ID[:CONFIG[:SPLIT]]."),
    retain: Optional[str] = typer.Option(None, "--retain", help="Retain set, same formats (recommended for FILA)."),
    output: Path = typer.Option(Path("fisher.safetensors"), "-o", "--output"),
    targets: str = typer.Option("all", "--targets", help="all | attn | mlp | name,name"),
    batch_size: int = typer.Option(8, "--batch-size"),
    estimator: str = typer.Option("batch", "--estimator", help="batch (LoKU's reference) or example (per-example)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Storage dtype: bfloat16, float16 or float32."),
    accumulate_on: str = typer.Option("device", "--accumulate-on", help="Fisher accumulators on the device or the cpu."),
    gradient_checkpointing: bool = CHECKPOINTING,
    model_dtype: str = DTYPE,
    truncate: bool = TRUNCATE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Diagonal Fisher of the NLL on the forget and retain sets, for every target weight."""
    from forgetkit.stages.fisher import FisherParams, run_fisher

    params = FisherParams(targets, batch_size, estimator, dtype, accumulate_on, model_dtype, truncate,
                          gradient_checkpointing=gradient_checkpointing)
    run_fisher(model, forget, retain, output, params, trust_remote_code=trust_remote_code)


@app.command()
@user_errors
def init(
    model: str = typer.Argument(..., help=MODEL_HELP),
    fisher: Optional[str] = typer.Option(None, "--fisher", help="Fisher artifact (needed by fila)."),
    scheme: str = typer.Option("fila", "--scheme", help="Init scheme: fila, lora, pissa or a plugin."),
    rank: int = typer.Option(8, "--rank"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha (default 2 * rank)."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Default: the Fisher's targets."),
    scheme_param: Optional[List[str]] = typer.Option(None, "--scheme-param", help="KEY=VALUE for the scheme."),
    output: Path = typer.Option(Path("init"), "-o", "--output"),
    seed: int = typer.Option(0, "--seed"),
    by_layer: bool = typer.Option(False, "--by-layer", help="FILA one weight at a time, without loading the model."),
    model_dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Build the starting LoRA adapter (FILA: Fisher-weighted low-rank approximation)."""
    from forgetkit.plugins import parse_params
    from forgetkit.stages.init import InitParams, run_init

    params = InitParams(scheme, rank, alpha, targets, parse_params(scheme_param, "--scheme-param"), model_dtype, seed,
                        by_layer=by_layer)
    run_init(model, output, params, fisher=fisher, trust_remote_code=trust_remote_code)


@app.command()
@user_errors
def unlearn(
    model: str = typer.Argument(..., help=MODEL_HELP),
    forget: Optional[str] = typer.Argument(None, help="Forget set (not used by --method llmeraser)."),
    retain: Optional[str] = typer.Option(None, "--retain", help="Retain set."),
    init: Optional[str] = typer.Option(None, "--init", help="Init artifact from 'forgetkit init' (default: plain LoRA)."),
    loss: str = typer.Option("ihl", "--loss", help="ihl, ga, gd, npo, kl, idk, unseen or a plugin."),
    loss_param: Optional[List[str]] = typer.Option(None, "--loss-param", help="KEY=VALUE for the loss (e.g. beta=0.1)."),
    output: Path = typer.Option(Path("adapter"), "-o", "--output"),
    rank: int = typer.Option(8, "--rank", help="LoRA rank when no --init is given."),
    alpha: Optional[float] = typer.Option(None, "--alpha"),
    targets: str = typer.Option("all", "--targets"),
    lr: float = typer.Option(1e-4, "--lr"),
    epochs: int = typer.Option(5, "--epochs"),
    batch_size: int = typer.Option(32, "--batch-size", help="Effective batch size."),
    micro_batch_size: int = typer.Option(8, "--micro-batch-size", help="Per forward pass; the rest is accumulation."),
    retain_micro_batch_size: Optional[int] = typer.Option(None, "--retain-micro-batch-size",
                                                          help="Retain records beside each forget micro-batch (default: --micro-batch-size)."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    seed: int = typer.Option(0, "--seed"),
    sam_rho: float = typer.Option(0.0, "--sam-rho", help="Sharpness-aware steps: take each step's gradient this far (L2, adapter weights) up its own slope, so the result resists relearning (0: off; two passes a step)."),
    relearn_rho: float = typer.Option(0.0, "--relearn-rho", help="Relearning-aware steps: take each step's gradient this far (L2, adapter weights) down the forget batch's NLL, where a relearning attack starts (0: off; one more pass a step)."),
    adversary_steps: int = typer.Option(0, "--adversary-steps", help="Train against a simulated relearning attacker: its AdamW steps per step (0: off; that many more passes a step)."),
    adversary_reset: int = typer.Option(8, "--adversary-reset", help="--adversary-steps: steps before a fresh attacker on a fresh pool of forget records."),
    adversary_pool: float = typer.Option(0.25, "--adversary-pool", help="--adversary-steps: share of forget records the attacker trains on."),
    adversary_weight: float = typer.Option(1.0, "--adversary-weight", help="--adversary-steps: weight of the loss taken under the attacker."),
    adversary_lr: float = typer.Option(1e-3, "--adversary-lr", help="--adversary-steps: the attacker's learning rate (the audit's relearning rate)."),
    adversary_rank: int = typer.Option(8, "--adversary-rank", help="--adversary-steps: the attacker's LoRA rank."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Held-out set (never trained on) for --target, --until-forgotten and --loss unseen."),
    until_forgotten: bool = typer.Option(False, "--until-forgotten", help="Stop once forget EL10 and MA fall below the held-out set's."),
    target: Optional[str] = typer.Option(None, "--target", help="Stop at a forgetting target measured like the audit: holdout or reference."),
    reference_report: Optional[str] = typer.Option(None, "--reference-report", help="--target reference: the audit report of a retain-only model."),
    check_every: int = typer.Option(0, "--check-every", help="--target: optimiser steps between checks (0: each epoch)."),
    target_patience: int = typer.Option(0, "--target-patience", help="--target: stop after this many checks in a row without "
                                        "a better evaluation than the kept one (0: run every epoch)."),
    target_auc_band: float = typer.Option(0.1, "--target-auc-band", help="--target: the MIA AUCs must lie within 0.5 +- this "
                                          "(the audit's band is 0.1; less stops with headroom for the audit's attacks)."),
    target_tokens: int = typer.Option(32, "--target-max-new-tokens", help="--target: greedy answer length for ROUGE-L (as the audit's --max-new-tokens)."),
    retain_nll_rise: float = typer.Option(1.0, "--target-retain-nll-rise",
                                          help="--target with --retain: how far (nats) the retain answers' mean NLL may rise."),
    holdout_quality: bool = typer.Option(False, "--holdout-quality",
                                         help="--target holdout on TOFU-format records: also require Forget Quality >= 0.05 estimated against the held-out set."),
    train_rewordings: int = typer.Option(0, "--train-rewordings", help="Also train each forget question under N training-only wordings (never the audit's)."),
    null_space: Optional[float] = typer.Option(None, "--null-space", help="Let the adapter read only this share (0-1) of each layer's input directions: those the retain set uses least."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch checkpoint."),
    method: str = typer.Option("train", "--method", help="train (a new LoRA, --loss) or llmeraser (edit --adapter)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="llmeraser: the fine-tuned LoRA adapter to edit."),
    train_set: Optional[str] = typer.Option(None, "--train", help="llmeraser: the set D the adapter was trained on."),
    remove: Optional[str] = typer.Option(None, "--remove", help="llmeraser: records of D to remove."),
    correct: Optional[str] = typer.Option(None, "--correct", help="llmeraser: records of D with their new answer."),
    modify: Optional[str] = typer.Option(None, "--modify", help="llmeraser: records with 'original_question' and a new question."),
    solver: str = typer.Option("cg", "--solver", help="llmeraser: cg (conjugate gradient) or lissa."),
    curvature: str = typer.Option("gauss-newton", "--curvature", help="llmeraser: gauss-newton (PSD) or hessian (exact)."),
    damping: float = typer.Option(1e-3, "--damping", help="llmeraser: lambda added to the Hessian."),
    tol: float = typer.Option(1e-4, "--tol", help="llmeraser: relative residual to stop at."),
    max_iter: int = typer.Option(100, "--max-iter", help="llmeraser: solver iterations at most."),
    hessian_samples: Optional[int] = typer.Option(None, "--hessian-samples", help="llmeraser: estimate the curvature on the edited records plus N others of D (default: all of D)."),
    gradient_checkpointing: bool = CHECKPOINTING,
    model_dtype: str = DTYPE,
    truncate: bool = TRUNCATE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Make the model forget: train a LoRA adapter on the forget set, or (--method llmeraser) edit a
    fine-tuned LoRA adapter with influence functions to remove, correct or modify training records."""
    from forgetkit.adversary import AdversaryConfig
    from forgetkit.audit.verdict import VerdictThresholds
    from forgetkit.plugins import parse_params
    from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
    from forgetkit.stopping import TargetParams
    from forgetkit.training import TrainConfig

    if target_patience < 0:
        raise ForgetkitError(f"--target-patience {target_patience}: a number of checks, 0 or more")
    if not 0 < target_auc_band <= 0.5:
        raise ForgetkitError(f"--target-auc-band {target_auc_band}: a band around 0.5 lies in (0, 0.5]")
    if reference_report and target != "reference":
        raise ForgetkitError("--reference-report goes with --target reference")
    if method == "llmeraser":
        from forgetkit.stages.llmeraser import EraserParams, run_llmeraser

        if adapter is None or train_set is None:
            raise ForgetkitError("--method llmeraser needs --adapter (the fine-tuned LoRA) and --train (its data)")
        eraser = EraserParams(solver=solver, curvature=curvature, damping=damping, weight_decay=weight_decay, tol=tol, max_iter=max_iter,
                              hessian_samples=hessian_samples, seed=seed,
                              model_dtype="float32" if model_dtype == "auto" else model_dtype, truncate=truncate)
        run_llmeraser(model, adapter, train_set, output, eraser, remove=remove, correct=correct, modify=modify,
                      trust_remote_code=trust_remote_code)
        return
    if method != "train":
        raise ForgetkitError(f"unknown method '{method}'; choose train or llmeraser")
    if forget is None:
        raise ForgetkitError("missing the forget set (forgetkit unlearn MODEL FORGET.jsonl ...)")

    params = UnlearnParams(
        loss=loss,
        loss_params=parse_params(loss_param, "--loss-param"),
        rank=rank,
        alpha=alpha,
        targets=targets,
        train=TrainConfig(lr, epochs, batch_size, micro_batch_size, weight_decay, max_grad_norm, seed, retain_micro_batch_size,
                          sam_rho=sam_rho, relearn_rho=relearn_rho,
                          adversary=AdversaryConfig(adversary_steps, adversary_lr, adversary_rank, adversary_reset,
                                                    adversary_pool, adversary_weight)),
        until_forgotten=until_forgotten,
        target=TargetParams(target, reference_report, check_every, target_tokens, retain_nll_rise=retain_nll_rise,
                            holdout_quality=holdout_quality, patience=target_patience,
                            thresholds=VerdictThresholds(mia_auc_band=target_auc_band, alpha=1.0)) if target else None,
        rewordings=train_rewordings,
        model_dtype=model_dtype,
        truncate=truncate,
        gradient_checkpointing=gradient_checkpointing,
        null_space=null_space,
    )
    run_unlearn(
        model, forget, output, params, retain=retain, init=init, holdout=holdout, resume=resume,
        trust_remote_code=trust_remote_code,
    )


@app.command()
@user_errors
def merge(
    model: str = typer.Argument(..., help=MODEL_HELP),
    adapter: str = typer.Argument(..., help="Adapter folder from 'forgetkit unlearn'."),
    output: Path = typer.Option(Path("merged"), "-o", "--output"),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size"),
    by_shard: bool = typer.Option(False, "--by-shard", help="Fold one base shard at a time (memory of a shard, not the model)."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Write one GGUF file (f32, f16, q8_0, q4_0) for llama.cpp/Ollama."),
    model_dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Fold the adapter into the base weights (sharded safetensors, config, tokenizer; or one GGUF file)."""
    from forgetkit.stages.merge import MergeParams, run_merge

    run_merge(model, adapter, output, MergeParams(max_shard_size, model_dtype, by_shard=by_shard, gguf=gguf),
              trust_remote_code=trust_remote_code)


@app.command()
@user_errors
def audit(
    model: str = typer.Argument(..., help=MODEL_HELP),
    forget: str = typer.Option(..., "--forget", help="Forget set."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Adapter to audit (the base is reported beside it)."),
    retain: Optional[str] = typer.Option(None, "--retain"),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Records the model never saw (MIA, verdict)."),
    real_authors: Optional[str] = typer.Option(None, "--real-authors", help="TOFU real-authors set (Model Utility)."),
    world_facts: Optional[str] = typer.Option(None, "--world-facts", help="TOFU world-facts set (Model Utility)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference model never trained on the forget set."),
    reference_report: Optional[str] = typer.Option(None, "--reference-report", help="Earlier report of the reference model."),
    suite: List[str] = typer.Option(["all"], "--suite", help="extraction | tofu | mia | all (repeat or comma-separate)."),
    attacks: Optional[List[str]] = typer.Option(
        None, "--attacks", help="paraphrase, prefix, in-context, role-play, quantize, nf4, gguf-q8_0, gguf-q4_0, relearn, "
        "sampling, or all (repeat or comma-separate)."),
    output: Path = typer.Option(Path("report.json"), "-o", "--output", help="JSON report; .md, .html, .plots/ beside it."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size", help="Sequences per teacher-forced pass."),
    generation_batch_size: int = typer.Option(32, "--generation-batch-size"),
    canary_candidates: int = typer.Option(255, "--canary-candidates", help="Same-format candidates per secret."),
    samples: int = typer.Option(32, "--samples", help="Sampling attack: completions per question."),
    relearn_steps: str = typer.Option("10,30,100", "--relearn-steps",
                                      help="Relearn attack: step budgets measured (comma-separated)."),
    relearn_lr: float = typer.Option(1e-3, "--relearn-lr"),
    relearn_rank: int = typer.Option(8, "--relearn-rank", help="Relearn attack: the attacker's LoRA rank (every linear layer)."),
    relearn_kinds: str = typer.Option("part,related", "--relearn-kinds",
                                      help="part (train on some forget records, measure the rest) and/or related "
                                      "(train on reworded records, measure the set)."),
    seed: int = typer.Option(0, "--seed"),
    significance: float = typer.Option(0.05, "--alpha", help="A check against the held-out control fails only when its gap "
                                       "is beyond the margin and its p-value is at most this (1: the margin alone decides)."),
    include_examples: bool = typer.Option(False, "--include-examples", help="Put record text and answers in the report."),
    skip_base: bool = typer.Option(False, "--skip-base", help="With --adapter: audit only the unlearned model."),
    model_dtype: str = DTYPE,
    truncate: bool = TRUNCATE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Extraction, TOFU and membership-inference metrics, attacks, a verdict, JSON/Markdown/HTML reports."""
    from forgetkit.audit.attacks import AttackParams, parse_budgets, parse_kinds
    from forgetkit.audit.verdict import VerdictThresholds
    from forgetkit.stages.audit import AuditParams, run_audit

    if relearn_rank < 1:
        raise ForgetkitError(f"--relearn-rank {relearn_rank}: the attacker's LoRA rank must be at least 1")
    if not 0 < significance <= 1:
        raise ForgetkitError(f"--alpha {significance}: a significance level is in (0, 1]")
    params = AuditParams(
        suites=tuple(suite), attacks=tuple(attacks or ()), max_new_tokens=max_new_tokens, batch_size=batch_size,
        generation_batch_size=generation_batch_size, canary_candidates=canary_candidates,
        include_examples=include_examples, skip_base=skip_base, model_dtype=model_dtype, truncate=truncate,
        attack=AttackParams(relearn_budgets=parse_budgets(relearn_steps), relearn_lr=relearn_lr, relearn_rank=relearn_rank,
                            relearn_kinds=parse_kinds(relearn_kinds), samples=samples, seed=seed),
        thresholds=VerdictThresholds(alpha=significance),
    )
    run_audit(model, output, params, forget=forget, retain=retain, holdout=holdout, real_authors=real_authors,
              world_facts=world_facts, adapter=adapter, reference=reference, reference_report=reference_report,
              trust_remote_code=trust_remote_code)


@app.command()
@user_errors
def probe(
    model: str = typer.Argument(..., help=MODEL_HELP),
    questions: Optional[str] = typer.Argument(
        None, help="Questions with the expected term as 'answer' (or in 'term'), optional 'subject'."
    ),
    general: bool = typer.Option(False, "--general", help="Ask the built-in general-knowledge questions instead."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the known questions, with the model's own answers (JSONL)."),
    summary: Optional[Path] = typer.Option(None, "--json", help="Write the counts and accuracies as JSON."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Probe the base with this unlearned adapter."),
    subject: Optional[List[str]] = typer.Option(None, "--subject", help="Only these subjects (repeat)."),
    exclude_subject: Optional[List[str]] = typer.Option(None, "--exclude-subject", help="Leave these subjects out (repeat)."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    model_dtype: str = DTYPE,
    trust_remote_code: bool = TRUST,
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Which facts the model knows: greedy answers naming the expected term; known ones become a data set."""
    from forgetkit.stages.probe import ProbeParams, run_probe

    if (questions is None) == (not general):
        raise ForgetkitError("give a QUESTIONS file or --general (not both)")
    params = ProbeParams(max_new_tokens=max_new_tokens, batch_size=batch_size, subjects=tuple(subject or ()),
                         exclude_subjects=tuple(exclude_subject or ()), model_dtype=model_dtype)
    run_probe(model, questions, params, known_output=output, summary_output=summary, adapter=adapter,
              trust_remote_code=trust_remote_code)


@app.command()
@user_errors
def plugins() -> None:
    """List the installed losses and init schemes (built-ins and plugins)."""
    from forgetkit.plugins import installed
    from forgetkit.stages.common import table

    from rich.console import Console

    rows = [(p.kind, p.name, p.provider, p.target) for p in installed()]
    Console(width=200).print(table("Installed plugins", ["kind", "name", "provider", "object"], rows))


@app.command()
@user_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Packaged pretrained models (GGUF shortcuts) and the cached conversions of GGUF files."""
    from forgetkit.stages.models import list_models

    list_models(as_json=as_json)


@app.command()
@user_errors
def quickstart(
    workdir: Path = typer.Option(Path("runs/quickstart"), "--workdir", help="Where the stage outputs go."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache (default ~/.cache/forgetkit)."),
    prepare_only: bool = typer.Option(
        False, "--prepare-only", help="Only build/reuse the model and copy the data sets; print the model folder."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="A pretrained model (e.g. smollm2-135m-instruct) to teach the people to and unlearn from."
    ),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Embedded demo: build a tiny model that memorised fictitious people, then make it forget a few
    (--model: teach them to a pretrained model instead, and check its general knowledge too)."""
    from forgetkit.quickstart.run import prepare_workdir, run_quickstart

    if model is not None:
        from forgetkit.quickstart.real import ensure_taught_model, run_real_quickstart

        if prepare_only:
            typer.echo(ensure_taught_model(model, cache) / "model")
            return
        run_real_quickstart(model, workdir, cache)
        return
    if prepare_only:
        typer.echo(prepare_workdir(workdir, cache))
        return
    run_quickstart(workdir, cache)


@app.command()
@user_errors
def push(
    adapter: Path = typer.Argument(..., help="Adapter folder from 'forgetkit unlearn'."),
    repo_id: str = typer.Option(..., "--repo-id", help="OWNER/NAME on the Hub."),
    report: Optional[str] = typer.Option(None, "--report", help="The adapter's audit report (report.json)."),
    no_report: bool = typer.Option(False, "--no-report", help="Publish without an audit report."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to push to (created if absent)."),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write the folder that would be uploaded here; send nothing."),
    forget: Optional[str] = typer.Option(None, "--forget", help="The forget set, if it moved since unlearning (for the leak check)."),
    license: str = typer.Option("other", "--license", help="License id for the model card."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Hub id of the base, if the adapter was made from a local folder."),
    message: Optional[str] = typer.Option(None, "--message", help="Commit message."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Publish an adapter with its audit report and a model card on the Hugging Face Hub."""
    from forgetkit.stages.push import PushParams, run_push

    run_push(adapter, PushParams(repo_id=repo_id, report=report, no_report=no_report, private=private,
                                 revision=revision, dry_run=dry_run, forget=forget, license=license,
                                 base_model=base_model, message=message))


@app.command()
@user_errors
def pull(
    repo_id: str = typer.Argument(..., help="OWNER/NAME (or OWNER/NAME@REVISION) on the Hub."),
    revision: Optional[str] = typer.Option(None, "--revision"),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Fetch a pushed adapter into the Hugging Face cache and print its folder."""
    from forgetkit.stages.pull import run_pull

    typer.echo(run_pull(repo_id, revision))


registry_app = typer.Typer(help="The local registry of artifacts and their lineage.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("list")
@user_errors
def registry_list(
    base: Optional[str] = typer.Option(None, "--base", help="Only this base model (id part or fingerprint prefix)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Only this stage."),
    all_entries: bool = typer.Option(False, "--all", help="Include entries replaced by a newer artifact at the same path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Recorded artifacts, newest last."""
    from forgetkit.stages.registry import list_entries

    list_entries(base=base, stage=stage, include_replaced=all_entries, as_json=as_json)


@registry_app.command("show")
@user_errors
def registry_show(
    entry: str = typer.Argument(..., help="Entry id (4 characters or more) or the artifact's path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a tree."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """The lineage of an entry: the artifacts and data it came from, its audits and pushes."""
    from forgetkit.stages.registry import show_entry

    show_entry(entry, as_json=as_json)


@registry_app.command("verify")
@user_errors
def registry_verify(
    entry: Optional[str] = typer.Argument(None, help="Entry id or path; all current entries if omitted."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Re-hash an entry's files and report any change (exit status 1 if something changed)."""
    from forgetkit.stages.registry import verify_entries

    if not verify_entries(entry):
        raise typer.Exit(1)


@registry_app.command("forget")
@user_errors
def registry_forget(
    entry: str = typer.Argument(..., help="Entry id or path."),
    delete_files: bool = typer.Option(False, "--delete-files", help="Also delete the artifact's files."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Drop an entry from the registry; its files stay unless --delete-files."""
    from forgetkit.stages.registry import forget_entry

    forget_entry(entry, delete_files=delete_files)


@registry_app.command("add")
@user_errors
def registry_add(
    paths: List[Path] = typer.Argument(..., help="Artifacts (files, folders, audit reports) to record."),
    registry: Optional[Path] = REGISTRY,
) -> None:
    """Record artifacts made elsewhere or before the registry existed."""
    from forgetkit.stages.registry import add_entries

    add_entries(paths)


def _close_process_group() -> None:
    """Tear down a launcher's process group before the interpreter does: left to shutdown, a rank of a
    finished stage has been seen to abort ("terminate called without an active exception") while gloo's
    threads were still up, failing a run whose artifact was already written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run() -> None:  # console-script entry point
    try:
        app()
    finally:
        _close_process_group()


if __name__ == "__main__":
    try:
        sys.exit(app())
    finally:
        _close_process_group()
