import torch
import torch.nn.functional as F

from forgetkit.artifacts import load_tensor_artifact, read_metadata
from forgetkit.data import collate
from forgetkit.models import discover_targets, load_model
from forgetkit.stages.common import load_examples
from forgetkit.stages.fisher import FisherParams, accumulate_fisher, run_fisher


def hand_fisher(model, examples, names, pad, group_size):
    """sum over groups of (d mean-NLL / dW)^2 * tokens, with torch's own cross-entropy."""
    modules = dict(model.named_modules())
    sums = {n: torch.zeros_like(modules[n].weight) for n in names}
    for start in range(0, len(examples), group_size):
        batch = collate(examples[start : start + group_size], pad)
        model.zero_grad()
        with torch.enable_grad():
            for n in names:
                modules[n].weight.requires_grad_(True)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
            loss.backward()
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        for n in names:
            sums[n] += modules[n].weight.grad ** 2 * tokens
    return sums


def test_fisher_equals_hand_computed_squared_gradients(tiny_models, data_dir):
    loaded = load_model(str(tiny_models["llama"]))
    _, examples = load_examples(str(data_dir / "forget.jsonl"), loaded)
    examples = examples[:7]
    names = discover_targets(loaded.model, "all")
    for estimator, group in (("batch", 3), ("example", 1)):
        ours, tokens = accumulate_fisher(loaded, names, examples, 3, estimator, "forget")
        expected = hand_fisher(loaded.model, examples, names, loaded.tokenizer.pad_token_id, group)
        assert tokens == sum(sum(1 for t in e.labels[1:] if t != -100) for e in examples)
        for n in names:
            assert torch.allclose(ours[n], expected[n], rtol=1e-4, atol=1e-12), (estimator, n)
    # The two estimators are different quantities (batch mixes gradients before squaring).
    batch_f, _ = accumulate_fisher(loaded, names, examples, 3, "batch", "f")
    example_f, _ = accumulate_fisher(loaded, names, examples, 3, "example", "f")
    assert not torch.allclose(batch_f[names[0]], example_f[names[0]])


def test_fisher_artifact_contents(tiny_models, data_dir, tmp_path):
    out = tmp_path / "fisher.safetensors"
    run_fisher(str(tiny_models["gpt2"]), str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl"), out, FisherParams())
    meta = read_metadata(out)
    tensors = load_tensor_artifact(out)
    assert meta.stage == "fisher" and meta.results["forget_tokens"] > 0 and meta.results["retain_tokens"] > 0
    assert set(meta.inputs) == {"forget", "retain"} and len(meta.inputs["forget"]["sha256"]) == 64
    assert len(tensors) == 2 * len(meta.results["targets"])
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    full = tmp_path / "fisher32.safetensors"
    run_fisher(str(tiny_models["gpt2"]), str(data_dir / "forget.jsonl"), str(data_dir / "retain_small.jsonl"), full,
               FisherParams(dtype="float32"))
    assert all(t.dtype == torch.float32 for t in load_tensor_artifact(full).values())


def test_gradient_checkpointing_recomputes_and_gives_the_same_fisher(tiny_models, data_dir, tmp_path):
    """GPT-2 has dropout in its config: checkpointing must recompute the blocks without switching
    the model out of eval mode, or the Fisher of another function comes out."""
    model = str(tiny_models["gpt2"])
    plain, checkpointed = tmp_path / "plain.st", tmp_path / "checkpointed.st"
    run_fisher(model, str(data_dir / "forget.jsonl"), None, plain, FisherParams(dtype="float32"))
    from forgetkit.stages import fisher as fisher_stage

    calls = []
    real = fisher_stage.enable_gradient_checkpointing

    def counting(model_):
        count = real(model_)
        # the block's first layer, inside the checkpoint (recomputation stops once it has what backward needs)
        model_.transformer.h[0].ln_1.register_forward_pre_hook(lambda *_: calls.append(1))
        return count

    fisher_stage.enable_gradient_checkpointing = counting
    try:
        run_fisher(model, str(data_dir / "forget.jsonl"), None, checkpointed,
                   FisherParams(dtype="float32", gradient_checkpointing=True))
    finally:
        fisher_stage.enable_gradient_checkpointing = real
    batches = -(-len(load_examples(str(data_dir / "forget.jsonl"), load_model(model))[1]) // FisherParams().batch_size)
    assert len(calls) == 2 * batches  # each block ran again in the backward pass
    a, b = load_tensor_artifact(plain), load_tensor_artifact(checkpointed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-10), name
    assert read_metadata(checkpointed).results["checkpointed_blocks"] == 2
