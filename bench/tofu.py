"""The TOFU benchmark at CPU scale: does IHL+FILA beat the baselines, and by how much?

    python bench/tofu.py                                  # 40 authors, 4 forgotten: the full grid
    python bench/tofu.py --methods ihl --inits fila --ranks 8 --forget-authors 1 --retain-authors 3 --holdout-authors 1
    python bench/tofu.py --model microsoft/phi-1_5 --full # a real model on the whole benchmark (GPU)
    python bench/tofu.py --model smollm2-135m-instruct --teach-rank 16 --forget-authors 2 --retain-authors 4 \
        --holdout-authors 2 --utility-rows 30 --retain-eval-rows 40 --attacks paraphrase \
        --methods ihl,npo --inits lora --ranks 8   # a pretrained model on a CPU (BENCHMARKS.md)
    python bench/tofu.py --methods ihl,unseen@holdout,npo --inits lora --ranks 8 --seeds 0,1,2
    python bench/tofu.py --methods ihl@reference --inits lora --ranks 8 --null-space 0.8 --lr 3e-3 --epochs 15 \
        --retain-batch-size 32 --loss-param retain_weight=5 --seeds 0,1,2   # FQ >= 0.05 at 0.9 of full MU

A method is a loss name (built-in or a plugin's, e.g. simnpo) or ``loss@target``: that loss stopped at
a forgetting target, checked every --check-every steps: ``@holdout`` (``unlearn --target holdout``: the
held-out authors only, what a user has) or ``@reference`` (``--target reference`` against the bench's own
retain-only model: Forget Quality is the statistic the table reports, so this is an oracle rule).

Builds (once, cached under --workdir) the full model fine-tuned on forget + retain and the
reference fine-tuned on retain only, then unlearns the forget authors with every method x init x
rank on the same step budget and audits each result (TOFU suite against the reference, MIA,
extraction, attacks). Writes the results JSON, a Markdown table and the Forget Quality against
Model Utility plot; see BENCHMARKS.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from forgetkit.benchmark.finetune import FineTuneConfig
from forgetkit.benchmark.plots import fq_mu_plot
from forgetkit.benchmark.runner import ATTACKS, INITS, METHODS, RANKS, GridSpec, run_benchmark
from forgetkit.benchmark.targets import TargetSpec, build_targets
from forgetkit.benchmark.tofu_splits import SubsetSpec, write_splits
from forgetkit.console import quiet_libraries

ROOT = Path(__file__).resolve().parents[1]


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def loss_param(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE")
    return key, value


def write_results(results: dict, out: Path, stem: str) -> None:
    """The results JSON, its Markdown table and the FQ-against-MU plot, side by side in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(results))
    fq_mu_plot(results, out / f"{stem}-fq-mu.png")
    print(f"wrote {out / stem}.json, .md and -fq-mu.png ({len(results['runs'])} runs)")


def markdown(results: dict) -> str:
    lines = ["| method | init | rank | FQ | MU | retain utility | forget ROUGE-L | retain ROUGE-L | MIA AUC (min-k++) | "
             "int4 forget ROUGE-L | relearn forget ROUGE-L | sampling leak | wall s | peak MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def cell(value, digits=3):
        if value is None:
            return ""
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    for label, row in (("reference (retain only)", results["reference"]), ("full (before)", results["full"])):
        lines.append(f"| {label} | | | {cell(row['forget_quality'])} | {cell(row['model_utility'])} | "
                     f"{cell(row['retain_utility'])} | {cell(row['forget_rouge_l'])} | {cell(row['retain_rouge_l'])} | {cell(row['mia_auc_min_k_pp'])} | "
                     f"{cell(row.get('int4_forget_rouge_l'))} | {cell(row.get('relearn_forget_rouge_l'))} | "
                     f"{cell(row.get('sampling_forget_leak_rate'))} | | |")
    for run in results["runs"]:
        lines.append(f"| {run['method']} | {run['init']} | {run['rank']} | {cell(run['forget_quality'])} | "
                     f"{cell(run['model_utility'])} | {cell(run['retain_utility'])} | {cell(run['forget_rouge_l'])} | {cell(run['retain_rouge_l'])} | "
                     f"{cell(run['mia_auc_min_k_pp'])} | {cell(run.get('int4_forget_rouge_l'))} | "
                     f"{cell(run.get('relearn_forget_rouge_l'))} | {cell(run.get('sampling_forget_leak_rate'))} | "
                     f"{run['wall_s']:.1f} | {run['peak_mib']:.0f} |")
    if any(len(row["seeds"]) > 1 for row in results.get("summary", [])):
        lines += ["", "Mean ± standard deviation over seeds:", "",
                  "| method | init | rank | seeds | FQ | MU | forget ROUGE-L | retain ROUGE-L | MIA AUC (min-k++) | wall s |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def spread(value):
            return "" if value is None else f"{value['mean']:.3g} ± {value['std']:.2g}"

        for row in results["summary"]:
            lines.append(f"| {row['method']} | {row['init']} | {row['rank']} | {','.join(map(str, row['seeds']))} | "
                         + " | ".join(spread(row.get(k)) for k in ("forget_quality", "model_utility", "forget_rouge_l",
                                                                   "retain_rouge_l", "mia_auc_min_k_pp", "wall_s")) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tofu", type=Path, default=ROOT.parent / "shared" / "data" / "tofu")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "tofu-bench")
    parser.add_argument("--model", default="tiny", help="'tiny' (trained from scratch on CPU) or a Hub id / folder")
    parser.add_argument("--hidden-size", type=int, default=128, help="tiny model only")
    parser.add_argument("--teach-rank", type=int, default=None,
                        help="pretrained models: teach the full and reference models with a merged MLP LoRA of this "
                             "rank until memorised (CPU-sized) instead of TOFU's full fine-tune")
    parser.add_argument("--teach-epochs", type=int, default=16, help="with --teach-rank: the most epochs")
    parser.add_argument("--full", action="store_true", help="the whole benchmark: forget10 against retain90")
    parser.add_argument("--forget-authors", type=int, default=4)
    parser.add_argument("--retain-authors", type=int, default=36)
    parser.add_argument("--holdout-authors", type=int, default=4)
    parser.add_argument("--utility-rows", type=int, default=None,
                        help="only the first N real-authors and world-facts rows (smoke tests)")
    parser.add_argument("--retain-eval-rows", type=int, default=SubsetSpec.retain_eval_rows,
                        help="cap on the retain audit set")
    parser.add_argument("--methods", type=names, default=METHODS)
    parser.add_argument("--inits", type=names, default=INITS)
    parser.add_argument("--ranks", type=lambda t: tuple(int(r) for r in names(t)), default=RANKS)
    parser.add_argument("--lr", type=float, default=GridSpec.lr)
    parser.add_argument("--epochs", type=int, default=GridSpec.epochs)
    parser.add_argument("--batch-size", type=int, default=GridSpec.batch_size)
    parser.add_argument("--retain-batch-size", type=int, default=None,
                        help="retain records beside each forget batch (default: --batch-size)")
    parser.add_argument("--attacks", type=names, default=ATTACKS)
    parser.add_argument("--samples", type=int, default=GridSpec.samples)
    parser.add_argument("--seeds", type=lambda t: tuple(int(x) for x in names(t)), default=GridSpec.seeds,
                        help="run every configuration once per seed; the table adds mean ± std")
    parser.add_argument("--check-every", type=int, default=GridSpec.check_every,
                        help="methods written loss@target (e.g. ihl@holdout): steps between the target's checks")
    parser.add_argument("--holdout-quality", action="store_true",
                        help="@holdout runs also check Forget Quality estimated against the held-out set "
                             "(unlearn --holdout-quality)")
    parser.add_argument("--sam-rho", type=float, default=0.0, help="unlearn --sam-rho for every run (sharpness-aware steps)")
    parser.add_argument("--adversary-steps", type=int, default=0,
                        help="unlearn --adversary-steps for every run (a simulated relearning attacker)")
    parser.add_argument("--adversary-weight", type=float, default=1.0, help="unlearn --adversary-weight for every run")
    parser.add_argument("--relearn-rho", type=float, default=0.0,
                        help="unlearn --relearn-rho for every run (relearning-aware steps)")
    parser.add_argument("--null-space", type=float, default=None,
                        help="unlearn --null-space for every run: the adapters read only this share of their input "
                             "directions, those the retain set uses least (lora init only)")
    parser.add_argument("--loss-param", type=loss_param, action="append", default=[], metavar="KEY=VALUE",
                        help="a loss parameter for every run (repeatable), e.g. retain_weight=3")
    parser.add_argument("--max-new-tokens", type=int, default=GridSpec.max_new_tokens)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tofu")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the splits and both models, print DATA=, FULL=, REFERENCE= for a shell, stop")
    args = parser.parse_args()
    quiet_libraries()

    subset = SubsetSpec(forget_authors=None) if args.full else SubsetSpec(
        forget_authors=args.forget_authors, retain_authors=args.retain_authors, holdout_authors=args.holdout_authors,
        utility_rows=args.utility_rows, retain_eval_rows=args.retain_eval_rows)
    # TOFU's own fine-tuning recipe for real models; the tiny model is trained from scratch.
    if args.model == "tiny":
        targets = TargetSpec.tiny(hidden_size=args.hidden_size)
    elif args.teach_rank:
        targets = TargetSpec.lora(args.model, rank=args.teach_rank, max_epochs=args.teach_epochs)
    else:
        targets = TargetSpec(model=args.model, finetune=FineTuneConfig(lr=1e-5, epochs=5, batch_size=32))
    grid = GridSpec(methods=args.methods, inits=args.inits, ranks=args.ranks, lr=args.lr, epochs=args.epochs,
                    batch_size=args.batch_size, retain_batch_size=args.retain_batch_size, attacks=args.attacks, samples=args.samples,
                    max_new_tokens=args.max_new_tokens, seeds=args.seeds, check_every=args.check_every,
                    null_space=args.null_space, loss_params=tuple(args.loss_param),
                    holdout_quality=args.holdout_quality, sam_rho=args.sam_rho,
                    relearn_rho=args.relearn_rho, adversary_steps=args.adversary_steps,
                    adversary_weight=args.adversary_weight)
    if args.prepare_only:
        splits = write_splits(args.tofu, subset, args.workdir / subset.name / "data")
        models = build_targets(args.tofu, splits, args.workdir / subset.name / targets.key(), targets)
        print(f"DATA={shlex.quote(str(splits['forget'].parent))}")
        print(f"FULL={shlex.quote(str(models['full']))}")
        print(f"REFERENCE={shlex.quote(str(models['reference']))}")
        return
    results = run_benchmark(args.tofu, args.workdir, subset, targets, grid)

    write_results(results, args.out, f"{subset.name}-{targets.key()}")


if __name__ == "__main__":
    main()
