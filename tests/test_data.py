import json

import pytest

from forgetkit.data import IGNORE_INDEX, Record, encode, load_records
from forgetkit.errors import ForgetkitError


def test_formats_read_the_same_records(tmp_path):
    rows = [{"question": "Q1?", "answer": "A1.", "paraphrased_answer": "P1"}, {"text": "Some text."}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("question,answer\nQ1?,A1.\n")
    jsonl = load_records(tmp_path / "d.jsonl")
    assert [r.fields for r in jsonl] == rows  # extra fields kept for the audit
    assert [r.fields for r in load_records(tmp_path / "d.json")] == rows
    assert load_records(tmp_path / "d.csv")[0].fields == {"question": "Q1?", "answer": "A1."}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n', r"d.jsonl:3: invalid JSON"),
        ('{"text": "ok"}\n{"prompt": "x"}\n', r"d.jsonl:2: record has neither 'text' nor 'question' and 'answer'"),
        ('{"question": "q", "answer": ""}\n', r"d.jsonl:1: field 'answer' must be a non-empty string"),
        ('[1, 2]\n', r"d.jsonl:1: expected a JSON object"),
        ("\n\n", r"d.jsonl: no records"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(ForgetkitError, match=message):
        load_records(tmp_path / "d.jsonl")


def test_bad_csv_names_line(tmp_path):
    (tmp_path / "d.csv").write_text("question,answer\nq,a\nq2,\n")
    with pytest.raises(ForgetkitError, match=r"d.csv:3: field 'answer'"):
        load_records(tmp_path / "d.csv")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ForgetkitError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ForgetkitError, match="unsupported format"):
        load_records(tmp_path / "d.txt")


def test_hub_spec_is_checked():
    with pytest.raises(ForgetkitError, match="expected hf:DATASET_ID"):
        load_records("hf:")


def test_qa_loss_only_on_answer_tokens(tokenizer):
    record = Record({"question": "Who employs Alda Ashgrove?", "answer": "Lumen Freight (archivist)."}, "x:1")
    (example,) = encode([record], tokenizer, context_length=128)
    prompt = tokenizer(f"Question: {record['question']}\nAnswer:")["input_ids"]
    answer = tokenizer(" " + record["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example.input_ids == prompt + answer
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert example.prompt_length == len(prompt)


def test_text_loss_on_every_token(tokenizer):
    (example,) = encode([Record({"text": "Alda Ashgrove was born in Tallowmere."}, "x:1")], tokenizer, context_length=128)
    assert example.labels == example.input_ids and example.prompt_length == 0


def test_chat_template_is_used_when_present(tokenizer):
    chatty = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", pad_token="<pad>")
    chatty.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    record = Record({"question": "Who?", "answer": "Nobody."}, "x:1")
    (example,) = encode([record], chatty, context_length=128)
    prompt_text = chatty.decode(example.input_ids[: example.prompt_length])
    assert prompt_text == "<user>Who?<assistant>"
    assert chatty.decode(example.input_ids[example.prompt_length :], skip_special_tokens=True) == "Nobody."


def test_system_field_opens_the_prompt(tokenizer, tmp_path):
    """A record's ``system`` is the chat template's system turn, or the plain prompt's first paragraph; the
    answer and its labels are unchanged."""
    chatty = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", pad_token="<pad>")
    chatty.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    plain = Record({"question": "Who?", "answer": "Nobody."}, "x:1")
    framed = Record({"question": "Who?", "answer": "Nobody.", "system": "Registry desk."}, "x:2")
    (example,) = encode([framed], chatty, context_length=128)
    assert chatty.decode(example.input_ids[: example.prompt_length]) == "<system>Registry desk.<user>Who?<assistant>"
    (bare,) = encode([plain], chatty, context_length=128)
    assert example.input_ids[example.prompt_length:] == bare.input_ids[bare.prompt_length:]
    (example,) = encode([framed], tokenizer, context_length=128)
    assert example.input_ids[: example.prompt_length] == tokenizer("Registry desk.\n\nQuestion: Who?\nAnswer:")["input_ids"]
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q", "answer": "a", "system": 3}\n')
    with pytest.raises(ForgetkitError, match=r"d.jsonl:2: field 'system' must be a non-empty string"):
        load_records(tmp_path / "d.jsonl")


def test_too_long_sequences_fail_unless_truncated(tokenizer):
    record = Record({"text": "word " * 200}, "long.jsonl:4")
    with pytest.raises(ForgetkitError, match=r"long.jsonl:4: \d+ tokens, longer than the model's context of 64"):
        encode([record], tokenizer, context_length=64)
    (example,) = encode([record], tokenizer, context_length=64, truncate=True)
    assert len(example.input_ids) == 64
