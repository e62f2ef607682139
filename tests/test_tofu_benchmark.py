"""The TOFU benchmark at its smallest size (1 author forgotten, 3 retained, 1 held out), end to end:
the splits are TOFU's, the full model really memorised the forget author, the retain-only reference
did not, and IHL + FILA brings the forget author's answers down."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetkit.artifacts import read_metadata
from forgetkit.benchmark.measure import measured
from forgetkit.benchmark.runner import GridSpec, run_benchmark
from forgetkit.benchmark.finetune import FineTuneConfig
from forgetkit.benchmark.targets import TargetSpec, build_targets
from forgetkit.benchmark.tofu_splits import SubsetSpec, select, write_splits
from forgetkit.errors import ForgetkitError

ROOT = Path(__file__).resolve().parents[1]
TOFU = Path(os.environ.get("FORGETKIT_TOFU") or ROOT.parent / "shared" / "data" / "tofu")
# The TOFU splits live beside the checkout (../shared), never in the repository; without them these skip.
needs_tofu = pytest.mark.skipif(not (TOFU / "forget10.jsonl").is_file(),
                                reason="TOFU splits not in ../shared/data/tofu (set FORGETKIT_TOFU)")


@needs_tofu
def test_subset_keeps_authors_apart(tmp_path):
    spec = SubsetSpec(forget_authors=2, retain_authors=5, holdout_authors=1)
    rows = select(TOFU, spec)
    assert [len(rows[k]) for k in ("forget", "retain", "holdout")] == [40, 100, 20]
    questions = {k: {r["question"] for r in rows[k]} for k in ("forget", "retain", "holdout")}
    assert not questions["forget"] & questions["retain"]
    assert not questions["holdout"] & (questions["forget"] | questions["retain"])
    # The forget and held-out authors are forget10's first three, in order, 20 questions each.
    forget10 = [json.loads(line)["question"] for line in (TOFU / "forget10.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows["forget"] + rows["holdout"]] == forget10[:60]
    assert {r["question"] for r in rows["retain_eval"]} <= questions["retain"]
    assert len(rows["full_train"]) == 140 and len(rows["reference_train"]) == 100
    paths = write_splits(TOFU, spec, tmp_path / "data")
    assert sum(1 for _ in paths["forget"].open()) == 40
    capped = select(TOFU, dataclasses.replace(spec, utility_rows=7))
    assert len(capped["real_authors"]) == len(capped["world_facts"]) == 7
    assert capped["real_authors"] == rows["real_authors"][:7] and len(rows["world_facts"]) > 100
    fewer = dataclasses.replace(spec, utility_rows=7, retain_eval_rows=9)
    assert len(select(TOFU, fewer)["retain_eval"]) == 9 < len(rows["retain_eval"])
    # Caps are part of the folder name, so a capped subset is never read back as the whole one.
    assert fewer.name == "tofu-f2-r5-h1-u7-e9" and spec.name == "tofu-f2-r5-h1"
    with pytest.raises(ForgetkitError, match="authors"):
        select(TOFU, SubsetSpec(forget_authors=15, retain_authors=5, holdout_authors=6))


def test_measured_sees_a_block_s_own_memory():
    with measured() as m:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, touched
        block.add_(1)
    del block
    assert 60 <= m.peak_mib <= 200 and m.seconds > 0
    with measured() as idle:
        pass
    assert idle.peak_mib < 16


HEAP_REUSE = """
import ctypes, ctypes.util, torch
from forgetkit.benchmark.measure import measured
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallopt(-3, 512 * 2**20)  # mmap threshold 512 MiB: big tensors come from the heap
libc.mallopt(-1, 2**30)  # trim threshold 1 GiB: freed heap memory stays resident
big = torch.ones(200 * 2**20 // 4)
pin = torch.ones(10)  # sits above the big block, so freeing it leaves a hole, not a shorter heap
del big
with measured() as m:
    block = torch.ones(64 * 2**20 // 4)
    block.add_(1)
print(m.peak_mib)
"""


def test_measured_sees_a_block_reusing_freed_heap_memory():
    # The hole left by the freed 200 MiB is resident already; the block refills it.
    out = subprocess.run([sys.executable, "-c", HEAP_REUSE], capture_output=True, text=True, check=True).stdout
    assert 60 <= float(out.split()[-1]) <= 200


# 20 real-authors and 20 world-facts rows (of 100 and 117) keep Model Utility's shape at a fifth of the cost.
SMALLEST = SubsetSpec(forget_authors=1, retain_authors=3, holdout_authors=1, utility_rows=20)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """Shared by the tests below: the full and reference models are built once."""
    return tmp_path_factory.mktemp("tofu-bench")


def test_seed_summary_gives_mean_and_sample_spread_per_configuration():
    from forgetkit.benchmark.runner import seed_summary

    runs = [{"method": "ihl", "init": "lora", "rank": 8, "seed": s, "forget_quality": fq, "model_utility": 0.8,
             "wall_s": w} for s, fq, w in ((0, 0.1, 3.0), (1, 0.3, 5.0), (2, 0.5, 7.0))]
    runs.append({"method": "npo", "init": "lora", "rank": 8, "seed": 0, "forget_quality": None, "model_utility": 0.5,
                 "wall_s": 2.0})
    ihl, npo = seed_summary(runs)
    assert ihl["seeds"] == [0, 1, 2] and npo["seeds"] == [0]
    assert ihl["forget_quality"]["mean"] == pytest.approx(0.3)
    assert ihl["forget_quality"]["std"] == pytest.approx(0.2)  # sqrt(((0.2)^2 + 0 + (0.2)^2) / 2)
    assert ihl["wall_s"]["values"] == [3.0, 5.0, 7.0] and ihl["wall_s"]["std"] == pytest.approx(2.0)
    assert ihl["model_utility"]["std"] == pytest.approx(0.0, abs=1e-12) and npo["model_utility"]["std"] == 0.0
    assert "forget_quality" not in npo


def test_runs_off_the_default_lr_budget_or_confinement_are_cached_and_labelled_apart():
    from forgetkit.benchmark.runner import run_label, run_name

    default = GridSpec()
    # Runs at the defaults keep the folder names they were cached under before these options existed.
    assert run_name("ihl", "fila", 8, default) == "ihl-fila-r8" and run_label("ihl", default) == "ihl"
    assert run_name("ihl", "fila", 8, dataclasses.replace(default, seed=2)) == "ihl-fila-r8-s2"
    grid = dataclasses.replace(default, lr=3e-3, epochs=15, null_space=0.8, seed=1)
    assert run_name("ihl@holdout", "lora", 8, grid) == "ihl@holdout-lora-r8-lr0.003-e15-null0.8-s1"
    assert run_label("ihl@holdout", grid) == "ihl@holdout lr 0.003 15 epochs null 0.8"
    names = {run_name("ihl", "lora", 8, dataclasses.replace(default, **change))
             for change in ({}, {"lr": 5e-3}, {"epochs": 10}, {"null_space": 0.5}, {"null_space": 0.8},
                            {"loss_params": (("retain_weight", "3"),)}, {"retain_batch_size": 32}, {"sam_rho": 0.2},
                            {"relearn_rho": 0.2}, {"adversary_steps": 4}, {"adversary_steps": 4, "adversary_weight": 3.0})}
    assert len(names) == 11 and run_label("ihl", dataclasses.replace(default, sam_rho=0.2)) == "ihl SAM 0.2"
    assert run_label("ihl", dataclasses.replace(default, relearn_rho=0.5)) == "ihl relearn-aware 0.5"
    assert run_label("ihl", dataclasses.replace(default, adversary_steps=4, adversary_weight=3.0)) == "ihl adversary 4x3"
    weighted = dataclasses.replace(default, loss_params=(("retain_weight", "3"),))
    assert run_label("ihl", weighted) == "ihl retain_weight 3"
    # The check interval names runs stopped at a target apart, and only those.
    checked = dataclasses.replace(default, check_every=2)
    assert run_name("ihl@reference", "lora", 8, checked) == "ihl@reference-lora-r8-c2"
    assert run_label("ihl@reference", checked) == "ihl@reference checks every 2"
    assert run_name("ihl", "lora", 8, checked) == "ihl-lora-r8"
    # @holdout with the held-out Forget Quality estimate is cached apart.
    estimated = dataclasses.replace(default, holdout_quality=True, seed=1)
    assert run_name("ihl@holdout", "lora", 8, estimated) == "ihl@holdout-lora-r8-hq-s1"
    assert run_label("ihl@holdout", estimated) == "ihl@holdout held-out FQ"
    assert run_name("ihl@reference", "lora", 8, estimated) == "ihl@reference-lora-r8-s1"


@needs_tofu
def test_smallest_benchmark_memorises_then_forgets(bench_dir):
    grid = GridSpec(methods=("ihl",), inits=("fila",), ranks=(8,), attacks=(), max_new_tokens=48)
    results = run_benchmark(TOFU, bench_dir, SMALLEST, TargetSpec.tiny(), grid)

    full, reference, (run,) = results["full"], results["reference"], results["runs"]
    # The full model trained on the forget author and answers like it; the reference never saw them.
    assert results["targets"]["full"]["answer_accuracy"] >= 0.97
    assert full["forget_rouge_l"] >= 0.6
    assert full["forget_rouge_l"] >= reference["forget_rouge_l"] + 0.4
    assert full["mia_auc_min_k_pp"] >= 0.9
    # Unlearning brings the forget answers down and keeps most of the retained ones.
    assert run["forget_rouge_l"] <= 0.5 * full["forget_rouge_l"]
    assert run["retain_rouge_l"] >= 0.6 * full["retain_rouge_l"]
    assert 0.0 <= run["forget_quality"] <= 1.0 and run["model_utility"] > 0
    assert run["stages"]["unlearn"]["seconds"] > 0
    # Runs audit the adapter alone (--skip-base): the full model was audited once, before.
    run_report = json.loads(next(bench_dir.glob("*/*/runs/ihl-fila-r8/report.json")).read_text())
    assert set(run_report["results"]) == {"unlearned"}
    # Everything is cached: a second run reads the finished run back instead of redoing it.
    again = run_benchmark(TOFU, bench_dir, SMALLEST, TargetSpec.tiny(), grid)
    assert again["runs"] == results["runs"]

    # A confined grid at another lr: cached apart, labelled apart, the adapter confined.
    confined = dataclasses.replace(grid, inits=("lora",), null_space=0.8, lr=5e-3)
    (run,) = run_benchmark(TOFU, bench_dir, SMALLEST, TargetSpec.tiny(), confined)["runs"]
    assert run["method"] == "ihl lr 0.005 null 0.8" and run["null_space"] == 0.8
    adapter = next(bench_dir.glob("*/*/runs/ihl-lora-r8-lr0.005-null0.8/adapter"))
    assert 0 < read_metadata(adapter).results["null_space_leak"]["max"] < 1

    # ``loss@reference`` stops on Forget Quality against the bench's own reference model: the reference
    # report reaches the stopping rule, and every evaluation measured Forget Quality.
    oracle = dataclasses.replace(grid, methods=("ihl@reference",), inits=("lora",), epochs=2, check_every=2)
    (run,) = run_benchmark(TOFU, bench_dir, SMALLEST, TargetSpec.tiny(), oracle)["runs"]
    target = read_metadata(next(bench_dir.glob("*/*/runs/ihl@reference-lora-r8-e2-c2/adapter"))).results["target"]
    assert target["target"] == "reference" and Path(target["reference_report"]).name == "reference.json"
    assert target["evaluations"] and all("Forget Quality" in e["values"] for e in target["evaluations"])


@needs_tofu
def test_recipe_chains_the_stages_against_the_reference(bench_dir):
    """recipes/tofu.sh through the CLI: reference audited once, FILA + IHL, audit with every attack."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "RELEARN_STEPS": "5"}  # relearning's budget is not what this test checks
    args = ["--tofu", str(TOFU), "--forget-authors", "1", "--retain-authors", "3", "--holdout-authors", "1",
            "--utility-rows", "20"]
    result = subprocess.run(["bash", str(ROOT / "recipes" / "tofu.sh"), str(bench_dir), *args],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((bench_dir / "report.json").read_text())
    assert report["reference"]["source"]["report"].endswith("reference.json")
    base, after = report["results"]["base"], report["results"]["unlearned"]
    assert base["sets"]["forget"]["summary"]["rouge_l"] >= 0.6
    assert after["sets"]["forget"]["summary"]["rouge_l"] <= 0.5 * base["sets"]["forget"]["summary"]["rouge_l"]
    # Forget Quality against the retain-only reference rises from the memorising base's.
    assert after["tofu"]["forget_quality"] > base["tofu"]["forget_quality"]
    from forgetkit.audit.attacks import ATTACKS

    assert set(after["attack_seconds"]) == set(ATTACKS)  # --attacks all
    assert {"paraphrase", "in-context", "int4", "nf4", "gguf-q4_0", "relearn-part-5", "relearn-related-5",
            "sampling"} <= set(after["attacks"])
    # TOFU records carry paraphrased answers: truth ratios are attacked like every other metric.
    assert after["attacks"]["int4"]["matrix"]["truth_ratio"]["forget"][1] is not None


@needs_tofu
def test_full_benchmark_is_forget10_against_retain90():
    rows = select(TOFU, SubsetSpec(forget_authors=None))
    assert len(rows["forget"]) == 400 and len(rows["retain"]) == 3600 and rows["holdout"] == []
    assert SubsetSpec(forget_authors=None).name == "tofu-full"


@needs_tofu
def test_a_given_model_is_fine_tuned_in_place_of_the_tiny_one(tiny_models, tmp_path):
    """The path a Hub id takes on a GPU, here with a local folder: no tokenizer training, no utility sets
    added to training, TOFU's fine-tuning recipe (lr, epochs) as given."""
    spec = TargetSpec(model=str(tiny_models["llama"]), finetune=FineTuneConfig(lr=1e-3, epochs=1, batch_size=16,
                                                                                warmup_steps=0))
    splits = write_splits(TOFU, SMALLEST, tmp_path / "data")
    models = build_targets(TOFU, splits, tmp_path / spec.key(), spec)
    assert spec.key().startswith("llama-")
    for target, trained_on in (("full", 80), ("reference", 60)):
        stats = json.loads((models[target] / "finetune.json").read_text())
        assert stats["epochs"] == 1 and stats["examples"] == trained_on
        tuned = AutoModelForCausalLM.from_pretrained(models[target])
        original = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
        assert not torch.equal(tuned.lm_head.weight, original.lm_head.weight)  # every parameter trained


@needs_tofu
def test_a_pretrained_model_can_be_taught_by_a_merged_mlp_lora(tiny_models, tmp_path):
    """The CPU path for a pretrained model: a LoRA on the MLPs, merged, so the saved targets are plain
    checkpoints whose attention and head weights are the base's and whose MLP weights moved."""
    spec = TargetSpec.lora(str(tiny_models["llama"]), rank=4, max_epochs=2)
    assert spec.key() != TargetSpec(model=str(tiny_models["llama"]), finetune=spec.finetune).key()
    # Full fine-tuning keeps the cache names it had before LoRA teaching existed.
    assert TargetSpec.tiny().key() == "tiny-085c45748d"
    anchored = dataclasses.replace(spec, finetune=dataclasses.replace(spec.finetune, anchor_weight=2.0))
    assert anchored.key() != spec.key()
    splits = write_splits(TOFU, SMALLEST, tmp_path / "data")
    models = build_targets(TOFU, splits, tmp_path / spec.key(), spec)
    original = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    for target in ("full", "reference"):
        assert json.loads((models[target] / "finetune.json").read_text())["epochs"] == 2
        tuned = AutoModelForCausalLM.from_pretrained(models[target])
        assert not any("lora" in name for name in tuned.state_dict())
        layer, base_layer = tuned.model.layers[0], original.model.layers[0]
        assert torch.equal(layer.self_attn.q_proj.weight, base_layer.self_attn.q_proj.weight)
        assert torch.equal(tuned.lm_head.weight, original.lm_head.weight)
        assert not torch.equal(layer.mlp.down_proj.weight, base_layer.mlp.down_proj.weight)


def test_plot_tells_a_loss_stopped_at_a_target_from_the_same_loss_run_to_the_end():
    from forgetkit.benchmark.plots import loss_and_target, marker

    assert marker({"method": "ihl lr 0.003 null 0.8", "init": "lora"}) == "o"
    assert marker({"method": "ihl", "init": "fila"}) == "*"
    assert marker({"method": "ihl@reference lr 0.003 null 0.8", "init": "lora"}) == "P"
    assert marker({"method": "unseen@holdout", "init": "lora"}) == "D"
    # The colour is the loss's, whatever the label adds after it.
    assert loss_and_target({"method": "ihl@reference lr 0.003 null 0.8"}) == ("ihl", "reference")
    assert loss_and_target({"method": "ihl lr 0.003"}) == ("ihl", "")


def test_plot_shades_further_configurations_of_one_loss():
    from forgetkit.benchmark.plots import shade

    assert shade("#2ca02c", 0) == "#2ca02c"
    # Variant 1 blends 45% toward white, variant 2 40% toward black: 0x2c = 44 -> 44 + 0.45 * 211 = 139 (0x8b),
    # 44 * 0.6 = 26 (0x1a).
    assert shade("#2ca02c", 1)[1:3] == "8b" and shade("#2ca02c", 2)[1:3] == "1a"
    assert len({shade("#1f77b4", k) for k in range(6)}) == 6


def test_combined_results_keep_every_run_and_refuse_another_models_results(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from tofu_combine import combine, result_files
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = ROOT / "bench" / "results"
    stem, combined = combine(result_files([results / "tofu-target-reference", results / "tofu-target-holdout"]))
    assert stem == "tofu-f4-r36-h4-tiny-085c45748d" and len(combined["runs"]) == 6
    assert {row["method"].split()[0] for row in combined["summary"]} == {"ihl@reference", "ihl@holdout"}
    assert all(row["seeds"] == [0, 1, 2] for row in combined["summary"])
    with pytest.raises(SystemExit, match="another subset or other full/reference models"):
        combine(result_files([results / "tofu-target-reference", results / "tofu-smollm2-reference"]))
