"""Stages on two CPU processes (torchrun, gloo) give what one process gives."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetkit.artifacts import load_tensor_artifact, read_metadata
from forgetkit.audit.attacks import AttackParams
from forgetkit.data import load_records
from forgetkit.distributed import Ranks, rank_generator, shard
from forgetkit.errors import ForgetkitError
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

BIN = Path(sys.executable).parent
UNLEARN_ARGS = ("--epochs", "2", "--batch-size", "5", "--micro-batch-size", "2", "--lr", "1e-2", "--rank", "4", "--seed", "3")
UNLEARN_PARAMS = UnlearnParams(rank=4, train=TrainConfig(lr=1e-2, epochs=2, batch_size=5, micro_batch_size=2, seed=3))


def accelerate_launch(*args, config_name: str = "two_processes_cpu.yaml", wait=True):
    """Through accelerate, with one of the recipes' two-process configs."""
    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / config_name
    command = [str(BIN / "accelerate"), "launch", "--config_file", str(config), "-m", "forgetkit.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    # A bounded wait: processes out of step in a collective would otherwise hang the test run.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def torchrun(*args, wait=True):
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "forgetkit.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sharding_covers_every_item_once_and_rank_streams_differ():
    items = list(range(11))
    shares = [shard(items, Ranks(r, 3)) for r in range(3)]
    assert sorted(x for s in shares for x in s) == items and shares[0] == [0, 3, 6, 9]
    draws = [torch.randperm(1000, generator=rank_generator(7, Ranks(r, 2))) for r in (0, 1)]
    again = torch.randperm(1000, generator=rank_generator(7, Ranks(0, 2)))
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], again)


def test_a_deepspeed_launch_without_deepspeed_installed_fails_in_one_line(tiny_models, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what an environment without it imports
    with pytest.raises(ForgetkitError, match=r"deepspeed is not installed: pip install 'forgetkit\[deepspeed\]'"):
        run_fisher(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), None, tmp_path / "f.safetensors", FisherParams())
    assert not (tmp_path / "f.safetensors").exists()

def test_a_deepspeed_config_file_is_read_and_its_auto_values_filled(tmp_path, monkeypatch):
    from forgetkit.distributed import sharded_base_requested
    from forgetkit.errors import ForgetkitError
    from forgetkit.zero import engine_config

    config = {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                    "stage3_param_persistence_threshold": "auto", "offload_param": {"device": "cpu"}},
              "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    assert sharded_base_requested()  # ZeRO-3: fisher and audit split the base
    filled = engine_config(micro_batch_size=2, max_grad_norm=0.5, world=4, hidden_size=64)
    assert (filled["train_micro_batch_size_per_gpu"], filled["gradient_accumulation_steps"], filled["train_batch_size"]) == (2, 1, 8)
    assert filled["gradient_clipping"] == 0.5 and filled["bf16"]["enabled"] is False
    zero = filled["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"], zero["stage3_param_persistence_threshold"]) == (4096, 3686, 640)
    assert zero["offload_param"]["device"] == "cpu"  # the config's own choices stay

    path.write_text(json.dumps({**config, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}))
    with pytest.raises(ForgetkitError, match=f"{path}: remove its 'optimizer' section"):
        engine_config(2, 0.5, 4, 64)
    path.write_text(json.dumps({**config, "zero_optimization": {**config["zero_optimization"], "sub_group_size": "auto"}}))
    with pytest.raises(ForgetkitError, match="set them: zero_optimization.sub_group_size"):
        engine_config(2, 0.5, 4, 64)
    path.write_text(json.dumps({**config, "zero_optimization": {"stage": 2}}))
    assert not sharded_base_requested()  # ZeRO-2 splits optimiser state and gradients, not weights


def test_deepspeed_checkpoints_are_resumed_only_by_the_launch_that_wrote_them(tmp_path):
    """Each process wrote its own partition: another process count, or a checkpoint of a launch without
    DeepSpeed, is refused before DeepSpeed reads anything."""
    from forgetkit.zero import CHECKPOINT_STATE, ZeroEngine

    engine = ZeroEngine.__new__(ZeroEngine)  # the guard runs before the engine is touched
    engine.world, engine.ranks = 2, Ranks(0, 2)
    (tmp_path / "epoch-0001").mkdir()
    (tmp_path / "epoch-0001" / CHECKPOINT_STATE).write_text(json.dumps({"epoch": 1, "log": [], "processes": 4}))
    with pytest.raises(ForgetkitError, match="epoch-0001: written by 4 processes; resume it with as many"):
        engine.restore(tmp_path)
    (tmp_path / "epoch-0002").mkdir()
    (tmp_path / "epoch-0002" / CHECKPOINT_STATE).write_text(json.dumps({"epoch": 2, "log": []}))
    with pytest.raises(ForgetkitError, match="epoch-0002: made without DeepSpeed"):
        engine.restore(tmp_path)
    assert ZeroEngine.restore(engine, tmp_path / "none") == (0, [])


def test_fisher_on_two_processes_matches_one(tiny_models, data_dir, tmp_path):
    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    run_fisher(str(model), str(forget), str(retain), tmp_path / "one.safetensors", FisherParams(dtype="float32", batch_size=3))
    accelerate_launch("fisher", model, forget, "--retain", retain, "-o", tmp_path / "two.safetensors", "--dtype", "float32",
                      "--batch-size", "3", "--accumulate-on", "cpu")
    one, two = load_tensor_artifact(tmp_path / "one.safetensors"), load_tensor_artifact(tmp_path / "two.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-5, atol=1e-5 * one[name].abs().max().item()), name
    meta_one, meta_two = read_metadata(tmp_path / "one.safetensors"), read_metadata(tmp_path / "two.safetensors")
    assert meta_two.results["processes"] == 2 and meta_one.results["processes"] == 1
    for key in ("forget_tokens", "retain_tokens", "forget_examples"):
        assert meta_one.results[key] == meta_two.results[key], key
    assert meta_two.results["peak_memory_mib"] > 0
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("config_name", ["fsdp_two_processes_cpu.yaml", "zero3_two_processes_cpu.yaml"])
def test_fisher_with_a_sharded_base_matches_one_process(tiny_models, data_dir, tmp_path, config_name):
    """FSDP, or a DeepSpeed ZeRO-3 config (fisher takes no optimiser step, so it splits the base the
    FSDP way): each process holds half of every weight and squares its half of each batch's gradient."""
    model, forget, retain = tiny_models["gpt2"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    run_fisher(str(model), str(forget), str(retain), tmp_path / "one.safetensors", FisherParams(dtype="float32", batch_size=3))
    accelerate_launch("fisher", model, forget, "--retain", retain, "-o", tmp_path / "two.safetensors", "--dtype", "float32",
                      "--batch-size", "3", config_name=config_name)
    one, two = load_tensor_artifact(tmp_path / "one.safetensors"), load_tensor_artifact(tmp_path / "two.safetensors")
    assert set(one) == set(two)
    for name in one:
        assert one[name].shape == two[name].shape, name
        assert torch.allclose(one[name], two[name], rtol=1e-5, atol=1e-5 * one[name].abs().max().item()), name
    meta_one, meta_two = read_metadata(tmp_path / "one.safetensors"), read_metadata(tmp_path / "two.safetensors")
    for key in ("forget_tokens", "retain_tokens", "forget_examples"):
        assert meta_one.results[key] == meta_two.results[key], key
    sharding = meta_two.results["sharded_base"]
    assert sharding["blocks"] == 2 and sharding["held_bytes"] < 0.6 * sharding["model_bytes"], sharding


def test_unlearn_on_two_processes_follows_one(tiny_models, data_dir, tmp_path):
    """A global batch of 5 in micro-batches of 2, 2 and 1: ranks run two and one of them."""
    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    run_unlearn(str(model), str(forget), tmp_path / "one", UNLEARN_PARAMS, retain=str(retain))
    torchrun("unlearn", model, forget, "--retain", retain, *UNLEARN_ARGS, "-o", tmp_path / "two")
    assert_same_training(tmp_path / "one", tmp_path / "two")
    assert read_metadata(tmp_path / "two").results["processes"] == 2


def test_unlearn_against_a_simulated_attacker_on_two_processes_follows_one(tiny_models, data_dir, tmp_path):
    """--adversary-steps: every process trains the same attacker on the same pool, each takes the loss under
    it on its own micro-batches, and the summed step is the one-process step."""
    from forgetkit.adversary import AdversaryConfig

    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    attacked = dataclasses.replace(UNLEARN_PARAMS, train=dataclasses.replace(
        UNLEARN_PARAMS.train, adversary=AdversaryConfig(steps=2, reset_every=3)))
    run_unlearn(str(model), str(forget), tmp_path / "one", attacked, retain=str(retain))
    torchrun("unlearn", model, forget, "--retain", retain, *UNLEARN_ARGS, "--adversary-steps", "2", "--adversary-reset", "3",
             "-o", tmp_path / "two")
    assert_same_training(tmp_path / "one", tmp_path / "two")
    log = json.loads((tmp_path / "two" / "training_log.json").read_text())
    assert all(entry["loss_under_attack"] != 0 for entry in log)


def test_unlearn_with_a_sharded_base_follows_one_process(tiny_models, data_dir, tmp_path):
    """FSDP through accelerate's config: each process holds half the base, the training is the
    one-process training, including FILA's residual base and the conversion of the result to a plain
    LoRA for the original base; an uneven global batch (5 in micro-batches 2, 2, 1) keeps the ranks'
    gathers in step."""
    from forgetkit.stages.init import InitParams, run_init

    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    run_fisher(str(model), str(forget), str(retain), tmp_path / "fisher.safetensors", FisherParams(batch_size=4))
    run_init(str(model), tmp_path / "init", InitParams(rank=4), fisher=str(tmp_path / "fisher.safetensors"))
    run_unlearn(str(model), str(forget), tmp_path / "one", UNLEARN_PARAMS, retain=str(retain), init=str(tmp_path / "init"))
    accelerate_launch("unlearn", model, forget, "--retain", retain, "--init", tmp_path / "init", *UNLEARN_ARGS,
                      "-o", tmp_path / "two", config_name="fsdp_two_processes_cpu.yaml")
    assert_same_training(tmp_path / "one", tmp_path / "two")
    results = read_metadata(tmp_path / "two").results
    sharding = results["sharded_base"]
    assert results["processes"] == 2 and results["converted_from_residual_base"]
    assert sharding["blocks"] == 2  # the tiny Llama's two decoder layers
    # Half of every sharded weight, plus the whole (small) LoRA weights.
    assert 0.45 * sharding["model_bytes"] < sharding["held_bytes"] < 0.6 * sharding["model_bytes"], sharding
    assert read_metadata(tmp_path / "one").results["sharded_base"] is None


def test_unlearn_in_a_deepspeed_zero3_engine_follows_one_process(tiny_models, data_dir, tmp_path):
    """DeepSpeed ZeRO-3 through accelerate's config: the engine partitions base, adapter and optimiser
    state over the processes, reduces and clips the gradients and steps; the loss curve and adapter
    are the one-process ones (FILA's residual base and the conversion of the result included)."""
    from forgetkit.stages.init import InitParams, run_init

    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    run_fisher(str(model), str(forget), str(retain), tmp_path / "fisher.safetensors", FisherParams(batch_size=4))
    run_init(str(model), tmp_path / "init", InitParams(rank=4), fisher=str(tmp_path / "fisher.safetensors"))
    run_unlearn(str(model), str(forget), tmp_path / "one", UNLEARN_PARAMS, retain=str(retain), init=str(tmp_path / "init"))
    common = ("unlearn", model, forget, "--retain", retain, "--init", tmp_path / "init", *UNLEARN_ARGS)
    accelerate_launch(*common, "-o", tmp_path / "two", config_name="zero3_two_processes_cpu.yaml")
    assert_same_training(tmp_path / "one", tmp_path / "two")
    results = read_metadata(tmp_path / "two").results
    layout = results["sharded_base"]
    assert results["processes"] == 2 and results["converted_from_residual_base"]
    assert layout["by"] == "deepspeed-zero3"
    assert 0.45 * layout["model_bytes"] < layout["held_bytes"] < 0.55 * layout["model_bytes"], layout


def test_until_forgotten_with_a_sharded_base_stops_where_one_process_does(tiny_models, data_dir, tmp_path):
    """The stopping rule evaluated on the split model by every process (each forward pass gathers
    weights from all of them), rank 0's measure deciding for all. FSDP here; under a DeepSpeed ZeRO-3
    engine the same code gives the same statuses but generates ~5x slower on these CPU processes."""
    model, retain = tiny_models["llama"], data_dir / "retain_small.jsonl"
    # Small sets: the rule generates from every prefix of every record on every process.
    forget, holdout = tmp_path / "forget.jsonl", tmp_path / "holdout.jsonl"
    for name, target, count in (("forget", forget, 10), ("holdout", holdout, 5)):
        target.write_text("".join((data_dir / f"{name}.jsonl").read_text().splitlines(keepends=True)[:count]))
    params = dataclasses.replace(UNLEARN_PARAMS, until_forgotten=True,
                                 train=dataclasses.replace(UNLEARN_PARAMS.train, epochs=4))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs; the tiny model generates 4x faster on one thread
    try:
        run_unlearn(str(model), str(forget), tmp_path / "one", params, retain=str(retain), holdout=str(holdout))
    finally:
        torch.set_num_threads(threads)
    accelerate_launch("unlearn", model, forget, "--retain", retain, "--holdout", holdout, "--until-forgotten",
                      *UNLEARN_ARGS, "--epochs", "4", "-o", tmp_path / "two", config_name="fsdp_two_processes_cpu.yaml")
    one, two = read_metadata(tmp_path / "one").results, read_metadata(tmp_path / "two").results
    assert one["stopped_early"] and one["epochs_run"] < 4, one
    assert (two["stopped_early"], two["epochs_run"]) == (one["stopped_early"], one["epochs_run"])
    curve_one, curve_two = (json.loads((tmp_path / run / "training_log.json").read_text()) for run in ("one", "two"))
    assert [round(e["loss"], 4) for e in curve_one] == [round(e["loss"], 4) for e in curve_two]


def assert_same_training(one: Path, two: Path, same_tokens: bool = True) -> None:
    curve_one = json.loads((one / "training_log.json").read_text())
    curve_two = json.loads((two / "training_log.json").read_text())
    assert len(curve_one) == len(curve_two) > 4
    for a, b in zip(curve_one, curve_two):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(abs(a["loss"]), 1.0), (a, b)
    weights_one = load_file(str(one / "adapter_model.safetensors"))
    weights_two = load_file(str(two / "adapter_model.safetensors"))
    for name in weights_one:
        assert torch.allclose(weights_one[name], weights_two[name], atol=1e-4), name
    if same_tokens:  # a resumed run counts the tokens it processed itself
        assert read_metadata(one).results["train_tokens"] == read_metadata(two).results["train_tokens"]


@pytest.mark.parametrize("launch", ["torchrun", "deepspeed-zero3"])
def test_a_killed_two_process_unlearn_resumes_to_the_same_adapter(tiny_models, data_dir, tmp_path, launch):
    model, forget, retain = tiny_models["llama"], data_dir / "forget.jsonl", data_dir / "retain_small.jsonl"
    params = UnlearnParams(rank=4, train=TrainConfig(lr=5e-3, epochs=12, batch_size=5, micro_batch_size=1, seed=1))
    run_unlearn(str(model), str(forget), tmp_path / "whole", params, retain=str(retain))
    args = ("unlearn", model, forget, "--retain", retain, "--epochs", "12", "--batch-size", "5", "--micro-batch-size", "1",
            "--lr", "5e-3", "--rank", "4", "--seed", "1", "-o", tmp_path / "resumed")
    if launch == "torchrun":
        start = torchrun
    else:  # DeepSpeed writes its own checkpoints: every process its partition of adapter and optimiser
        def start(*command_args, wait=True):
            return accelerate_launch(*command_args, config_name="zero3_two_processes_cpu.yaml", wait=wait)
    job = start(*args, wait=False)
    checkpoints = tmp_path / "resumed.checkpoints"
    deadline = time.time() + 240
    while not (checkpoints / "epoch-0002" / "state.json").is_file():
        assert job.poll() is None and time.time() < deadline, "no second checkpoint before the job ended"
        time.sleep(0.05)
    kill_everything_running(str(tmp_path / "resumed"))
    job.wait()
    assert not (tmp_path / "resumed").exists()
    done = sorted(p.name for p in checkpoints.glob("epoch-*"))
    assert 2 <= len(done) < 12
    if launch != "torchrun":  # each process's DeepSpeed partition is no checkpoint for a plain run
        with pytest.raises(ForgetkitError, match="made by a DeepSpeed launch; resume it under the launch that made it"):
            run_unlearn(str(model), str(forget), tmp_path / "resumed", params, retain=str(retain), resume=True)
    result = start(*args, "--resume")
    assert f"after epoch {len(done)}" in (result.stdout + result.stderr).replace("\n", " ")
    assert_same_training(tmp_path / "whole", tmp_path / "resumed", same_tokens=False)


def kill_everything_running(marker: str) -> None:
    """SIGKILL the launcher and its workers (a hard crash: no handler runs, nothing is flushed)."""
    for _ in range(3):
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        time.sleep(0.2)


def with_truth_ratio_fields(source: Path, target: Path) -> Path:
    """The forget set with TOFU's paraphrased and perturbed answers (other records' answers)."""
    records = [r.fields for r in load_records(str(source)) if "question" in r.fields]
    rows = []
    for i, fields in enumerate(records):
        others = [records[(i + k) % len(records)]["answer"] for k in (1, 2, 3)]
        rows.append({**fields, "paraphrased_answer": fields["answer"], "perturbed_answer": others})
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return target


def test_audit_on_two_processes_gives_the_same_numbers(tiny_models, data_dir, tmp_path):
    model = tiny_models["llama"]
    forget = with_truth_ratio_fields(data_dir / "forget.jsonl", tmp_path / "forget_tofu.jsonl")
    holdout = data_dir / "holdout.jsonl"
    params = AuditParams(max_new_tokens=8, canary_candidates=15, attacks=("quantize",))
    run_audit(str(model), tmp_path / "one.json", params, forget=str(forget), holdout=str(holdout))
    torchrun("audit", model, "--forget", forget, "--holdout", holdout, "--max-new-tokens", "8", "--canary-candidates", "15",
             "--attacks", "quantize", "-o", tmp_path / "two.json")
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["processes"] == 2 and (tmp_path / "two.html").is_file()
    assert one["results"]["model"]["sets"]["forget"]["summary"]["truth_ratio"] is not None
    assert_same_numbers(one["results"], two["results"])


def test_audit_with_a_sharded_base_gives_the_same_numbers(tiny_models, data_dir, tmp_path):
    """FSDP: every process evaluates every record on the sharded model (base and unlearned variants,
    paraphrase and sampling attacks); the report is the one-process report."""
    model, holdout = tiny_models["llama"], data_dir / "holdout.jsonl"
    forget = with_truth_ratio_fields(data_dir / "forget.jsonl", tmp_path / "forget_tofu.jsonl")
    run_unlearn(str(model), str(data_dir / "forget.jsonl"), tmp_path / "adapter",
                UnlearnParams(loss="ga", rank=4, train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)))
    params = AuditParams(max_new_tokens=8, canary_candidates=15, attacks=("paraphrase", "sampling"),
                         attack=AttackParams(samples=4))
    run_audit(str(model), tmp_path / "one.json", params, forget=str(forget), holdout=str(holdout),
              adapter=str(tmp_path / "adapter"))
    common = ("audit", model, "--adapter", tmp_path / "adapter", "--forget", forget, "--holdout", holdout,
              "--max-new-tokens", "8", "--canary-candidates", "15", "--samples", "4")
    accelerate_launch(*common, "--attacks", "paraphrase,sampling", "-o", tmp_path / "two.json",
                      config_name="fsdp_two_processes_cpu.yaml")
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert two["processes"] == 2 and two["sharded_base"]["by"] == "fsdp2" and not one["sharded_base"]
    layout = two["sharded_base"]
    assert layout["held_bytes"] < 0.6 * layout["model_bytes"], layout
    assert set(two["results"]) == {"base", "unlearned"}
    assert_same_numbers(one["results"], two["results"])


TIMINGS = ("attack_seconds",)  # wall-clock seconds, not numbers of the model: they differ between any two runs


def assert_same_numbers(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key not in TIMINGS:
                assert_same_numbers(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # Shards batch records differently, so float32 sums differ in the last bits; min-k%++
        # (a z-score of token log-probabilities) turns that into up to ~3e-4 relative (seen: 2.6e-4).
        assert b == pytest.approx(a, rel=1e-3, abs=1e-6), path
    else:
        assert a == b, path
