"""LLMEraser against retraining: time, and how far the edit moves the edited records' loss toward
the retrained adapter's.

    python bench/llmeraser_speed.py [--records 48 --edited 4 --steps 150 --weight-decay 0.3 --hessian-samples 0,12]

Base: the quickstart's tiny Llama (cached). D: question/answer facts about people it never saw.
A rank-4 LoRA is fitted on D (full batch, cosine schedule to zero, weight decay in the objective);
then, for removal of ``--edited`` records and for correction of as many answers (to another
record's answer), the edit is timed against the same fit on the cleaned data from the same LoRA
initialisation. "moved" = (edited - original) / (retrained - original) of the edited records' mean
loss (1 = exactly the retrained value); "kept" = relative change of the other records' loss.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from forgetkit.benchmark.eraser_case import LoraFit, fit_lora, mean_record_loss, write_jsonl
from forgetkit.console import console, quiet_libraries
from forgetkit.quickstart.corpus import make_splits
from forgetkit.quickstart.run import ensure_quickstart_model
from forgetkit.stages.common import table
from forgetkit.stages.llmeraser import EraserParams, run_llmeraser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--edited", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--weight-decay", type=float, default=0.3)
    parser.add_argument("--hessian-samples", default="0,12", help="comma list; 0 = all of D")
    parser.add_argument("--curvature", default="gauss-newton")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llmeraser.json")
    args = parser.parse_args()
    quiet_libraries()
    base = ensure_quickstart_model() / "model"
    rows = [r for part in make_splits(seed=1).values() for r in part if "question" in r]
    records = [{"question": r["question"], "answer": r["answer"]} for r in rows][: args.records]
    edited_idx = sorted(random.Random(0).sample(range(len(records)), args.edited))
    others = [i for i in range(len(records)) if i not in edited_idx]
    fit = LoraFit(rank=args.rank, steps=args.steps, weight_decay=args.weight_decay)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        train = write_jsonl(work / "D.jsonl", records)
        original = fit_lora(base, train, work / "original", fit)
        kept_path = write_jsonl(work / "kept.jsonl", [records[i] for i in others])
        old_path = write_jsonl(work / "old.jsonl", [records[i] for i in edited_idx])
        # Correction: each edited record's answer becomes the answer of a record outside the edit.
        new_rows = [{"question": records[i]["question"], "answer": records[others[k]]["answer"]}
                    for k, i in enumerate(edited_idx)]
        new_path = write_jsonl(work / "new.jsonl", new_rows)
        cases = {
            "remove": (kept_path, old_path, {"remove": str(old_path)}),
            "correct": (write_jsonl(work / "corrected.jsonl", [records[i] for i in others] + new_rows), new_path,
                        {"correct": str(new_path)}),
        }
        for kind, (clean, watched, edit) in cases.items():
            retrained = fit_lora(base, clean, work / f"retrained-{kind}", fit)
            for samples in (int(s) for s in args.hessian_samples.split(",")):
                out = work / f"edited-{kind}-{samples}"
                params = EraserParams(weight_decay=args.weight_decay, tol=1e-3, curvature=args.curvature,
                                      hessian_samples=samples or None)
                started = time.perf_counter()
                meta = run_llmeraser(str(base), str(work / "original"), str(train), out, params, **edit)
                seconds = time.perf_counter() - started
                loss = {name: mean_record_loss(base, folder, watched)
                        for name, folder in (("original", work / "original"), ("retrained", work / f"retrained-{kind}"),
                                             ("edited", out))}
                kept = {name: mean_record_loss(base, folder, kept_path) for name, folder in
                        (("original", work / "original"), ("edited", out))}
                results.append({
                    "edit": kind, "hessian_records": samples or len(records), "edit_s": seconds,
                    "retrain_s": retrained["seconds"], "speedup": retrained["seconds"] / seconds,
                    "iterations": meta.results["iterations"], "relative_residual": meta.results["relative_residual"],
                    "watched_loss": loss,
                    "moved": (loss["edited"] - loss["original"]) / (loss["retrained"] - loss["original"]),
                    "kept_change": (kept["edited"] - kept["original"]) / kept["original"],
                })
    rows = [(r["edit"], r["hessian_records"], r["edit_s"], r["retrain_s"], r["speedup"], r["iterations"],
             r["watched_loss"]["original"], r["watched_loss"]["edited"], r["watched_loss"]["retrained"], r["moved"],
             r["kept_change"]) for r in results]
    console.print(table("LLMEraser against retraining (CPU)",
                        ["edit", "H records", "edit s", "retrain s", "speed-up", "CG its", "loss orig", "loss edited",
                         "loss retrained", "moved", "kept change"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": vars(args) | {"out": str(args.out)}, "fit": original | {"rank": args.rank},
                                    "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
