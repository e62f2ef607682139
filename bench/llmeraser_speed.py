"""LLMEraser against retraining: time, and how far the edit moves the edited records' loss toward
the retrained adapter's.

    python bench/llmeraser_speed.py [--regime twins|unique] [--facts 48,144] [--edited 4]
                                    [--hessian-samples 0,24] [--tol 1e-2]

Base: the quickstart's tiny Llama (cached). D and the edits: ``forgetkit.benchmark.eraser_case``
(``twins``: each fact twice, the edit leaves the fact in D through its twin; ``unique``: each fact
once). A rank-4 LoRA is fitted on D (150 full-batch AdamW steps, cosine to zero, weight decay 0.3 in
the objective); for removal and for correction of ``--edited`` facts the edit is timed (the whole
stage: loading, gradients, solve, saving) against the same fit on the cleaned data from the same LoRA
initialisation (its training loop alone). "moved" = (edited - original) / (retrained - original) of
the edited records' mean loss (1 = the retrained value); "kept" = relative change of the other
records' mean loss.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from forgetkit.benchmark.eraser_case import REGIMES, LoraFit, build_case, fit_lora, mean_record_loss, write_jsonl
from forgetkit.console import console, quiet_libraries
from forgetkit.quickstart.run import ensure_quickstart_model
from forgetkit.stages.common import table
from forgetkit.stages.llmeraser import EraserParams, run_llmeraser

ROOT = Path(__file__).resolve().parents[1]


def ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regime", choices=REGIMES, default="twins")
    parser.add_argument("--facts", type=ints, default=[48, 144])
    parser.add_argument("--edited", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--weight-decay", type=float, default=0.3)
    parser.add_argument("--hessian-samples", type=ints, default=[0, 24], help="0 = all of D")
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--curvature", default="gauss-newton")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/llmeraser-<regime>.json")
    args = parser.parse_args()
    quiet_libraries()
    out_file = args.out or ROOT / "bench" / "results" / f"llmeraser-{args.regime}.json"
    base = ensure_quickstart_model() / "model"
    fit = LoraFit(rank=args.rank, steps=args.steps, weight_decay=args.weight_decay)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.facts:
            for kind in ("remove", "correct"):
                work = Path(scratch) / f"{count}-{kind}"
                work.mkdir()
                case = build_case(kind, count, args.edited, args.regime)
                paths = {name: write_jsonl(work / f"{name}.jsonl", getattr(case, name))
                         for name in ("train", "clean", "edit", "watched", "kept")}
                original = fit_lora(base, paths["train"], work / "original", fit)
                retrained = fit_lora(base, paths["clean"], work / "retrained", fit)
                for samples in args.hessian_samples:
                    out = work / f"edited-{samples}"
                    params = EraserParams(weight_decay=args.weight_decay, tol=args.tol, curvature=args.curvature,
                                          hessian_samples=samples or None)
                    started = time.perf_counter()
                    meta = run_llmeraser(str(base), str(work / "original"), str(paths["train"]), out, params,
                                         **{kind: str(paths["edit"])})
                    seconds = time.perf_counter() - started
                    loss = {name: mean_record_loss(base, work / name, paths["watched"]) for name in ("original", "retrained")}
                    loss["edited"] = mean_record_loss(base, out, paths["watched"])
                    kept_before = mean_record_loss(base, work / "original", paths["kept"])
                    kept_after = mean_record_loss(base, out, paths["kept"])
                    results.append({
                        "edit": kind, "train_records": len(case.train), "hessian_records": meta.results["hessian_records"],
                        "edit_s": seconds, "retrain_s": retrained["seconds"], "original_fit_s": original["seconds"],
                        "speedup": retrained["seconds"] / seconds, "iterations": meta.results["iterations"],
                        "relative_residual": meta.results["relative_residual"], "watched_loss": loss,
                        "moved": (loss["edited"] - loss["original"]) / (loss["retrained"] - loss["original"]),
                        "kept_change": (kept_after - kept_before) / kept_before,
                    })
    rows = [(r["edit"], r["train_records"], r["hessian_records"], r["edit_s"], r["retrain_s"], r["speedup"],
             r["iterations"], r["watched_loss"]["original"], r["watched_loss"]["edited"], r["watched_loss"]["retrained"],
             r["moved"], r["kept_change"]) for r in results]
    console.print(table(f"LLMEraser against retraining ({args.regime}, CPU)",
                        ["edit", "|D|", "H records", "edit s", "retrain s", "speed-up", "CG its", "loss orig",
                         "loss edited", "loss retrained", "moved", "kept change"], rows))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    setup = {k: v for k, v in vars(args).items() if k != "out"}
    out_file.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
