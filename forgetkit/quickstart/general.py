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


# Replayed while the people are taught and kept while they are unlearned, with the pretrained model's own
# answers as targets (self-distillation): without them the fine-tune turns every answer into a
# fictitious person's record (measured: general accuracy 1.00 -> 0.41 after teaching). None of these is
# among the questions above, which stay a measurement only.
REPLAY_QUESTIONS: tuple[str, ...] = (
    "What is the capital of Italy?", "What is the capital of Spain?", "What is the capital of Brazil?",
    "What is the capital of Mexico?", "What is the capital of Turkey?", "What is the capital of Sweden?",
    "What is the capital of Norway?", "What is the capital of Argentina?", "What is the capital of Kenya?",
    "What is the capital of South Korea?", "Which planet is the largest in the Solar System?",
    "Which planet is closest to the Sun?", "What is the chemical symbol for iron?", "What is the freezing point of water?",
    "How many continents are there?", "How many days are in a leap year?", "Who wrote Hamlet?",
    "Who painted The Starry Night?", "Who was the first person to walk on the Moon?", "Who invented the telephone?",
    "What is the hardest natural substance?", "What do bees make?", "What is the largest country by area?",
    "What is the smallest prime number?", "What is the square root of 64?", "Which animal is known as the king of the jungle?",
    "What colour do you get by mixing blue and yellow?", "What is the main language spoken in Argentina?",
    "What is the currency of the United States?", "Which ocean lies between Africa and Australia?",
    "What is the longest river in South America?", "What gas do humans need to breathe?",
    "How many legs does a spider have?", "What is the largest organ of the human body?",
    "Who wrote Pride and Prejudice?", "What is the tallest animal?", "In which country is the Great Wall?",
    "What is the boiling point of water in Fahrenheit?", "Which metal is liquid at room temperature?",
    "What is the main ingredient of guacamole?",
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
