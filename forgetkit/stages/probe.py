"""``forgetkit probe``: which of these facts does the model know?

Knowledge a pretrained model brought with it is only worth forgetting where the model holds it, and
a forget target is only a target if it is what the model says: IHL and its kin push down the
likelihood of the answer they are given, and on an answer the model never gave that need not touch
what it knows. So the probe asks each question (greedy, chat template), counts an answer as known
when it names the expected term (a whole-word, case-insensitive match), and writes the known
questions with the model's own answer as ``answer``: a forget or retain set for the other stages.

Input records: ``question``, ``answer`` (the expected term, or a longer answer with the term in
``term``) and optionally ``subject``. ``--subject`` keeps only those subjects (repeat it);
``--exclude-subject`` drops some. Without a file, ``--general`` asks the built-in
general-knowledge questions (``forgetkit.quickstart.general``). The summary (JSON) holds counts and accuracies, never the text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

from forgetkit.artifacts import SCHEMA_VERSION, atomic_file, input_record, write_json
from forgetkit.console import console, output
from forgetkit.data import Record
from forgetkit.errors import ForgetkitError
from forgetkit.stages.common import load_examples, table


@dataclasses.dataclass(frozen=True)
class ProbeParams:
    max_new_tokens: int = 24
    batch_size: int = 16
    subjects: tuple[str, ...] = ()
    exclude_subjects: tuple[str, ...] = ()
    model_dtype: str = "auto"


def names_term(answer: str, term: str) -> bool:
    """Whether ``answer`` names ``term`` as a whole word (so "Paris" is not found in "Parisian")."""
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", answer, flags=re.IGNORECASE) is not None


def expected_term(record: Record) -> str:
    term = record.get("term", record["answer"])
    if not isinstance(term, str) or not term.strip():
        raise ForgetkitError(f"{record.source}: field 'term' must be a non-empty string")
    return term.strip()


def wanted(record: Record, params: ProbeParams) -> bool:
    subject = record.get("subject")
    return (not params.subjects or subject in params.subjects) and subject not in params.exclude_subjects


def accuracy_by_subject(records: list[Record], known: list[bool]) -> dict[str, dict]:
    asked, hits = Counter(), Counter()
    for record, hit in zip(records, known):
        subject = str(record.get("subject", ""))
        asked[subject] += 1
        hits[subject] += hit
    return {s: {"questions": asked[s], "known": hits[s], "accuracy": hits[s] / asked[s]} for s in sorted(asked)}


GENERAL = "general knowledge (built in)"


def question_set(source: str | None, loaded) -> tuple[list[Record], list]:
    """A questions file, or (None) the built-in general-knowledge questions."""
    if source is not None:
        return load_examples(source, loaded)
    from forgetkit.data import encode
    from forgetkit.quickstart.general import general_records

    records = [Record(fields=r, source=f"general:{i}") for i, r in enumerate(general_records(), start=1)]
    return records, encode(records, loaded.tokenizer, context_length=loaded.context_length)


def run_probe(
    model_ref: str,
    questions: str | None,
    params: ProbeParams,
    *,
    known_output: str | Path | None = None,
    summary_output: str | Path | None = None,
    adapter: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    from peft import PeftModel

    from forgetkit.artifacts import check_artifact
    from forgetkit.metrics.rouge import greedy_answers
    from forgetkit.models import load_model

    loaded = load_model(model_ref, dtype=params.model_dtype, trust_remote_code=trust_remote_code)
    all_records, all_examples = question_set(questions, loaded)
    questions = questions or GENERAL
    for record in all_records:
        if not record.is_qa:
            raise ForgetkitError(f"{record.source}: a probe question needs 'question' and 'answer' (the expected term)")
    pairs = [(r, e) for r, e in zip(all_records, all_examples) if wanted(r, params)]
    if not pairs:
        raise ForgetkitError(f"{questions}: no question is left to probe after --subject/--exclude-subject")
    records, examples = [r for r, _ in pairs], [e for _, e in pairs]
    terms = [expected_term(r) for r in records]
    model = loaded.model
    if adapter is not None:
        check_artifact(adapter, "unlearn", loaded.info)
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    answers = greedy_answers(model, loaded.tokenizer, examples, params.max_new_tokens, batch_size=params.batch_size)
    known = [names_term(a, t) for a, t in zip(answers, terms)]

    summary = {
        "schema_version": SCHEMA_VERSION,
        "stage": "probe",
        "base_model": loaded.info.model_id,
        "base_fingerprint": loaded.info.fingerprint,
        "adapter": adapter,
        "inputs": {
            "questions": input_record(questions) if questions != GENERAL else {"path": GENERAL},
            **({"adapter": input_record(adapter)} if adapter else {}),
        },
        "parameters": dataclasses.asdict(params),
        "questions": len(records),
        "known": sum(known),
        "accuracy": sum(known) / len(known),
        "subjects": accuracy_by_subject(records, known),
    }
    if known_output is not None:
        rows = [
            {**r.fields, "answer": a, "expected": t}
            for r, a, t, hit in zip(records, answers, terms, known) if hit
        ]
        if not rows:
            raise ForgetkitError(f"the model knows none of the {len(records)} questions in {questions}: nothing to write")
        with atomic_file(known_output) as staging:
            staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        summary["known_output"] = str(known_output)
    if summary_output is not None:
        write_json(summary_output, summary)
    title = f"Probe: {questions}" + (f" with {adapter}" if adapter else "")
    output.print(table(title, ["subject", "questions", "known", "accuracy"], [
        (s or "(none)", v["questions"], v["known"], v["accuracy"]) for s, v in summary["subjects"].items()
    ] + [("all", summary["questions"], summary["known"], summary["accuracy"])]))
    if known_output is not None:
        console.print(f"wrote {known_output} ({summary['known']} known questions, the model's own answers)")
    return summary
