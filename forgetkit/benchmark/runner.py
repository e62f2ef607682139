"""The TOFU benchmark: every method x init x rank unlearns the same full model with the same step
budget, and each result is audited against the retain-only reference.

Work directory layout (everything cached; a rerun skips what is already there):

    <workdir>/<subset>/data/           the splits (forgetkit.benchmark.tofu_splits)
    <workdir>/<subset>/<targets>/      full/ and reference/ models, reference.json and full.json
                                       audits, fisher.safetensors, runs/<method>-<init>-r<rank>/
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from forgetkit.artifacts import write_json
from forgetkit.adversary import AdversaryConfig
from forgetkit.audit.attacks import AttackParams
from forgetkit.benchmark.measure import Measurement, measured
from forgetkit.benchmark.targets import TargetSpec, build_targets
from forgetkit.benchmark.tofu_splits import SubsetSpec, write_splits
from forgetkit.console import console
from forgetkit.metrics import tofu as tofu_metrics
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import table
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.stopping import TargetParams
from forgetkit.training import TrainConfig

METHODS = ("ga", "gd", "npo", "ihl")
INITS = ("lora", "fila")
RANKS = (4, 8, 16)
ATTACKS = ("paraphrase", "quantize", "relearn", "sampling")
RELEARN_STEPS = 20  # one budget, relearning on part of the forget set: the bench's table has one column for it


@dataclasses.dataclass
class GridSpec:
    methods: tuple[str, ...] = METHODS
    inits: tuple[str, ...] = INITS
    ranks: tuple[int, ...] = RANKS
    # One step budget for every method: epochs over the forget set at this batch size.
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 8
    retain_batch_size: int | None = None  # retain records beside each forget batch (None: batch_size)
    attacks: tuple[str, ...] = ATTACKS
    samples: int = 8
    max_new_tokens: int = 64
    seed: int = 0
    # Every configuration runs once per seed (the LoRA init, the batch order, the attacks' draws); the
    # table gives mean and spread (``seed_summary``). Unlearning results move with the seed.
    seeds: tuple[int, ...] = (0,)
    check_every: int = 5  # for methods run to a target ("ihl@holdout"): optimiser steps between checks
    # ``unlearn --null-space``: every adapter reads only this share of its input directions, those the
    # retain set uses least (None: unconfined). Plain LoRA inits only (FILA rewrites the base).
    null_space: float | None = None
    # ``unlearn --loss-param KEY=VALUE`` for every run (e.g. (("retain_weight", "3"),)).
    loss_params: tuple[tuple[str, str], ...] = ()
    # ``@holdout`` runs also check Forget Quality estimated against the held-out set (``unlearn
    # --holdout-quality``; TargetParams.holdout_quality).
    holdout_quality: bool = False
    sam_rho: float = 0.0  # ``unlearn --sam-rho`` for every run (sharpness-aware steps)
    relearn_rho: float = 0.0  # ``unlearn --relearn-rho`` for every run (relearning-aware steps)
    adversary_steps: int = 0  # ``unlearn --adversary-steps`` for every run (a simulated relearning attacker)
    adversary_weight: float = 1.0  # ``unlearn --adversary-weight``


def stage_cost(measurement: Measurement) -> dict[str, float]:
    return {"seconds": round(measurement.seconds, 2), "peak_mib": round(measurement.peak_mib, 1)}


def audit_params(grid: GridSpec, attacks: tuple[str, ...], skip_base: bool = False) -> AuditParams:
    return AuditParams(
        suites=("tofu", "mia"), attacks=attacks, max_new_tokens=grid.max_new_tokens,
        canary_candidates=0, skip_base=skip_base, attack=AttackParams(samples=grid.samples, seed=grid.seed, relearn_budgets=(RELEARN_STEPS,),
                            relearn_kinds=("part",)),
    )


def audit_sets(splits: dict[str, Path]) -> dict[str, str | None]:
    return {
        "forget": str(splits["forget"]),
        "retain": str(splits["retain_eval"]),
        "holdout": str(splits["holdout"]) if "holdout" in splits else None,
        "real_authors": str(splits["real_authors"]),
        "world_facts": str(splits["world_facts"]),
    }


def summarise_variant(variant: dict[str, Any]) -> dict[str, Any]:
    """The figures the benchmark table shows, out of one audited model's report entry."""
    sets, tofu = variant["sets"], variant.get("tofu", {})
    row: dict[str, Any] = {
        "forget_quality": tofu.get("forget_quality"),
        "model_utility": (tofu.get("model_utility") or {}).get("value"),
        # Model Utility's retain third alone: the harmonic mean of the retain set's three numbers.
        "retain_utility": _harmonic([sets["retain"]["summary"].get(k) for k in ("probability", "rouge_l", "truth_ratio")]),
        "forget_rouge_l": sets["forget"]["summary"].get("rouge_l"),
        "forget_truth_ratio": sets["forget"]["summary"].get("truth_ratio"),
        "retain_rouge_l": sets["retain"]["summary"].get("rouge_l"),
        "mia_auc_min_k_pp": variant.get("mia", {}).get("forget", {}).get("min_k_pp", {}).get("auc"),
        "privleak_min_k_pp": (tofu.get("privleak") or {}).get("min_k_pp"),
        "verdict": variant.get("verdict", {}).get("verdict"),
    }
    attacks = variant.get("attacks", {})

    def attacked_forget(view: str, key: str = "rouge_l") -> Any:
        return attacks.get(view, {}).get("sets", {}).get("forget", {}).get("attacked", {}).get(key)

    row["paraphrase_forget_rouge_l"] = attacked_forget("paraphrase")
    row["int4_forget_rouge_l"] = attacked_forget("int4")
    row["relearn_forget_rouge_l"] = attacked_forget(f"relearn-part-{RELEARN_STEPS}")
    if "sampling" in attacks and "forget" in attacks["sampling"]:
        row["sampling_forget_leak_rate"] = attacks["sampling"]["forget"].get("leak_rate")
    return row


def _harmonic(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else tofu_metrics.harmonic_mean(values)


def run_benchmark(tofu: Path, workdir: Path, subset: SubsetSpec, targets: TargetSpec, grid: GridSpec) -> dict[str, Any]:
    root = workdir / subset.name
    splits = write_splits(tofu, subset, root / "data")
    folder = root / targets.key()
    with measured() as building:
        models = build_targets(tofu, splits, folder, targets)
    full, reference = str(models["full"]), str(models["reference"])
    sets = audit_sets(splits)

    reference_report = folder / "reference.json"
    if not reference_report.is_file():
        run_audit(reference, reference_report, audit_params(grid, ()), **sets)
    full_report = folder / "full.json"
    if not full_report.is_file():
        run_audit(full, full_report, audit_params(grid, grid.attacks), reference_report=str(reference_report), **sets)
    reference_row = summarise_variant(json.loads(reference_report.read_text())["results"]["model"])
    full_row = summarise_variant(json.loads(full_report.read_text())["results"]["model"])

    fisher_path = folder / "fisher.safetensors"
    fisher_cost = None
    if "fila" in grid.inits:
        with measured() as fisher_run:
            if not fisher_path.is_file():
                run_fisher(full, str(splits["forget"]), str(splits["retain"]), fisher_path, FisherParams())
        fisher_cost = stage_cost(fisher_run)

    runs = []
    for method in grid.methods:
        for init in grid.inits:
            for rank in grid.ranks:
                for seed in grid.seeds or (grid.seed,):
                    runs.append(run_one(full, splits, sets, folder, reference_report, fisher_path, method, init, rank,
                                        dataclasses.replace(grid, seed=seed)))
    results = {
        "subset": dataclasses.asdict(subset),
        "targets": {"spec": dataclasses.asdict(targets), "build": stage_cost(building), **_finetune_stats(folder)},
        "grid": dataclasses.asdict(grid),
        "reference": reference_row,
        "full": full_row,
        "fisher": fisher_cost,
        "runs": runs,
        "summary": seed_summary(runs),
    }
    write_json(root / f"results-{targets.key()}.json", results)
    console.print(results_table(results))
    return results


def _finetune_stats(folder: Path) -> dict[str, Any]:
    out = {}
    for target in ("full", "reference"):
        path = folder / target / "finetune.json"
        if path.is_file():
            stats = json.loads(path.read_text())
            out[target] = {k: stats[k] for k in ("epochs", "answer_accuracy", "seconds") if k in stats}
    return out


def _departures(grid: GridSpec, method: str) -> list[tuple[str, str]]:
    """(folder-name part, label part) for each way the grid departs from the default lr, budget, retain
    batch, confinement, loss parameters and (runs stopped at a target) check interval: such runs are
    cached and labelled apart, and runs at the defaults keep the names they were cached under before
    these options existed."""
    parts = []
    if grid.lr != GridSpec.lr:
        parts.append((f"-lr{grid.lr:g}", f"lr {grid.lr:g}"))
    if grid.epochs != GridSpec.epochs:
        parts.append((f"-e{grid.epochs}", f"{grid.epochs} epochs"))
    if grid.retain_batch_size:
        parts.append((f"-rb{grid.retain_batch_size}", f"retain batch {grid.retain_batch_size}"))
    if grid.null_space:
        parts.append((f"-null{grid.null_space:g}", f"null {grid.null_space:g}"))
    for key, value in grid.loss_params:
        parts.append((f"-{key}{value}", f"{key} {value}"))
    if grid.sam_rho:
        parts.append((f"-sam{grid.sam_rho:g}", f"SAM {grid.sam_rho:g}"))
    if grid.relearn_rho:
        parts.append((f"-rl{grid.relearn_rho:g}", f"relearn-aware {grid.relearn_rho:g}"))
    if grid.adversary_steps:
        weight = f"x{grid.adversary_weight:g}" if grid.adversary_weight != 1.0 else ""
        parts.append((f"-adv{grid.adversary_steps}{weight}", f"adversary {grid.adversary_steps}{weight}"))
    if "@" in method and grid.check_every != GridSpec.check_every:
        parts.append((f"-c{grid.check_every}", f"checks every {grid.check_every}"))
    if method.endswith("@holdout") and grid.holdout_quality:
        parts.append(("-hq", "held-out FQ"))
    return parts


def run_name(method: str, init: str, rank: int, grid: GridSpec) -> str:
    """The run's cache folder name; seed 0 keeps the names of runs cached before seeds."""
    return (f"{method}-{init}-r{rank}" + "".join(part for part, _ in _departures(grid, method))
            + (f"-s{grid.seed}" if grid.seed else ""))


def run_label(method: str, grid: GridSpec) -> str:
    """The run's name in tables and plots: the method, and how the grid departs from the defaults."""
    return " ".join([method, *(label for _, label in _departures(grid, method))])


def run_one(full: str, splits: dict[str, Path], sets: dict[str, str | None], folder: Path, reference_report: Path,
            fisher_path: Path, method: str, init: str, rank: int, grid: GridSpec) -> dict[str, Any]:
    """Init, unlearn and audit one configuration; a finished run (run.json) is read back, not redone.
    ``method`` is a loss name, or ``loss@target`` to stop at that forgetting target (``unlearn --target``)."""
    run_dir = folder / "runs" / run_name(method, init, rank, grid)
    record = run_dir / "run.json"
    if record.is_file():
        return json.loads(record.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    with measured() as init_run:
        run_init(full, run_dir / "init", InitParams(scheme=init, rank=rank, seed=grid.seed),
                 fisher=str(fisher_path) if init == "fila" else None)
    train = TrainConfig(lr=grid.lr, epochs=grid.epochs, batch_size=grid.batch_size, micro_batch_size=grid.batch_size,
                        retain_micro_batch_size=grid.retain_batch_size, seed=grid.seed, sam_rho=grid.sam_rho,
                        relearn_rho=grid.relearn_rho,
                        adversary=AdversaryConfig(grid.adversary_steps, weight=grid.adversary_weight))
    loss, _, target = method.partition("@")
    params = UnlearnParams(loss=loss, train=train, loss_params=dict(grid.loss_params),
                           target=TargetParams(target, check_every=grid.check_every, max_new_tokens=grid.max_new_tokens,
                                               holdout_quality=grid.holdout_quality,
                                               # ``loss@reference`` stops on Forget Quality against the bench's own
                                               # reference model: an oracle rule (it reads the statistic the table
                                               # reports), beside ``@holdout``'s, which needs no retrained model.
                                               reference_report=str(reference_report) if target == "reference" else None)
                           if target else None, null_space=grid.null_space)
    holdout = str(splits["holdout"]) if "holdout" in splits else None
    with measured() as unlearn_run:
        meta = run_unlearn(full, str(splits["forget"]), run_dir / "adapter", params, retain=str(splits["retain"]),
                           init=str(run_dir / "init"), holdout=holdout if (target or needs_holdout(loss)) else None)
    with measured() as audit_run:
        report = run_audit(full, run_dir / "report.json", audit_params(grid, grid.attacks, skip_base=True),
                           adapter=str(run_dir / "adapter"), reference_report=str(reference_report), **sets)
    row = {
        "method": run_label(method, grid),
        "init": init, "rank": rank, "seed": grid.seed, "null_space": grid.null_space,
        "loss_params": dict(grid.loss_params), "steps": meta.results.get("steps"),
        **summarise_variant(report["results"]["unlearned"]),
        "stages": {"init": stage_cost(init_run), "unlearn": stage_cost(unlearn_run), "audit": stage_cost(audit_run)},
    }
    row["wall_s"] = round(init_run.seconds + unlearn_run.seconds, 2)
    row["peak_mib"] = round(max(init_run.peak_mib, unlearn_run.peak_mib), 1)
    write_json(record, row)
    return row


SUMMARISED = ("forget_quality", "model_utility", "retain_utility", "forget_rouge_l", "retain_rouge_l",
              "mia_auc_min_k_pp", "int4_forget_rouge_l", "relearn_forget_rouge_l", "wall_s")


def needs_holdout(loss: str) -> bool:
    from forgetkit.plugins import load_loss

    return bool(getattr(load_loss(loss), "needs_holdout", False))


def seed_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (method, init, rank): mean and standard deviation (n - 1) of each figure over
    its seeds, with the seeds listed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["init"], run["rank"]), []).append(run)
    out = []
    for (method, init, rank), members in groups.items():
        row: dict[str, Any] = {"method": method, "init": init, "rank": rank, "seeds": [m.get("seed", 0) for m in members]}
        for key in SUMMARISED:
            values = [m[key] for m in members if m.get(key) is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            row[key] = {"mean": mean, "std": spread, "values": values}
        out.append(row)
    return out


def results_table(results: dict[str, Any]):
    columns = ["model", "FQ", "MU", "forget ROUGE-L", "retain ROUGE-L", "MIA AUC", "int4 ROUGE-L",
               "relearn ROUGE-L", "wall s", "peak MiB"]
    rows = [
        ["reference (retain only)", None, results["reference"]["model_utility"], results["reference"]["forget_rouge_l"],
         results["reference"]["retain_rouge_l"], results["reference"]["mia_auc_min_k_pp"], None, None, None, None],
        ["full (before unlearning)", results["full"]["forget_quality"], results["full"]["model_utility"],
         results["full"]["forget_rouge_l"], results["full"]["retain_rouge_l"], results["full"]["mia_auc_min_k_pp"],
         results["full"].get("int4_forget_rouge_l"), results["full"].get("relearn_forget_rouge_l"), None, None],
    ]
    for run in results["runs"]:
        rows.append([f"{run['method']} {run['init']} r{run['rank']}", run["forget_quality"], run["model_utility"],
                     run["forget_rouge_l"], run["retain_rouge_l"], run["mia_auc_min_k_pp"], run.get("int4_forget_rouge_l"),
                     run.get("relearn_forget_rouge_l"), run["wall_s"], run["peak_mib"]])
    return table("TOFU benchmark", columns, rows)
