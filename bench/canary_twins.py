"""`--loss unseen` with and without canary twins on the memorised quickstart model, stopped at
`--target holdout`, then audited with paraphrase, quantize, relearn and sampling.

    python bench/canary_twins.py NAME LR EPOCHS [--init FOLDER] [--retain-micro-batch-size N] [--null-space SHARE]
                                 [--loss unseen] [--sam-rho R] [--relearn-rho R] [KEY=VALUE ...]
    python bench/canary_twins.py twins-lora-4e3 4e-3 12
    python bench/canary_twins.py notwins-fila-4e3 4e-3 12 --init runs/quickstart/init canary_weight=0
    python bench/canary_twins.py twins-fila-1.5e3-rw3 1.5e-3 24 --init runs/quickstart/init retain_weight=3

KEY=VALUE pairs are the loss's parameters (--loss-param). The quickstart model comes from the cache
(`forgetkit quickstart` builds it; `--init` is the FILA init that run wrote). Prints every target
evaluation and one RESULT line, and writes both to bench/results/canary-twins/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from forgetkit.adversary import AdversaryConfig
from forgetkit.audit.verdict import VerdictThresholds
from forgetkit.console import quiet_libraries
from forgetkit.quickstart.run import ensure_quickstart_model
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.stopping import TargetParams
from forgetkit.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("paraphrase", "quantize", "relearn", "sampling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("lr", type=float)
    parser.add_argument("epochs", type=int)
    parser.add_argument("--init", default=None)
    parser.add_argument("--rank", type=int, default=8, help="the adapter's rank without --init")
    parser.add_argument("--target-auc-band", type=float, default=0.1,
                        help="the stopping rule's MIA AUC band around 0.5 (the audit's stays 0.1)")
    parser.add_argument("--retain-micro-batch-size", type=int, default=4)
    parser.add_argument("--check-every", type=int, default=4)
    parser.add_argument("--null-space", type=float, default=None, help="unlearn --null-space (plain LoRA only)")
    parser.add_argument("--loss", default="unseen")
    parser.add_argument("--sam-rho", type=float, default=0.0, help="unlearn --sam-rho (sharpness-aware steps)")
    parser.add_argument("--relearn-rho", type=float, default=0.0, help="unlearn --relearn-rho (relearning-aware steps)")
    parser.add_argument("--adversary-steps", type=int, default=0, help="unlearn --adversary-steps (simulated relearning attacker)")
    parser.add_argument("--adversary-reset", type=int, default=8)
    parser.add_argument("--adversary-weight", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "canary-twins")
    parser.add_argument("params", nargs="*", help="the loss's KEY=VALUE parameters")
    args = parser.parse_intermixed_args()  # loss parameters may follow the options
    quiet_libraries()

    quickstart = ensure_quickstart_model()
    model, forget, retain, holdout = (str(quickstart / n) for n in ("model", "forget.jsonl", "retain.jsonl", "holdout.jsonl"))
    adapter = args.workdir / args.name
    params = UnlearnParams(
        loss=args.loss, null_space=args.null_space, rank=args.rank, loss_params=dict(p.split("=", 1) for p in args.params),
        train=TrainConfig(lr=args.lr, epochs=args.epochs, batch_size=4, micro_batch_size=4, seed=0,
                          retain_micro_batch_size=args.retain_micro_batch_size, sam_rho=args.sam_rho,
                          relearn_rho=args.relearn_rho,
                          adversary=AdversaryConfig(args.adversary_steps, reset_every=args.adversary_reset,
                                                    weight=args.adversary_weight)),
        # The audit's own settings: 255 canary candidates, 48 new tokens.
        target=TargetParams("holdout", None, args.check_every, 48, 255,
                            thresholds=VerdictThresholds(mia_auc_band=args.target_auc_band, alpha=1.0)),
    )
    started = time.perf_counter()
    meta = run_unlearn(model, forget, adapter, params, retain=retain, holdout=holdout, init=args.init)
    unlearned = time.perf_counter()
    target = meta.results["target"]
    evaluations = [{"step": e["step"], "stage": e["stage"], "values": e["values"], "failed": e["failed"]}
                   for e in target["evaluations"]]
    for evaluation in evaluations:
        print("EVAL", json.dumps(evaluation))
    report = run_audit(model, args.workdir / f"{args.name}.json", AuditParams(max_new_tokens=48, attacks=ATTACKS),
                       forget=forget, retain=retain, holdout=holdout, adapter=str(adapter))
    base, after = report["results"]["base"], report["results"]["unlearned"]
    sets = ("forget", "retain", "holdout")
    result = {
        "name": args.name, "loss": args.loss, "lr": args.lr, "epochs": args.epochs, "init": args.init,
        "null_space": args.null_space, "sam_rho": args.sam_rho, "relearn_rho": args.relearn_rho,
        "rank": args.rank, "target_auc_band": args.target_auc_band, "adversary": [args.adversary_steps, args.adversary_reset, args.adversary_weight], "params": params.loss_params,
        "stopped": target["stopped"], "kept_step": target["kept_step"],
        "unlearn_seconds": round(unlearned - started, 1), "audit_seconds": round(time.perf_counter() - unlearned, 1),
        "nll": {s: after["sets"][s]["summary"]["nll"] for s in sets},
        "rouge_l": {s: [base["sets"][s]["summary"]["rouge_l"], after["sets"][s]["summary"]["rouge_l"]] for s in sets},
        "canary_exposure": {s: after["sets"][s]["summary"]["canary_exposure"] for s in sets},
        "mia_auc": {k: after["mia"]["forget"][k]["auc"] for k in ("loss", "min_k_pp")},
        "verdict": after["verdict"]["verdict"], "failed": after["verdict"]["failed"],
    }
    print("RESULT", json.dumps(result))
    out = ROOT / "bench" / "results" / "canary-twins"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"result": result, "evaluations": evaluations}, indent=2) + "\n")


if __name__ == "__main__":
    main()
