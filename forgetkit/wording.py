"""Rewordings of forget questions for training, kept apart from the audit's paraphrase attack.

Unlearning only the exact wording of a question leaves the answer one rephrasing away. ``unlearn
--train-rewordings N`` trains each forget question under N more wordings from ``TRAINING_TEMPLATES``;
the audit's paraphrase attack uses the dataset's ``paraphrased_question`` or its own templates
(``forgetkit.audit.attacks.prompts.PARAPHRASE_TEMPLATES``), which share no wording with these, so an attack is
never a wording that training saw. The adapter records the templates it was trained under and the audit
report states both sides.
"""

from __future__ import annotations

from typing import Sequence

from forgetkit.data import Record
from forgetkit.errors import ForgetkitError

TRAINING_TEMPLATES = (
    "{question} Answer in a few words.",
    "Tell me: {question}",
    "Here is a question for you. {question}",
    "Please respond. {question}",
    "{question} Be concise.",
    "I need to know something. {question}",
)


def reworded(records: Sequence[Record], count: int) -> list[Record]:
    """The records, then ``count`` rewordings of each question/answer record (templates taken in turn,
    each record starting one further along, so a set sees every template)."""
    if count < 0 or count > len(TRAINING_TEMPLATES):
        raise ForgetkitError(f"--train-rewordings must be between 0 and {len(TRAINING_TEMPLATES)}, not {count}")
    out = list(records)
    for number, record in enumerate(records):
        if not record.is_qa:
            continue
        for k in range(count):
            template = TRAINING_TEMPLATES[(number + k) % len(TRAINING_TEMPLATES)]
            out.append(Record(fields={**record.fields, "question": template.format(question=record["question"])},
                              source=record.source))
    return out


def used_templates(records: Sequence[Record], count: int) -> list[str]:
    """The templates ``reworded`` applies to these records."""
    qa = [number for number, record in enumerate(records) if record.is_qa]
    return sorted({TRAINING_TEMPLATES[(n + k) % len(TRAINING_TEMPLATES)] for n in qa for k in range(count)})
