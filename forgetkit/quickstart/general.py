"""General knowledge a pretrained model brings: what unlearning a few people must not take away.

The questions were picked with SmolLM2-135M-Instruct itself: of 50 common-knowledge questions written
for this purpose, these are the ones whose greedy answer (chat template, 24 new tokens) names the
expected term. Score: the share of answers that name it (a whole-word, case-insensitive match), and
ROUGE-L recall of each answer against the pretrained model's own answer (how much of what it said
survives the fine-tuning and the unlearning).
"""

from __future__ import annotations

from typing import Sequence

from forgetkit.stages.probe import names_term

# (question, expected term, subject): the subject lets a run leave out what it forgets on purpose.
GENERAL_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("What is the capital of France?", "Paris", "France"),
    ("What is the capital of Japan?", "Tokyo", "Japan"),
    ("What is the capital of Germany?", "Berlin", "Germany"),
    ("What is the capital of Egypt?", "Cairo", "Egypt"),
    ("What is the capital of Canada?", "Ottawa", "Canada"),
    ("What is the capital of Australia?", "Canberra", "Australia"),
    ("What is the capital of Russia?", "Moscow", "Russia"),
    ("What is the capital of the United Kingdom?", "London", "United Kingdom"),
    ("What is the capital of China?", "Beijing", "China"),
    ("What is the capital of India?", "New Delhi", "India"),
    ("What is the capital of Greece?", "Athens", "Greece"),
    ("Which planet is known as the Red Planet?", "Mars", ""),
    ("What is the chemical symbol for water?", "H2O", ""),
    ("What is the chemical symbol for gold?", "Au", ""),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide", ""),
    ("What is the boiling point of water in degrees Celsius?", "100", ""),
    ("Who wrote Romeo and Juliet?", "Shakespeare", ""),
    ("Who painted the Mona Lisa?", "Leonardo", ""),
    ("Who developed the theory of relativity?", "Einstein", ""),
    ("What is the largest ocean on Earth?", "Pacific", ""),
    ("What is the longest river in Africa?", "Nile", ""),
    ("What is the tallest mountain in the world?", "Everest", ""),
    ("What is the largest mammal on Earth?", "whale", ""),
    ("What is the currency of Japan?", "yen", "Japan"),
    ("What language is spoken in Brazil?", "Portuguese", "Brazil"),
    ("Which organ pumps blood through the body?", "heart", ""),
    ("Who discovered penicillin?", "Fleming", ""),
    ("What instrument has 88 keys?", "piano", ""),
    ("In which country are the pyramids of Giza?", "Egypt", "Egypt"),
    ("What is the largest desert in the world?", "Sahara", ""),
    ("Who wrote the Odyssey?", "Homer", ""),
    ("On which continent is Kenya?", "Africa", "Kenya"),
)


def general_records(count: int | None = None) -> list[dict]:
    chosen = GENERAL_QUESTIONS[:count] if count else GENERAL_QUESTIONS
    return [{"question": q, "answer": term, "term": term, "subject": subject} for q, term, subject in chosen]


def score(answers: Sequence[str], records: Sequence[dict], reference_answers: Sequence[str] | None = None) -> dict:
    """Accuracy (answers naming the term) and, given the pretrained model's answers, ROUGE-L recall of
    them in these answers."""
    from forgetkit.metrics.rouge import rouge_l_recall

    hits = [names_term(a, r["term"]) for a, r in zip(answers, records)]
    out = {"accuracy": sum(hits) / len(hits), "questions": len(hits)}
    if reference_answers is not None:
        values = [rouge_l_recall(ref, a) for ref, a in zip(reference_answers, answers)]
        out["rouge_l_vs_pretrained"] = sum(values) / len(values)
    return out
