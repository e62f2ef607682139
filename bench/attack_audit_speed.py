"""Audit time with every attack against the audit without attacks, on the quickstart model (memorised
people, an IHL adapter) and on TOFU forget10 (a tiny Llama, 400 questions, the control 400 retain
questions of other authors).

    python bench/attack_audit_speed.py [--tofu ../shared/data/tofu] [--max-new-tokens 48]

Each attack is measured through the ordinary batched evaluation (``forgetkit.audit.attacks.measure``),
on the forget set and on the control; relearning trains 4 LoRAs (2 kinds x forget/control) for 100 steps,
measured at 10, 30 and 100.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from forgetkit.console import console, quiet_libraries
from forgetkit.data import load_records
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import table

ROOT = Path(__file__).resolve().parents[1]


def timed_audit(model: str, folder: Path, attacks: tuple[str, ...], **kwargs) -> float:
    start = time.perf_counter()
    run_audit(model, folder / f"report-{len(attacks)}.json", AuditParams(attacks=attacks, **kwargs.pop("params")), **kwargs)
    return time.perf_counter() - start


def quickstart_case(folder: Path, max_new_tokens: int) -> dict:
    from forgetkit.quickstart.run import QUICKSTART_UNLEARN, prepare_workdir
    from forgetkit.stages.unlearn import run_unlearn

    data = folder / "data"
    model = str(prepare_workdir(data))
    run_unlearn(model, str(data / "forget.jsonl"), folder / "adapter", QUICKSTART_UNLEARN, retain=str(data / "retain.jsonl"),
                holdout=str(data / "holdout.jsonl"))
    sets = dict(forget=str(data / "forget.jsonl"), retain=str(data / "retain.jsonl"), holdout=str(data / "holdout.jsonl"),
                adapter=str(folder / "adapter"))
    params = dict(max_new_tokens=max_new_tokens, canary_candidates=63, skip_base=True)
    plain = timed_audit(model, folder, (), params=params, **sets)
    every = timed_audit(model, folder, ("all",), params=params, **sets)
    return {"case": "quickstart (memorised people, IHL adapter; 20 forget, 160 retain, 20 held-out records)",
            "no_attacks_s": plain, "all_attacks_s": every}


def tofu_case(folder: Path, tofu: Path, max_new_tokens: int) -> dict:
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from audit_speed import build_model

    model = str(build_model(folder / "model", tofu))
    control = folder / "control.jsonl"
    rows = [r.fields for r in load_records(tofu / "retain_perturbed.jsonl")]
    control.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = dict(forget=str(tofu / "forget10.jsonl"), holdout=str(control))
    params = dict(suites=("tofu", "mia"), max_new_tokens=max_new_tokens, canary_candidates=0)
    plain = timed_audit(model, folder, (), params=params, **sets)
    every = timed_audit(model, folder, ("all",), params=params, **sets)
    return {"case": f"TOFU forget10 (400 questions) against {len(rows)} retain_perturbed questions; random tiny "
            "Llama (answers run to --max-new-tokens)", "no_attacks_s": plain, "all_attacks_s": every}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tofu", type=Path, default=ROOT.parent / "shared" / "data" / "tofu")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack_audit_speed.json")
    args = parser.parse_args()
    quiet_libraries()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(quickstart_case(Path(tmp) / "quickstart", args.max_new_tokens))
        if (args.tofu / "forget10.jsonl").is_file():
            results.append(tofu_case(Path(tmp) / "tofu", args.tofu, args.max_new_tokens))
    rows = [(r["case"], round(r["no_attacks_s"], 1), round(r["all_attacks_s"], 1),
             round(r["all_attacks_s"] / r["no_attacks_s"], 1)) for r in results]
    console.print(table("Audit time with --attacks all", ["case", "no attacks s", "all attacks s", "ratio"], rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"max_new_tokens": args.max_new_tokens, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
