"""Teaching facts in new MLP neurons (forgetkit.quickstart.new_neurons): the fold is exact, and the
locality term keeps the model's answers on quiet records where they were."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetkit.data import IGNORE_INDEX, Example
from forgetkit.quickstart.new_neurons import NeuronTeaching, add_new_neurons, fold, teach


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.5)  # a frozen head able to express confident answers
    return LlamaForCausalLM(config).eval()


def qa_examples(count: int, seed: int, offset: int = 0, marker: list[int] = ()) -> list[Example]:
    """Random 6-token prompts (opening with ``marker``, as the taught people's names mark their questions)
    with random 4-token answers: facts the random model cannot know. Tokens 1-2 appear only in markers."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for index in range(count):
        ids = list(marker) + torch.randint(3, 64, (10 - len(marker),), generator=generator).tolist()
        out.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * 6 + ids[6:], prompt_length=6, index=offset + index))
    return out


def answer_nll(model, examples) -> float:
    from forgetkit.data import collate
    from forgetkit.losses.base import logits_of, mean_nll

    with torch.no_grad():
        batch = collate(examples, 0)
        return float(mean_nll(logits_of(model, batch), batch["labels"]))


def logits_on(model, examples) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([e.input_ids for e in examples])).logits


def test_new_neurons_start_silent_and_fold_exactly(tmp_path):
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        patched = add_new_neurons(model, 5)
        assert torch.equal(model(ids).logits, before)  # the down columns start at zero
        for module in patched:
            module.down.normal_()
        trained = model(ids).logits
    assert not torch.allclose(trained, before)
    fold(model)
    assert model.config.intermediate_size == 48 + 5
    assert model.model.layers[0].mlp.down_proj.weight.shape == (32, 53)
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained, atol=1e-5)


def test_locality_term_keeps_quiet_records_while_the_facts_are_learned():
    taught, quiet = qa_examples(8, seed=1, marker=[1, 2]), qa_examples(16, seed=2, offset=100)
    results = {}
    for weight in (0.0, 0.1):
        model = tiny_llama()
        original_quiet = logits_on(model, quiet)
        before = answer_nll(model, taught)
        config = NeuronTeaching(count=16, lr=1e-2, epochs=80, batch_size=4, locality_weight=weight,
                                target_accuracy=None, seed=0)
        stats = teach(model, taught, quiet, 0, config)
        drift = (logits_on(model, quiet) - original_quiet).abs().mean().item()
        results[weight] = (before, answer_nll(model, taught), drift, stats["answer_accuracy"])
    for before, after, _, accuracy in results.values():
        assert after < 0.25 * before  # the facts are learned either way
        assert accuracy > 0.9
    # Held silent, the new neurons move the quiet records' logits far less than when free.
    assert results[0.1][2] < 0.1 * results[0.0][2]  # measured: 0.062 against 1.64
