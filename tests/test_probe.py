"""forgetkit probe: which facts a model knows, counted by hand on the memorised quickstart model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from forgetkit.cli import app
from forgetkit.errors import ForgetkitError
from forgetkit.quickstart.general import general_records, score
from forgetkit.stages.probe import ProbeParams, names_term, run_probe


def test_names_term_matches_whole_words_only():
    assert names_term("The capital of France is Paris.", "paris")
    assert not names_term("A Parisian cafe.", "Paris")
    assert names_term("It is Notre-Dame.", "Notre")
    assert names_term("Water is H2O (two hydrogens).", "H2O")
    assert not names_term("1000 degrees", "100")


def test_general_score_by_hand():
    records = general_records(3)  # Paris, Tokyo, Berlin
    answers = ["Paris is the capital.", "Kyoto, I think.", "The capital of Germany is Berlin."]
    reference = ["The capital of France is Paris.", "The capital of Japan is Tokyo.", "Berlin"]
    out = score(answers, records, reference)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["questions"] == 3
    # ROUGE-L recall of each reference in its answer, by hand on lower-cased words: "the capital of france
    # is paris" vs "paris is the capital": longest common subsequence "the capital", 2 of 6; Tokyo's
    # reference shares no word with "kyoto i think": 0 of 6; "berlin" is in the third answer: 1 of 1.
    assert out["rouge_l_vs_pretrained"] == pytest.approx((2 / 6 + 0 + 1) / 3)


@pytest.fixture()
def questions(memorised, tmp_path):
    """The memorised forget questions, each with one word of its true answer as the expected term
    (the model knows it), plus two whose term no answer can name."""
    rows = [json.loads(l) for l in (memorised / "forget.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "question" in r][:6]
    probes = [{"question": r["question"], "answer": r["answer"].split()[0].strip(".,()"), "subject": "known"}
              for r in rows]
    probes += [{"question": rows[0]["question"], "answer": "Zyzzyva", "subject": "unknown"},
               {"question": rows[1]["question"], "answer": "x", "term": "Quetzalcoatl", "subject": "unknown"}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in probes))
    return path, probes


def test_probe_counts_what_the_model_knows(memorised, questions, tmp_path):
    path, probes = questions
    model = str(memorised / "model")
    summary = run_probe(model, str(path), ProbeParams(max_new_tokens=16), known_output=tmp_path / "known.jsonl",
                        summary_output=tmp_path / "summary.json")
    assert summary["subjects"]["known"] == {"questions": 6, "known": 6, "accuracy": 1.0}
    assert summary["subjects"]["unknown"] == {"questions": 2, "known": 0, "accuracy": 0.0}
    assert summary["accuracy"] == pytest.approx(6 / 8)
    known = [json.loads(l) for l in (tmp_path / "known.jsonl").read_text().splitlines()]
    assert [k["question"] for k in known] == [p["question"] for p in probes[:6]]
    # The model's own answer is the target, and it names the expected term.
    assert all(names_term(k["answer"], k["expected"]) and k["answer"] != k["expected"] for k in known)
    written = (tmp_path / "summary.json").read_text()
    assert json.loads(written)["base_fingerprint"] == summary["base_fingerprint"]
    assert all(p["question"] not in written for p in probes)  # counts only, never the text

    only = run_probe(model, str(path), ProbeParams(max_new_tokens=16, subjects=("unknown",)))
    assert only["questions"] == 2 and only["known"] == 0
    with pytest.raises(ForgetkitError, match="knows none of the 2 questions"):
        run_probe(model, str(path), ProbeParams(max_new_tokens=16, subjects=("unknown",)), known_output=tmp_path / "k2.jsonl")
    assert not (tmp_path / "k2.jsonl").exists()
    with pytest.raises(ForgetkitError, match="no question is left"):
        run_probe(model, str(path), ProbeParams(exclude_subjects=("known", "unknown")))


def test_probe_cli_errors(memorised, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Who?", "answer": "Ada"}\n{"question": "Where?"}\n')
    runner = CliRunner()
    model = str(memorised / "model")
    done = runner.invoke(app, ["probe", model, str(bad)])
    assert done.exit_code == 1 and f"{bad}:2:" in done.output and "Traceback" not in done.output
    done = runner.invoke(app, ["probe", model])
    assert done.exit_code == 1 and "give a QUESTIONS file or --general" in done.output
