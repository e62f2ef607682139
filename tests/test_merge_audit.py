import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from forgetkit.artifacts import read_metadata
from forgetkit.audit.attacks import AttackParams
from forgetkit.metrics.extraction import extraction_likelihood, ngram_overlap
from forgetkit.metrics.rouge import rouge_l_recall
from forgetkit.models import load_model
from forgetkit.stages.audit import AuditParams, run_audit
from forgetkit.stages.common import load_examples
from forgetkit.stages.merge import MergeParams, run_merge
from forgetkit.stages.unlearn import UnlearnParams, run_unlearn
from forgetkit.training import TrainConfig

PROBE = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def adapter(tiny_models, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    run_unlearn(str(tiny_models["llama"]), str(data_dir / "forget.jsonl"), out,
                UnlearnParams(rank=4, train=TrainConfig(lr=1e-2, epochs=1, batch_size=8, micro_batch_size=8)),
                retain=str(data_dir / "retain_small.jsonl"))
    return out


def test_merge_matches_adapter_and_shards(tiny_models, adapter, tmp_path):
    run_merge(str(tiny_models["llama"]), str(adapter), tmp_path / "merged", MergeParams(max_shard_size="60KB"))
    files = sorted(p.name for p in (tmp_path / "merged").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert "tokenizer.json" in files and "config.json" in files
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    reference = PeftModel.from_pretrained(load_model(str(tiny_models["llama"])).model, str(adapter))
    with torch.no_grad():
        assert (merged(input_ids=PROBE).logits - reference(input_ids=PROBE).logits).abs().max() < 1e-4
    assert read_metadata(tmp_path / "merged").results["probe_max_abs_diff"] < 1e-4


def test_ngram_overlap_and_rouge_by_hand():
    assert ngram_overlap([1, 2, 3, 4], [9, 2, 3, 4], 2) == pytest.approx(2 / 3)  # (2,3),(3,4) of (1,2),(2,3),(3,4)
    assert ngram_overlap([1, 2], [1, 2], 5) == 0.0
    # LCS of "the cat sat" in "the big cat sat down" is 3 words of the 3 reference words.
    assert rouge_l_recall("the cat sat", "the big cat sat down") == pytest.approx(1.0)
    assert rouge_l_recall("alpha beta gamma delta", "beta delta") == pytest.approx(0.5)


def test_extraction_likelihood_by_hand(tiny_models, data_dir):
    """EL_n from generate() equals a one-prefix-at-a-time greedy loop written out here."""
    loaded = load_model(str(tiny_models["llama"]))
    _, examples = load_examples(str(data_dir / "forget.jsonl"), loaded)
    examples = [examples[4], examples[0]]  # a biography and a QA pair
    ours = extraction_likelihood(loaded.model, loaded.tokenizer, examples, ns=(5,), batch_size=7)[5]
    for example, value in zip(examples, ours):
        ids, scores = example.input_ids, []
        for t in range(max(example.prompt_length, 1), len(ids) - 5 + 1):
            seq = torch.tensor([ids[:t]])
            for _ in range(len(ids) - t):
                with torch.no_grad():
                    logits = loaded.model(input_ids=seq).logits[0, -1]
                logits[loaded.tokenizer.eos_token_id] = -float("inf")  # fixed-length continuations
                seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
            generated, truth = seq[0, t:].tolist(), ids[t:]
            grams = [tuple(generated[i:i + 5]) for i in range(len(generated) - 4)]
            truth_grams = {tuple(truth[i:i + 5]) for i in range(len(truth) - 4)}
            scores.append(sum(g in truth_grams for g in grams) / len(grams))
        expected = sum(scores) / len(scores) if scores else None
        assert value == pytest.approx(expected)


def test_audit_report_is_redacted_unless_asked(tiny_models, data_dir, adapter, tmp_path, splits):
    params = AuditParams(max_new_tokens=8, attacks=("all",), canary_candidates=15,
                         attack=AttackParams(relearn_budgets=(1,), samples=4))
    report = run_audit(str(tiny_models["llama"]), tmp_path / "r.json", params, forget=str(data_dir / "forget.jsonl"),
                       retain=str(data_dir / "retain_small.jsonl"), holdout=str(data_dir / "holdout.jsonl"),
                       adapter=str(adapter))
    assert set(report["results"]["unlearned"]["attacks"]) == {
        "paraphrase", "prefix", "in-context", "role-play", "int8", "int4", "nf4", "gguf-q8_0", "gguf-q4_0",
        "relearn-part-1", "relearn-related-1", "sampling"}
    from forgetkit.audit.attacks import ATTACKS

    seconds = report["results"]["unlearned"]["attack_seconds"]
    assert set(seconds) == set(ATTACKS) and all(t > 0 for t in seconds.values())
    assert "attack_seconds" not in report["results"]["base"]  # the base (adapter off) is not attacked
    assert set(report["results"]) == {"base", "unlearned"}
    summary = report["results"]["unlearned"]["sets"]["forget"]["summary"]
    assert {"el5", "el10", "ma", "em", "es", "rouge_l", "nll", "perplexity", "canary_exposure"} <= set(summary)
    assert summary["perplexity"] > 1 and 0 <= summary["ma"] <= 1
    secrets = [r["secret"] for r in splits["forget"] if "secret" in r]
    answers = [r.get("answer", r.get("text")) for r in splits["forget"]]
    for written in ("r.json", "r.md", "r.html"):
        text = (tmp_path / written).read_text()
        assert not any(s in text for s in secrets + answers) and "Question" not in text, written
    full = run_audit(str(tiny_models["llama"]), tmp_path / "full.json", AuditParams(max_new_tokens=8, include_examples=True),
                     forget=str(data_dir / "forget.jsonl"))
    assert any(s in (tmp_path / "full.json").read_text() for s in secrets)
    assert len(full["results"]["model"]["sets"]["forget"]["per_example"]["el10"]) == len(splits["forget"])
