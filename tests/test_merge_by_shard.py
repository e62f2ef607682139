"""Merging shard by shard: the same model as an in-memory merge, at the memory of a shard."""

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from forgetkit.artifacts import read_metadata
from forgetkit.errors import ForgetkitError
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

PROBE = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(5))


def test_by_shard_merge_equals_the_in_memory_merge(tiny_models, data_dir, tmp_path):
    # A base saved in several shards, and a FILA-free adapter trained on it.
    base = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"])
    model.save_pretrained(base, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (base / name).write_bytes((tiny_models["gpt2"] / name).read_bytes())
    assert (base / "model.safetensors.index.json").is_file()
    run_unlearn(str(base), str(data_dir / "forget.jsonl"), tmp_path / "adapter",
                UnlearnParams(rank=4, train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)),
                retain=str(data_dir / "retain_small.jsonl"))
    run_merge(str(base), str(tmp_path / "adapter"), tmp_path / "memory", MergeParams(max_shard_size="40KB"))
    run_merge(str(base), str(tmp_path / "adapter"), tmp_path / "shards", MergeParams(by_shard=True))
    in_memory = AutoModelForCausalLM.from_pretrained(tmp_path / "memory")
    by_shard = AutoModelForCausalLM.from_pretrained(tmp_path / "shards")
    with torch.no_grad():
        assert (in_memory(input_ids=PROBE).logits - by_shard(input_ids=PROBE).logits).abs().max() < 1e-5
        assert (model(input_ids=PROBE).logits - by_shard(input_ids=PROBE).logits).abs().max() > 1e-4  # it did change
    meta = read_metadata(tmp_path / "shards")
    assert meta.results["modules_merged"] == 8 and meta.parameters["by_shard"] is True
    assert (tmp_path / "shards" / "tokenizer.json").is_file()


MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig
from forgetkit.benchmark.measure import measured, return_freed_memory
from forgetkit.merging import merge_by_shard

return_freed_memory()
root = Path(sys.argv[1])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=2000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                     num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
model = AutoModelForCausalLM.from_config(config)
model.save_pretrained(root / "base", max_shard_size="12MB")
size = sum(p.numel() * p.element_size() for p in model.parameters())
peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
peft_model.save_pretrained(root / "adapter")
expected = peft_model.merge_and_unload().model.layers[3].mlp.down_proj.weight.detach().clone()
del model, peft_model
import gc; gc.collect()
(root / "out").mkdir()
with measured(interval=0.001) as m:
    merge_by_shard(root / "base", root / "adapter", root / "out")
from safetensors import safe_open
index = json.loads((root / "out" / "model.safetensors.index.json").read_text())["weight_map"]
key = "model.layers.3.mlp.down_proj.weight"
with safe_open(str(root / "out" / index[key]), framework="pt") as f:
    error = (f.get_tensor(key) - expected).abs().max().item()

# FILA layer by layer from a Fisher of every linear weight (random sums: only the memory is measured).
import os
os.environ["FORGETKIT_REGISTRY"] = "off"
from forgetkit.artifacts import Metadata, BaseModelInfo, model_fingerprint, save_tensor_artifact
from forgetkit.stages.init import InitParams, run_init
base = BaseModelInfo(str(root / "base"), model_fingerprint(root / "base"))
names = [n for n, t in torch.nn.Module.named_modules(AutoModelForCausalLM.from_config(config))
         if isinstance(t, torch.nn.Linear) and n != "lm_head"]
shapes = {n: tuple(t.shape) for n, t in AutoModelForCausalLM.from_config(config).named_parameters()}
fisher = {f"{part}/{n}": torch.rand(shapes[n + ".weight"]).to(torch.bfloat16) for part in ("forget", "retain") for n in names}
save_tensor_artifact(root / "fisher.safetensors", fisher, Metadata(stage="fisher", base_model=base, results={
    "forget_tokens": 100, "retain_tokens": 100, "targets": names}))
del fisher
gc.collect()
with measured(interval=0.001) as init:
    run_init(str(root / "base"), root / "init", InitParams(rank=8, by_layer=True), fisher=str(root / "fisher.safetensors"))
print(json.dumps({"model_bytes": size, "peak": m.peak_bytes, "error": error, "init_peak": init.peak_bytes,
                  "targets": len(names), "shards": len(set(index.values()))}))
"""


def test_by_shard_merge_and_by_layer_init_hold_a_shard_not_the_model(tmp_path):
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The resident set sampled every millisecond during the merge, above its start: about two
    # shards (the one read and the one written) and the adapter, against the model's 90 MB.
    assert result["shards"] >= 6 and result["error"] < 1e-5
    assert result["peak"] < 0.35 * result["model_bytes"], result
    # FILA one weight at a time: that weight, its two Fisher tensors and the SVD's work space.
    assert result["targets"] == 42 and result["init_peak"] < 0.4 * result["model_bytes"], result


def test_by_shard_refuses_what_it_cannot_fold(tiny_models, tmp_path):
    import pytest
    from forgetkit.merging import lora_deltas

    folder = tmp_path / "dora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True, "r": 4, "lora_alpha": 8}))
    with pytest.raises(ForgetkitError, match="use_dora.*without --by-shard"):
        lora_deltas(folder)


def test_fila_by_layer_equals_fila_in_memory(tiny_models, data_dir, tmp_path):
    from forgetkit.stages.fisher import FisherParams, run_fisher
    from forgetkit.stages.init import InitParams, run_init

    for arch in ("llama", "gpt2"):  # gpt2: Conv1D weights stored (in, out)
        model = str(tiny_models[arch])
        fisher = tmp_path / f"{arch}.safetensors"
        run_fisher(model, str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl"), fisher, FisherParams())
        run_init(model, tmp_path / f"{arch}-memory", InitParams(rank=4), fisher=str(fisher))
        run_init(model, tmp_path / f"{arch}-layers", InitParams(rank=4, by_layer=True), fisher=str(fisher))
        memory = load_file(str(tmp_path / f"{arch}-memory" / "adapter_model.safetensors"))
        layers = load_file(str(tmp_path / f"{arch}-layers" / "adapter_model.safetensors"))
        assert set(memory) == set(layers), arch
        for key in memory:
            assert torch.allclose(memory[key], layers[key], atol=1e-5), (arch, key)
        # Unlearning starts from it as from the in-memory init.
        run_unlearn(model, str(data_dir / "forget.jsonl"), tmp_path / f"{arch}-adapter",
                    UnlearnParams(train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)),
                    retain=str(data_dir / "retain_small.jsonl"), init=str(tmp_path / f"{arch}-layers"))
