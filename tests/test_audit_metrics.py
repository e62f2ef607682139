"""Audit metrics against hand computations and independent straightforward code."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from nltk.stem import porter

from forgetkit.audit.attacks import AttackParams
from forgetkit.audit.attacks.relearn import relearn, split_for_relearning
from forgetkit.audit.attacks.weights import fake_quantise
from forgetkit.audit.evaluate import EvalOptions, evaluate_set
from forgetkit.audit.sets import load_eval_set
from forgetkit.data import Record
from forgetkit.metrics import tofu
from forgetkit.metrics.canary import candidate_records, candidates, exposure
from forgetkit.metrics.extraction import extraction_strength
from forgetkit.metrics.mia import membership_scores, privleak, roc_auc, roc_curve
from forgetkit.models import load_model
from forgetkit.stages.audit import AuditParams, run_audit


def tofu_rows(rows: list[dict], paraphrase: bool = True) -> list[dict]:
    """TOFU-format QA records built from the quickstart people: wrong answers are other people's."""
    qa = [r for r in rows if "question" in r]
    out = []
    for i, row in enumerate(qa):
        same_kind = [r for r in qa if r["question"].split(" of ")[0].split(" ")[:2] == row["question"].split(" of ")[0].split(" ")[:2] and r is not row]
        wrong = [r["answer"] for r in (same_kind or qa[:3])[:3]]
        record = {"question": row["question"], "answer": row["answer"], "perturbed_answer": wrong}
        if paraphrase:
            record["paraphrased_answer"] = row["answer"].rstrip(".")  # close to the answer, as a paraphrase is
            record["paraphrased_question"] = "Tell me, " + row["question"]
        out.append(record)
    return out


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory, splits):
    folder = tmp_path_factory.mktemp("tofu")
    sets = {
        "forget": tofu_rows(splits["forget"]),
        "retain": tofu_rows(splits["retain"][:40]),
        "holdout": tofu_rows(splits["holdout"]),
        "facts": tofu_rows(splits["retain"][40:80], paraphrase=False),
        "other_forget": tofu_rows(splits["holdout"]),  # a different forget set
    }
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# --------------------------------------------------------------------------- hand computations


def test_truth_ratio_probability_and_utility_by_hand():
    assert tofu.truth_ratio(0.5, [0.25, 0.04]) == pytest.approx(math.sqrt(0.25 * 0.04) / 0.5)  # geometric mean
    assert tofu.truth_ratio_summary([0.5, 2.0, 1.0], forget=True) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert tofu.truth_ratio_summary([0.5, 2.0, 0.0], forget=False) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert tofu.normalised_probability(0.6, [0.1, 0.3]) == pytest.approx(0.6 / 1.0)
    assert tofu.length_normalised_probability([1.0, 3.0]) == pytest.approx(math.exp(-2.0))
    summaries = {name: {"probability": 0.5, "rouge_l": 0.25, "truth_ratio": 1.0} for name in tofu.UTILITY_SETS}
    utility = tofu.model_utility(summaries)
    assert utility["complete"] and utility["value"] == pytest.approx(9 / (3 * (2 + 4 + 1)))
    assert tofu.model_utility({"retain": {"probability": 0.5, "rouge_l": 0.0, "truth_ratio": 1}})["value"] == 0.0


def test_extraction_strength_and_exposure_by_hand():
    per = [{"hit": [1, 1, 1, 1]}, {"hit": [0, 1, 1, 1]}, {"hit": [1, 0, 1, 1]}, {"hit": [1, 1, 1, 0]}]
    assert extraction_strength(per) == [1.0, 0.75, 0.5, 0.0]
    assert exposure(1.0, [2.0] * 255) == pytest.approx(8.0)  # ranked first of 256
    assert exposure(3.0, [1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == pytest.approx(math.log2(8) - math.log2(3))


def test_canary_candidates_keep_the_format():
    options = candidates("amber-1234-cinder", 200)
    assert len(options) == 200 and len(set(options)) == 200 and "amber-1234-cinder" not in options
    assert all(re.fullmatch(r"amber-\d{4}-cinder", o) for o in options)
    assert options == candidates("amber-1234-cinder", 200)  # same candidates for every model audited
    letters = candidates("Kestrel", 50)
    assert all(re.fullmatch(r"[A-Z][a-z]{6}", o) for o in letters)
    assert len(candidates("7", 50)) == 9  # a one-digit format has only 9 others
    record = Record({"question": "q?", "answer": "It is 42.", "secret": "42"}, "f:1")
    swapped = candidate_records(record, 5)
    assert swapped[0] is record and all(re.fullmatch(r"It is \d\d\.", r["answer"]) for r in swapped)


def test_mia_scores_auc_and_roc_by_hand():
    scores = membership_scores({"nll": [0.1, 2.0, 0.5, 4.0, 1.0], "zscore": [1, -3, 0, -1, 2]}, "abc")
    assert scores["loss"] == pytest.approx(-1.52)
    assert scores["min_k"] == pytest.approx(-(4.0 + 2.0) / 2)  # 40% of 5 tokens, rounded up: the 2 lowest
    assert scores["min_k_pp"] == pytest.approx((-3 - 1) / 2)
    assert scores["zlib"] == pytest.approx(-1.52 / len(__import__("zlib").compress(b"abc")))
    # Pairs (member > other): 3>1 3>2 3>2(tie .5 no: 2 vs 2) ... counted by hand.
    members, others = [3.0, 2.0, 0.5], [1.0, 2.0]
    assert roc_auc(members, others) == pytest.approx((1 + 1 + 1 + 0.5 + 0 + 0) / 6)
    curve = roc_curve(members, others)
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and curve["fpr"][-1] == 1
    assert privleak(0.75, 0.5) == pytest.approx(0.5)


def test_fake_quantise_rounds_per_output_channel(tiny_models):
    model = load_model(str(tiny_models["llama"])).model
    layer = model.model.layers[0].self_attn.q_proj
    original = layer.weight.detach().clone()
    assert fake_quantise(model, 4) == 2 * 7  # 7 linear layers per block, output head left alone
    scale = original.abs().amax(dim=1, keepdim=True) / 7
    assert torch.allclose(layer.weight, (original / scale).round().clamp(-8, 7) * scale)
    assert len(torch.unique(layer.weight[0])) <= 16


def test_relearn_lowers_the_loss_of_what_it_trains_on(tiny_models, data_dir):
    loaded = load_model(str(tiny_models["llama"]))
    forget = load_eval_set("forget", str(data_dir / "forget.jsonl"), loaded, truncate=False, canary_candidates=0,
                           need_truth_ratio=False)
    used, rest = split_for_relearning(len(forget.examples), 0.25, 0)
    assert len(used) == 5 and sorted(used + rest) == list(range(20))
    before = evaluate_set(loaded.model, loaded.tokenizer, forget, EvalOptions(suites=()))["per_example"]["nll"]
    trained = relearn(loaded.model, [forget.examples[i] for i in used], loaded.tokenizer.pad_token_id,
                      AttackParams(relearn_budgets=(15,), relearn_lr=1e-2))
    after = evaluate_set(trained, loaded.tokenizer, forget, EvalOptions(suites=()))["per_example"]["nll"]
    assert np.mean([after[i] for i in used]) < np.mean([before[i] for i in used]) - 0.2


# --------------------------------------------------------------------------- independent recomputation


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _words(text: str) -> list[str]:
    stemmer = porter.PorterStemmer()
    return [stemmer.stem(w) if len(w) > 3 else w for w in re.sub(r"[^a-z0-9]+", " ", text.lower()).split()]


def _nll_by_hand(model, tokenizer, question: str, answer: str) -> float:
    prompt = tokenizer(f"Question: {question}\nAnswer:")["input_ids"]
    target = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0]
    log_probs = torch.log_softmax(logits.float(), -1)
    return -float(np.mean([log_probs[len(prompt) + k - 1, t].item() for k, t in enumerate(target)]))


def _greedy_by_hand(model, tokenizer, question: str, steps: int) -> str:
    ids = tokenizer(f"Question: {question}\nAnswer:")["input_ids"]
    out = []
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def _ks_p_value_exact(x: list[float], y: list[float]) -> float:
    """Two-sided exact KS p-value by counting monotone lattice paths (Hodges 1958)."""
    n, m = len(x), len(y)
    points = np.sort(np.concatenate([x, y]))
    d = max(abs(np.searchsorted(np.sort(x), v, "right") / n - np.searchsorted(np.sort(y), v, "right") / m) for v in points)
    inside = [[0] * (m + 1) for _ in range(n + 1)]
    for i, j in itertools.product(range(n + 1), range(m + 1)):
        if abs(i / n - j / m) >= d - 1e-12:
            continue
        inside[i][j] = 1 if i == j == 0 else (inside[i - 1][j] if i else 0) + (inside[i][j - 1] if j else 0)
    return 1 - inside[n][m] / math.comb(n + m, n)


def test_audit_numbers_match_independent_code(tiny_models, tofu_dir, tmp_path):
    """ROUGE-L, truth ratio, Forget Quality (KS p-value) and MIA AUC of the audit, recomputed by
    plain one-at-a-time loops and textbook formulas."""
    llama, gpt2 = str(tiny_models["llama"]), str(tiny_models["gpt2"])
    params = AuditParams(suites=("tofu", "mia"), max_new_tokens=12, batch_size=5, generation_batch_size=6)
    report = run_audit(llama, tmp_path / "r.json", params, forget=str(tofu_dir / "forget.jsonl"),
                       holdout=str(tofu_dir / "holdout.jsonl"), reference=gpt2)
    rows = [json.loads(line) for line in (tofu_dir / "forget.jsonl").read_text().splitlines()]
    loaded, other = load_model(llama), load_model(gpt2)
    ours = report["results"]["model"]["sets"]["forget"]["per_example"]
    ratios = {}
    for name, model in (("model", loaded.model), ("reference", other.model)):
        values = []
        for row in rows:
            p_para = math.exp(-_nll_by_hand(model, loaded.tokenizer, row["question"], row["paraphrased_answer"]))
            p_wrong = [math.exp(-_nll_by_hand(model, loaded.tokenizer, row["question"], a)) for a in row["perturbed_answer"]]
            values.append(math.prod(p_wrong) ** (1 / len(p_wrong)) / p_para)
        ratios[name] = values
        assert report["results"][name]["sets"]["forget"]["per_example"]["truth_ratio"] == pytest.approx(values, rel=1e-4)
    for row, value in zip(rows, ours["rouge_l"]):
        answer = _greedy_by_hand(loaded.model, loaded.tokenizer, row["question"], 12)
        assert value == pytest.approx(_lcs(_words(row["answer"]), _words(answer)) / len(_words(row["answer"])))
    quality = report["results"]["model"]["tofu"]["forget_quality"]
    assert quality == pytest.approx(_ks_p_value_exact(ratios["model"], ratios["reference"]), rel=1e-6)
    members = ours["mia_loss"]
    others = report["results"]["model"]["sets"]["holdout"]["per_example"]["mia_loss"]
    pairs = [(a > b) + 0.5 * (a == b) for a in members for b in others]
    assert report["results"]["model"]["mia"]["forget"]["loss"]["auc"] == pytest.approx(sum(pairs) / len(pairs))
    hand_loss = [-_nll_by_hand(loaded.model, loaded.tokenizer, r["question"], r["answer"]) for r in rows]
    assert members == pytest.approx(hand_loss, rel=1e-4)


def test_reference_itself_gives_forget_quality_one_and_reports_are_reusable(memorised, tofu_dir, tmp_path):
    llama = str(memorised / "model")
    params = AuditParams(suites=("tofu", "mia"), max_new_tokens=6)
    sets = dict(forget=str(tofu_dir / "forget.jsonl"), retain=str(tofu_dir / "retain.jsonl"),
                holdout=str(tofu_dir / "holdout.jsonl"), real_authors=str(tofu_dir / "facts.jsonl"),
                world_facts=str(tofu_dir / "facts.jsonl"))
    both = run_audit(llama, tmp_path / "self.json", params, reference=llama, **sets)
    tofu_numbers = both["results"]["model"]["tofu"]
    assert tofu_numbers["forget_quality"] == 1.0
    assert tofu_numbers["privleak"]["loss"] == 0.0
    utility = tofu_numbers["model_utility"]
    summaries = both["results"]["model"]["sets"]
    nine = [summaries[s]["summary"][m] for s in ("retain", "real_authors", "world_facts")
            for m in ("probability", "rouge_l", "truth_ratio")]
    assert utility["complete"] and utility["value"] == pytest.approx(len(nine) / sum(1 / x for x in nine))
    assert summaries["retain"]["summary"]["rouge_l"] > 0.5  # the memorised model knows its retain set (6 tokens)
    facts = both["results"]["model"]["sets"]["real_authors"]["per_example"]
    assert all(0 < p < 1 for p in facts["probability"])  # normalised against the wrong answers

    alone = run_audit(llama, tmp_path / "ref.json", params, **sets)
    reused = run_audit(llama, tmp_path / "reused.json", params, reference_report=str(tmp_path / "ref.json"), **sets)
    assert reused["results"]["model"]["tofu"]["forget_quality"] == 1.0
    assert alone["results"]["model"]["tofu"].get("forget_quality") is None
    for name in ("self.md", "self.html", "self.plots/truth_ratio.png", "self.plots/mia_roc.png"):
        assert (tmp_path / name).is_file(), name


def test_exposure_from_the_bottom_by_hand_and_its_verdict_check():
    from forgetkit.audit.verdict import VerdictThresholds, decide
    from forgetkit.metrics.canary import exposure_from_bottom

    assert exposure_from_bottom(9.0, [2.0] * 255) == pytest.approx(8.0)  # least likely of 256
    assert exposure_from_bottom(1.0, [2.0] * 255) == pytest.approx(0.0)  # most likely: nothing below it
    # 2 candidates less likely (nll 4, 5), 4 more likely: rank 3 from the bottom of 7.
    assert exposure_from_bottom(3.0, [1.0, 2.0, 2.5, 2.9, 4.0, 5.0]) == pytest.approx(math.log2(7) - math.log2(3))

    def variant(low):
        summary = {"rouge_l": 0.0, "el10": 0.0, "canary_exposure": 0.5, "canary_exposure_low": low}
        held_out = {"rouge_l": 0.0, "el10": 0.0, "canary_exposure": 1.0, "canary_exposure_low": 1.2}
        return {"sets": {"forget": {"summary": summary}, "holdout": {"summary": held_out}}}

    checks = {c["name"]: c for c in decide(variant(2.1), VerdictThresholds())["checks"]}
    assert checks["forget canary exposure from the bottom (bits)"]["passed"]
    assert checks["forget canary exposure from the bottom (bits)"]["threshold"] == pytest.approx(2.2)
    pushed_under = decide(variant(7.9), VerdictThresholds())  # a secret pushed below all its candidates
    assert pushed_under["verdict"] == "partially forgotten"
    assert pushed_under["failed"] == ["forget canary exposure from the bottom (bits)"]


def test_reference_from_a_report_names_the_model_its_statistics_came_from(tmp_path):
    from forgetkit.audit.reference import reference_from_report

    stats = {"truth_ratio": [0.4, 0.5], "mia_auc": {"loss": 0.5}}
    common = {"kind": "forgetkit-audit-report", "inputs": {"forget": {"sha256": "a" * 64}},
              "base_model": {"model_id": "full-model", "fingerprint": "1" * 16}}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({**common, "results": {"model": {"reference_stats": stats}}}))
    assert reference_from_report(plain, "a" * 64)["source"]["model"]["model_id"] == "full-model"
    # Audited with --reference: the statistics are the reference model's, and so is the name.
    with_reference = tmp_path / "with_reference.json"
    with_reference.write_text(json.dumps({**common, "reference": {**stats, "source": {"model": "retain-only-model"}},
                                          "results": {"base": {}, "unlearned": {}, "reference": {"reference_stats": stats}}}))
    source = reference_from_report(with_reference, "a" * 64)["source"]
    assert source["variant"] == "reference" and source["model"] == "retain-only-model"


def test_attack_checks_compare_with_the_control_metric_by_metric():
    """The independent check's case: relearning lifts the forget set's ROUGE-L 0.31 -> 0.56 while the
    control's falls 0.60 -> 0.56. Level against the attacked control passes (0.56 <= 0.56 + 0.1); the
    recovery check (0.25 - (-0.04) = 0.29 > 0.1) fails, and so does canary exposure recovering 0.8 ->
    3 bits against a control that stays at 1."""
    from forgetkit.audit.attacks.measure import matrix
    from forgetkit.audit.verdict import VerdictThresholds, decide

    def summaries(rouge, exposure, secrets):
        return {"rouge_l": rouge, "el10": 0.0, "canary_exposure": exposure, "secret_in_answer": secrets}

    def variant(forget_after, control_after):
        sets = {"forget": {"unattacked": summaries(0.3125, 0.8, 0.0), "attacked": forget_after},
                "holdout": {"unattacked": summaries(0.6, 1.0, 0.0), "attacked": control_after}}
        view = {"attack": "relearn", "sets": sets, "matrix": matrix(sets),
                "mia": {"unattacked": {"loss": 0.5}, "attacked": {"loss": 0.55}}}
        summary = {"rouge_l": 0.3125, "el10": 0.0}
        return {"sets": {"forget": {"summary": summary}, "holdout": {"summary": {"rouge_l": 0.6, "el10": 0.0}}},
                "attacks": {"relearn-part-30": view}}

    quiet = decide(variant(summaries(0.35, 1.0, 0.0), summaries(0.6, 1.0, 0.0)), VerdictThresholds())
    assert quiet["verdict"] == "forgotten", quiet["failed"]
    recovered = decide(variant(summaries(0.5625, 3.0, 0.25), summaries(0.5625, 1.0, 0.0)), VerdictThresholds())
    checks = {c["name"]: c for c in recovered["checks"]}
    assert checks["relearn-part-30: forget ROUGE-L"]["passed"]  # the absolute comparison alone passes
    rouge = checks["relearn-part-30: rouge_l recovered"]
    assert not rouge["passed"] and rouge["value"] == pytest.approx((0.5625 - 0.3125) - (0.5625 - 0.6))
    assert not checks["relearn-part-30: canary_exposure recovered"]["passed"]
    assert checks["relearn-part-30: canary_exposure recovered"]["value"] == pytest.approx(2.2)
    assert not checks["relearn-part-30: forget secrets in greedy answers"]["passed"]
    assert checks["relearn-part-30: MIA loss AUC"]["passed"]
    assert recovered["verdict"] == "partially forgotten"
