"""``forgetkit unlearn --method llmeraser``: edit a fine-tuned LoRA adapter with influence functions
instead of retraining it (Ding et al. 2024, "Unified Parameter-Efficient Unlearning for LLMs").

The adapter was trained on D (n records). With theta its LoRA parameters and H the Hessian of the
mean training loss at theta (weight decay included) plus damping lambda I:

- removal of R:           theta' = theta + (1/n) H^-1 sum_{z in R} grad l(z)
- correction/modification: theta' = theta - (1/n) H^-1 sum_{(old, new)} (grad l(z_new) - grad l(z_old))

H^-1 v comes from conjugate gradient (default) or LiSSA on curvature-vector products over the LoRA
parameters only (forgetkit.influence), on D or a seeded sample of it (``hessian_samples``). The
edited adapter keeps the rank and config of the original: a plain PEFT adapter.

Where we differ from the authors' code (a recommendation setting, LLaMA-2 + LoRA + projector):
- they solve min_x 1/2 x^T H x - b^T x with a few Adam steps on single samples and a
  Hessian-vector product built without ``create_graph``, whose fixed point is 2 (H + 2 lambda I)^-1 b
  and which stops far from convergence; we solve (H + lambda I) x = b to a stated relative residual
  and report the iterations and the residual reached;
- H is by default the generalised Gauss-Newton matrix, not the exact Hessian (``--curvature
  hessian`` gives that, by double backward): a LoRA product B A has a saddle where B A is small, and
  the exact Hessian of adapters fitted on our test cases is indefinite, which makes H^-1 b
  meaningless; the Gauss-Newton matrix is positive semi-definite and equals the Hessian where the
  adapter fits its data;
- gradients and curvature are taken in eval mode (LoRA dropout off) and include the training's
  weight decay (``--weight-decay``), so H is that of the objective the adapter was trained on;
- when conjugate gradient meets negative curvature (the exact Hessian, or an adapter far from a
  minimum) the damping is raised tenfold and the solve restarted, and the damping used is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from forgetkit import registry
from forgetkit.artifacts import BaseModelInfo, Metadata, atomic_folder, input_record, model_fingerprint, read_metadata, \
    write_folder_metadata
from forgetkit.console import console, progress_bar
from forgetkit.data import Example, Record, encode, load_records
from forgetkit.errors import ForgetkitError
from forgetkit.hub.resolve import local_artifact
from forgetkit.influence.hessian import CURVATURES, AdapterObjective
from forgetkit.influence.solvers import Solution, conjugate_gradient, lissa, norm
from forgetkit.models import LoadedModel, load_model
from forgetkit.stages.common import table

EDITS = ("remove", "correct", "modify")
SOLVERS = ("cg", "lissa")


@dataclasses.dataclass
class EraserParams:
    solver: str = "cg"
    curvature: str = "gauss-newton"  # or "hessian" (exact, but indefinite at most trained LoRAs)
    damping: float = 1e-3
    weight_decay: float = 0.0  # the fine-tuning's, so H is the Hessian of the objective it minimised
    tol: float = 1e-4
    max_iter: int = 100
    hessian_samples: int | None = None  # records of D besides the edited ones for the curvature (default: all)
    batch_size: int = 8
    seed: int = 0
    model_dtype: str = "float32"  # second derivatives want full precision
    truncate: bool = False


@dataclasses.dataclass
class EditPlan:
    kind: str
    old: list[Record]  # the records of D being removed or replaced
    new: list[Record]  # their replacements (empty for removal)


def record_key(record: Record) -> tuple[str, ...]:
    if record.is_qa:
        return ("qa", record["question"], record["answer"])
    return ("text", record["text"])


def plan_edit(kind: str, train: list[Record], edits: list[Record], train_path: str) -> EditPlan:
    """Match edit records to the training records they change; refuse any that are not in D."""
    by_key = {record_key(r): r for r in train}
    by_question: dict[str, Record] = {}
    for record in train:
        if record.is_qa:
            by_question.setdefault(record["question"], record)
    old, new = [], []
    for record in edits:
        if kind == "remove":
            match = by_key.get(record_key(record))
            if match is None:
                raise ForgetkitError(f"{record.source}: not a record of the training set {train_path}")
            old.append(match)
            continue
        if not record.is_qa:
            raise ForgetkitError(f"{record.source}: --{kind} needs question/answer records")
        question = record["question"] if kind == "correct" else record.get("original_question")
        if kind == "modify" and not question:
            raise ForgetkitError(f"{record.source}: --modify records need 'original_question' (the question as in D)")
        match = by_question.get(question)
        if match is None:
            raise ForgetkitError(f"{record.source}: no record of {train_path} has this question")
        replacement = Record(fields={"question": record["question"], "answer": record["answer"]}, source=record.source)
        if record_key(replacement) == record_key(match):
            raise ForgetkitError(f"{record.source}: identical to the training record, nothing to {kind}")
        old.append(match)
        new.append(replacement)
    return EditPlan(kind, old, new)


def check_lora_adapter(adapter: str, loaded: LoadedModel) -> dict[str, Any]:
    """The adapter's config, after checking it is a LoRA made for this base model."""
    folder = Path(adapter)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ForgetkitError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ForgetkitError(f"{config_file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ForgetkitError(f"{adapter}: a {config.get('peft_type')} adapter; llmeraser edits LoRA adapters only")
    if (folder / "forgetkit.json").is_file():
        made_for = read_metadata(folder).base_model
    else:
        base = config.get("base_model_name_or_path")
        made_for = BaseModelInfo(base, model_fingerprint(base)) if base and Path(base).is_dir() else None
    if made_for is not None and made_for.fingerprint != loaded.info.fingerprint:
        raise ForgetkitError(f"{adapter}: trained for base model {made_for.model_id} "
                             f"(fingerprint {made_for.fingerprint}), not {loaded.info.model_id} "
                             f"(fingerprint {loaded.info.fingerprint})")
    return config


def load_editable(loaded: LoadedModel, adapter: str) -> tuple[PeftModel, list[torch.nn.Parameter], list[str]]:
    try:
        model = PeftModel.from_pretrained(loaded.model, adapter, is_trainable=True)
    except RuntimeError as exc:  # size mismatches: an adapter for a model of another shape
        first = str(exc).strip().splitlines()[0]
        raise ForgetkitError(f"{adapter}: does not fit base model {loaded.info.model_id} ({first})") from None
    model.eval()  # LoRA dropout off: gradients and curvature of a deterministic function
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model, [p for _, p in named], [n for n, _ in named]


def curvature_parts(train: list[Example], edited: set[int], samples: int | None,
                    seed: int) -> list[tuple[float, list[Example]]]:
    """Which records of D the curvature is estimated on, each part with its share of D.

    All of D by default. With ``samples``, the edited records (always: the edit moves the adapter
    along their own directions, which a sample without them under-weighs, so the step overshoots)
    at their true share, plus ``samples`` of the other records standing in for the rest.
    """
    n = len(train)
    if not samples or samples >= n - len(edited):
        return [(1.0, train)]
    kept = [e for i, e in enumerate(train) if i not in edited]
    sample = random.Random(seed).sample(kept, samples)
    return [(len(edited) / n, [train[i] for i in sorted(edited)]), (len(kept) / n, sample)]


def solve(objective: AdapterObjective, parts: list[tuple[float, list[Example]]], rhs: list[torch.Tensor],
          params: EraserParams) -> Solution:
    def hvp(v):
        return objective.mixture_hvp(parts, v)

    damping = params.damping
    for _ in range(4):
        with progress_bar(f"solving (H + {damping:g} I) x = b ({params.solver})", params.max_iter) as advance:
            step = lambda i, r: advance()  # noqa: E731
            try:
                if params.solver == "cg":
                    return conjugate_gradient(hvp, rhs, damping, tol=params.tol, max_iter=params.max_iter, on_step=step)
                scale = 1.2 * largest_eigenvalue(hvp, rhs, damping)
                return lissa(hvp, rhs, damping, scale=scale, tol=params.tol, max_iter=params.max_iter, on_step=step)
            except ValueError as exc:
                console.print(f"[yellow]{exc}[/]: damping {damping:g} -> {damping * 10:g}")
                damping *= 10
    raise ForgetkitError(f"the Hessian stays indefinite up to damping {damping:g}; is the adapter trained? "
                         "(pass --weight-decay as used in training, or a larger --damping)")


def largest_eigenvalue(hvp, like: list[torch.Tensor], damping: float, iterations: int = 20) -> float:
    """Power iteration on H + lambda I (LiSSA's scale must exceed it)."""
    generator = torch.Generator().manual_seed(0)
    v = [torch.randn(t.shape, generator=generator).to(t) for t in like]
    value = 1.0
    for _ in range(iterations):
        n = norm(v)
        v = [t / n for t in v]
        hv = [h + damping * t for h, t in zip(hvp(v), v)]
        value = norm(hv)
        v = hv
    return value


def run_llmeraser(
    model_ref: str,
    adapter: str,
    train: str,
    output: str | Path,
    params: EraserParams,
    *,
    remove: str | None = None,
    correct: str | None = None,
    modify: str | None = None,
    trust_remote_code: bool = False,
) -> Metadata:
    output = Path(output)
    given = {kind: path for kind, path in (("remove", remove), ("correct", correct), ("modify", modify)) if path}
    if len(given) != 1:
        raise ForgetkitError("llmeraser needs exactly one of --remove, --correct or --modify")
    if params.solver not in SOLVERS:
        raise ForgetkitError(f"unknown solver '{params.solver}'; choose from {', '.join(SOLVERS)}")
    if params.curvature not in CURVATURES:
        raise ForgetkitError(f"unknown curvature '{params.curvature}'; choose from {', '.join(CURVATURES)}")
    (kind, edit_path), = given.items()
    adapter = local_artifact(adapter)
    registry.ensure_ready()
    # Fused attention kernels (SDPA's flash/efficient paths) have no double backward; the eager
    # attention computes the same function with differentiable ops throughout.
    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code,
                        attn_implementation="eager")
    adapter_config = check_lora_adapter(adapter, loaded)
    train_records = load_records(train)
    plan = plan_edit(kind, train_records, load_records(edit_path), train)

    def encoded(records: list[Record]) -> list[Example]:
        return encode(records, loaded.tokenizer, context_length=loaded.context_length, truncate=params.truncate)

    train_examples, old_examples, new_examples = encoded(train_records), encoded(plan.old), encoded(plan.new)
    model, lora_params, names = load_editable(loaded, adapter)
    objective = AdapterObjective(model, lora_params, loaded.tokenizer.pad_token_id, params.batch_size,
                                 params.weight_decay, params.curvature)
    position = {id(record): i for i, record in enumerate(train_records)}
    parts = curvature_parts(train_examples, {position[id(r)] for r in plan.old}, params.hessian_samples, params.seed)

    started = time.perf_counter()
    before = edit_losses(objective, old_examples, new_examples)
    # b = sum grad l(z_old) - sum grad l(z_new): removal has no new records.
    rhs = objective.gradient_sum(old_examples)
    if new_examples:
        rhs = [o - n for o, n in zip(rhs, objective.gradient_sum(new_examples))]
    solution = solve(objective, parts, rhs, params)
    n = len(train_examples)
    with torch.no_grad():
        for param, step in zip(lora_params, solution.x):
            param.add_((step / n).to(param.dtype))
    seconds = time.perf_counter() - started
    after = edit_losses(objective, old_examples, new_examples)

    metadata = Metadata(
        stage="unlearn",
        base_model=loaded.info,
        inputs={name: input_record(path) for name, path in (("adapter", adapter), ("train", train), (kind, edit_path))},
        parameters={"method": "llmeraser", "edit": kind, **dataclasses.asdict(params),
                    "rank": adapter_config.get("r"), "lora_alpha": adapter_config.get("lora_alpha")},
        results={
            "edit": kind, "records_edited": len(plan.old), "train_records": n,
            "hessian_records": sum(len(part) for _, part in parts), "solver": solution.method, "iterations": solution.iterations,
            "relative_residual": solution.relative_residual, "damping": solution.damping,
            "hessian_vector_products": objective.hvp_calls, "update_norm": norm(solution.x) / n,
            "seconds": round(seconds, 3), "loss_before": before, "loss_after": after,
            "parameters_edited": len(names),
        },
    )
    with atomic_folder(output) as staging:
        model.save_pretrained(staging)
        write_folder_metadata(staging, metadata)
    registry.record(output)
    console.print(table(f"LLMEraser ({kind}, {len(plan.old)} of {n} records)", ["loss", "before", "after"],
                        [(k, before[k], after[k]) for k in before]))
    console.print(f"[green]wrote[/] {output}  ({solution.method}: {solution.iterations} iterations, relative residual "
                  f"{solution.relative_residual:.2e}, damping {solution.damping:g}, {seconds:.1f}s)")
    return metadata


def edit_losses(objective: AdapterObjective, old: list[Example], new: list[Example]) -> dict[str, float]:
    out = {"edited_records_old": objective.mean_loss(old)}
    if new:
        out["edited_records_new"] = objective.mean_loss(new)
    return out
