"""Forget/retain sets: reading records, checking them, and turning them into token ids and labels.

A record is either ``{"text": ...}`` (loss on every token) or ``{"question": ..., "answer": ...}``
(loss on the answer tokens only). A QA record may carry ``system``: the system prompt it is asked under
(a chat model's system turn; a first paragraph of the prompt otherwise). Any other fields are kept for
the audit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from forgetkit.errors import ForgetkitError

IGNORE_INDEX = -100


@dataclasses.dataclass
class Record:
    fields: dict[str, Any]
    source: str  # "file:line" (or "id:row") for error messages

    @property
    def is_qa(self) -> bool:
        return "question" in self.fields

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


# --------------------------------------------------------------------------- reading


def _validate(fields: Any, source: str) -> Record:
    if not isinstance(fields, dict):
        raise ForgetkitError(f"{source}: expected a JSON object, got {type(fields).__name__}")
    has_text = "text" in fields
    has_qa = "question" in fields and "answer" in fields
    if not has_text and not has_qa:
        raise ForgetkitError(f"{source}: record has neither 'text' nor 'question' and 'answer'")
    for key in ("text",) if has_text and not has_qa else ("question", "answer"):
        value = fields[key]
        if not isinstance(value, str) or not value.strip():
            raise ForgetkitError(f"{source}: field '{key}' must be a non-empty string")
    if has_qa and "system" in fields and (not isinstance(fields["system"], str) or not fields["system"].strip()):
        raise ForgetkitError(f"{source}: field 'system' must be a non-empty string")
    return Record(fields=fields, source=source)


def _read_jsonl(path: Path) -> Iterable[Record]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForgetkitError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            yield _validate(fields, f"{path}:{number}")


def _read_json(path: Path) -> Iterable[Record]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ForgetkitError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = payload["data"]
    if not isinstance(payload, list):
        raise ForgetkitError(f"{path}: expected a JSON list of records (or an object with a 'data' list)")
    for index, fields in enumerate(payload):
        yield _validate(fields, f"{path}: record {index}")


def _read_csv(path: Path) -> Iterable[Record]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for fields in reader:
            # reader.line_num is the physical line the row ended on (the header is line 1).
            yield _validate({k: v for k, v in fields.items() if k is not None}, f"{path}:{reader.line_num}")


def _read_hub(spec: str) -> Iterable[Record]:
    """``hf:ID[:CONFIG[:SPLIT]]``: a dataset through ``datasets.load_dataset`` (split defaults to train)."""
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise ForgetkitError(f"{spec}: expected hf:DATASET_ID[:CONFIG[:SPLIT]]")
    dataset_id, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "train")
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ForgetkitError(f"{spec}: could not load dataset ({message})") from None
    for index, fields in enumerate(rows):
        yield _validate(dict(fields), f"{spec}: row {index}")


def load_records(source: str | Path) -> list[Record]:
    """Read a JSONL, JSON or CSV file, or a ``hf:`` dataset id, into checked records."""
    source_text = str(source)
    if source_text.startswith("hf:"):
        records = list(_read_hub(source_text))
    else:
        path = Path(source_text)
        if not path.is_file():
            raise ForgetkitError(f"{path}: no such file")
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise ForgetkitError(f"{path}: unsupported format '{path.suffix}' (use .jsonl, .json, .csv or hf:ID)")
        records = list(reader(path))
    if not records:
        raise ForgetkitError(f"{source_text}: no records (the set is empty)")
    return records


# --------------------------------------------------------------------------- encoding


@dataclasses.dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken
    prompt_length: int  # tokens before the first target token
    index: int  # position in the record list
    # The same record with its secret swapped for same-format strings, for losses that compare a
    # secret with its twins (``UnlearningLoss.prepare_examples``); empty otherwise.
    twins: tuple["Example", ...] = ()
    # The same record with its answer swapped for each of its wrong (perturbed) answers, for losses
    # that score an answer against the wrong ones, as TOFU's truth ratio does; empty otherwise.
    perturbed: tuple["Example", ...] = ()


# Fields the audit's prompt attacks set on copies of records (never read from data files' meaning):
# earlier question/answer turns before the question, and the opening words of the answer.
SHOTS_FIELD = "_shots"
ANSWER_PREFIX_FIELD = "_answer_prefix"


def prompt_and_answer(record: Record, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (no loss) and of the target, for one record.

    QA records use the tokenizer's chat template when it has one, a plain ``Question:/Answer:``
    format otherwise; the two parts are tokenised separately so the label mask is exact.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if not record.is_qa:
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        return [], list(ids) + eos
    prompt = question_prompt(record["question"], tokenizer, record.get(SHOTS_FIELD) or (), record.get("system"))
    prefix = record.get(ANSWER_PREFIX_FIELD)
    if prefix:  # the start of the answer is given, not scored (the audit's prefix attack)
        prompt += list(tokenizer(("" if getattr(tokenizer, "chat_template", None) else " ") + prefix,
                                 add_special_tokens=False)["input_ids"])
    return prompt, answer_ids(record["answer"], tokenizer)


def question_prompt(question: str, tokenizer: PreTrainedTokenizerBase, shots: Sequence[dict] = (),
                    system: str | None = None) -> list[int]:
    """The prompt of a question, after ``shots`` (earlier question/answer turns in the same format) and
    under ``system`` (a system turn; without it a chat template's own default applies)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [m for s in shots for m in ({"role": "user", "content": s["question"]},
                                            {"role": "assistant", "content": s["answer"]})]
        opening = [{"role": "system", "content": system}] if system else []
        ids = tokenizer.apply_chat_template(
            [*opening, *turns, {"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    earlier = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    opening = f"{system}\n\n" if system else ""
    return list(tokenizer(f"{opening}{earlier}Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"])


def answer_ids(answer: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prefix = "" if getattr(tokenizer, "chat_template", None) else " "
    return list(tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]) + eos


def encode(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    context_length: int | None,
    truncate: bool = False,
) -> list[Example]:
    examples = []
    for index, record in enumerate(records):
        prompt, target = prompt_and_answer(record, tokenizer)
        ids = prompt + target
        if context_length is not None and len(ids) > context_length:
            if not truncate:
                raise ForgetkitError(
                    f"{record.source}: {len(ids)} tokens, longer than the model's context of {context_length} "
                    "(pass --truncate to cut it)"
                )
            ids = ids[:context_length]
        if len(ids) - len(prompt) < 1 or len(ids) < 2:
            raise ForgetkitError(f"{record.source}: nothing left to learn from after the prompt ({len(ids)} tokens)")
        labels = [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
        examples.append(Example(input_ids=ids, labels=labels, prompt_length=len(prompt), index=index))
    return examples


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch for teacher-forced passes (training, Fisher, likelihoods)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    index = torch.tensor([e.index for e in examples], dtype=torch.long)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "index": index}
    for field, prefix in (("twins", "twin_"), ("perturbed", "perturbed_")):
        attached = [(row, copy) for row, example in enumerate(examples) for copy in getattr(example, field)]
        if attached:
            sub_batch = collate([copy for _, copy in attached], pad_token_id)
            batch.update({prefix + key: sub_batch[key] for key in ("input_ids", "labels", "attention_mask")})
            # The batch row each copy was made from.
            batch[prefix + "owner"] = torch.tensor([row for row, _ in attached], dtype=torch.long)
    return batch


def batches(examples: Sequence[Example], batch_size: int, generator: torch.Generator | None = None) -> list[list[Example]]:
    """Split into batches, shuffled when a generator is given."""
    order = torch.randperm(len(examples), generator=generator).tolist() if generator is not None else range(len(examples))
    ordered = [examples[i] for i in order]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def target_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that carry loss after the causal shift (the first position is never predicted)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
