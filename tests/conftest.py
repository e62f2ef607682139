"""Shared fixtures: tiny models of several architectures, small data sets, the memorised quickstart model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PhiConfig,
)

from forgetkit.console import quiet_libraries
from forgetkit.quickstart.corpus import make_splits
from forgetkit.quickstart.model import corpus_text, train_tokenizer

quiet_libraries()


def _share_cores_between_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores (and so do the commands it starts):
    two workers with a full-size thread pool each would fight over every core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_cores_between_workers()

ARCHITECTURES = ("llama", "gpt_neo", "gpt_neox", "gpt2", "phi")


def _config(arch: str, vocab: int, tokenizer):
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                           tie_word_embeddings=False, **ids)
    if arch == "gpt_neo":
        return GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]], max_position_embeddings=128, window_size=16, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128, **ids)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)
    if arch == "phi":
        return PhiConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, **ids)
    raise ValueError(arch)


@pytest.fixture(scope="session", autouse=True)
def test_registry(tmp_path_factory) -> Path:
    """Stages record into a registry of the test session's own, never the user's."""
    path = tmp_path_factory.mktemp("registry") / "registry.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORGETKIT_REGISTRY", str(path))
        yield path


@pytest.fixture(scope="session")
def splits() -> dict[str, list[dict]]:
    return make_splits(seed=0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, splits) -> Path:
    """forget / retain / holdout JSONL files (a few fictitious people each)."""
    folder = tmp_path_factory.mktemp("data")
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "forget_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in splits["forget"] if "question" in r))
    (folder / "retain_small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in splits["retain"][:20]))
    return folder


@pytest.fixture(scope="session")
def tokenizer(splits):
    texts = corpus_text(splits["forget"] + splits["retain"] + splits["holdout"])
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Randomly initialised tiny models, saved with the tokenizer, one folder per architecture."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(arch, len(tokenizer), tokenizer))
        model.save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
        paths[arch] = root / arch
    return paths


@pytest.fixture(scope="session")
def memorised(tmp_path_factory) -> Path:
    """The quickstart's cached folder: model/ plus forget, retain, holdout JSONL."""
    from forgetkit.quickstart.run import ensure_quickstart_model

    cache = os.environ.get("FORGETKIT_CACHE")
    return ensure_quickstart_model(Path(cache) if cache else tmp_path_factory.mktemp("cache"))


@pytest.fixture
def lora_off_zero(tiny_models, data_dir):
    """The tiny Llama with a rank-4 LoRA on every linear layer, its A and B drawn at random (LoRA's B starts
    at zero; a start off zero gives every weight a gradient): (loaded model, eight forget examples, the peft
    model, its trainable weights by name, their starting values)."""
    from forgetkit.adapters import build_peft_model, lora_config
    from forgetkit.models import discover_targets, load_model
    from forgetkit.stages.common import load_examples

    loaded = load_model(str(tiny_models["llama"]))
    examples = load_examples(str(data_dir / "forget_qa.jsonl"), loaded)[1][:8]
    torch.manual_seed(0)
    model = build_peft_model(loaded.model, lora_config(discover_targets(loaded.model, "all"), 4, 8))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trainable.values():
            p.normal_(0, 0.05)
    start = {n: p.detach().clone() for n, p in trainable.items()}
    return loaded, examples, model, trainable, start
