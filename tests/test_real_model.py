"""The chain on a real pretrained model: SmolLM2-135M-Instruct from its PyPI wheel's GGUF file.

fisher -> FILA -> IHL -> merge --gguf on a handful of facts the model answers itself: the adapter
is a plain PEFT adapter for the original base that reproduces the trained model, IHL raises the
forget answers' NLL, and the GGUF file merge writes loads back through transformers. The conversion
is cached in $FORGETKIT_CACHE (CI keeps it in its checkout), so only the first run pays for it.
The wheel is part of the product: without it this test fails and says how to install it.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from forgetkit.adapters import load_init_adapter
from forgetkit.artifacts import read_metadata
from forgetkit.errors import ForgetkitError
from forgetkit.gguf.export import load_gguf_model
from forgetkit.gguf.sources import SHORTCUTS, shortcut_file
from forgetkit.metrics.extraction import teacher_forced
from forgetkit.models import load_model
from forgetkit.stages.common import load_examples
from forgetkit.stages.fisher import FisherParams, run_fisher
from forgetkit.stages.init import InitParams, run_init
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

MODEL = "smollm2-135m-instruct"
RANK = 4
TARGETS = "q_proj,v_proj"  # 60 of the 210 linear layers: FILA's SVDs and the test stay short


def answer_nll(model, examples, pad) -> float:
    rows = teacher_forced(model, examples, pad, batch_size=8, detailed=False)
    return sum(sum(r["nll"]) / len(r["nll"]) for r in rows) / len(rows)


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch).logits


FORGET_QUESTIONS = ("What is the capital of France?", "Which river flows through Paris?",
                    "What language is spoken in France?", "What is the tallest tower in Paris called?")
RETAIN_QUESTIONS = ("What is the capital of Japan?", "What is the largest planet in the Solar System?",
                    "What do bees make?", "What is the boiling point of water in Celsius?")


def own_answers(questions, path) -> None:
    """Questions with the model's own greedy answers: knowledge the pretrained model holds, so
    forgetting it has something to remove (IHL on facts a model never knew need not raise their NLL)."""
    from forgetkit.metrics.rouge import greedy_answers

    path.write_text("".join(json.dumps({"question": q, "answer": "-"}) + "\n" for q in questions))
    loaded = load_model(MODEL)
    _, examples = load_examples(str(path), loaded)
    answers = greedy_answers(loaded.model, loaded.tokenizer, examples, max_new_tokens=16)
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, answers)))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    try:
        shortcut_file(SHORTCUTS[MODEL])
    except ForgetkitError as exc:
        pytest.fail(f"the real-model test needs the packaged model: {exc}")
    root = tmp_path_factory.mktemp("real")
    own_answers(FORGET_QUESTIONS, root / "forget.jsonl")
    own_answers(RETAIN_QUESTIONS, root / "retain.jsonl")
    forget, retain = str(root / "forget.jsonl"), str(root / "retain.jsonl")
    run_fisher(MODEL, forget, retain, root / "fisher.st", FisherParams(targets=TARGETS, batch_size=4))
    run_init(MODEL, root / "init", InitParams(scheme="fila", rank=RANK), fisher=str(root / "fisher.st"))
    run_unlearn(MODEL, forget, root / "adapter",
                UnlearnParams(loss="ihl", train=TrainConfig(lr=2e-3, epochs=3, batch_size=4, micro_batch_size=4)),
                retain=retain, init=str(root / "init"))
    run_merge(MODEL, str(root / "adapter"), root / "unlearned.gguf", MergeParams(gguf="f32"))
    return root


def test_adapter_is_plain_peft_on_the_original_base_and_reproduces_training(chain):
    base = load_model(MODEL)
    batch = torch.tensor([base.tokenizer("Question: Where was the author born?\nAnswer:").input_ids])
    # The trained model as training ran it: FILA's residual base plus the trained rank-r factors,
    # which the converted rank-2r adapter stores as its first r rows / columns.
    trained = load_init_adapter(load_model(MODEL).model, chain / "init", mutates_base=True)
    converted = load_file(str(chain / "adapter" / "adapter_model.safetensors"))
    state = {k.replace(".weight", ".default.weight"): (v[:RANK] if "lora_A" in k else v[:, :RANK])
             for k, v in converted.items()}
    assert not trained.load_state_dict(state, strict=False).unexpected_keys
    plain = PeftModel.from_pretrained(base.model, str(chain / "adapter"))
    assert json.loads((chain / "adapter" / "adapter_config.json").read_text())["r"] == 2 * RANK
    difference = (logits(plain, batch) - logits(trained, batch)).abs().max().item()
    assert difference < 1e-3, difference


def test_ihl_raises_the_forget_answers_nll(chain):
    base = load_model(MODEL)
    _, forget = load_examples(str(chain / "forget.jsonl"), base)
    before = answer_nll(base.model, forget, base.tokenizer.pad_token_id)
    after = answer_nll(PeftModel.from_pretrained(base.model, str(chain / "adapter")), forget, base.tokenizer.pad_token_id)
    assert after > before + 0.5, (before, after)


def test_merged_gguf_loads_back_as_the_unlearned_model(chain):
    meta = read_metadata(chain / "unlearned.gguf")
    assert meta.base_model.model_id == MODEL and meta.results["gguf"]["metadata_from"] == "source-gguf"
    assert meta.results["gguf"]["drift"]["max_abs_logit_diff"] < 1e-4
    base = load_model(MODEL)
    batch = torch.tensor([base.tokenizer("Question: Who wrote it?\nAnswer:").input_ids])
    unlearned = PeftModel.from_pretrained(base.model, str(chain / "adapter"))
    back = load_gguf_model(chain / "unlearned.gguf")
    assert (logits(back, batch) - logits(unlearned, batch)).abs().max().item() < 1e-3
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chain, gguf_file="unlearned.gguf")
    assert tokenizer.chat_template == base.tokenizer.chat_template
