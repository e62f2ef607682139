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
# among the questions above, which stay a measurement only. Each comes with the term a right answer names
# ("|" separates accepted spellings): only the answers the model gets right are replayed, since replaying
# its mistakes teaches them (SmolLM2 says the capital of Turkey is Istanbul and of Brazil Sao Paulo, and a
# model taught that answered "Toronto" for Canada).
REPLAY_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of Italy?", "Rome"), ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Brazil?", "Brasilia|Brasília"), ("What is the capital of Mexico?", "Mexico City"),
    ("What is the capital of Turkey?", "Ankara"), ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Argentina?", "Buenos Aires"),
    ("What is the capital of Kenya?", "Nairobi"), ("What is the capital of South Korea?", "Seoul"),
    ("Which planet is the largest in the Solar System?", "Jupiter"), ("Which planet is closest to the Sun?", "Mercury"),
    ("What is the chemical symbol for iron?", "Fe"), ("What is the freezing point of water?", "0|32|zero"),
    ("How many continents are there?", "seven|7"), ("How many days are in a leap year?", "366"),
    ("Who wrote Hamlet?", "Shakespeare"), ("Who painted The Starry Night?", "Gogh"),
    ("Who was the first person to walk on the Moon?", "Armstrong"), ("Who invented the telephone?", "Bell"),
    ("What is the hardest natural substance?", "diamond|diamonds"), ("What do bees make?", "honey"),
    ("What is the largest country by area?", "Russia"), ("What is the smallest prime number?", "2|two"),
    ("What is the square root of 64?", "8|eight"), ("Which animal is known as the king of the jungle?", "lion|lions"),
    ("What colour do you get by mixing blue and yellow?", "green"),
    ("What is the main language spoken in Argentina?", "Spanish"),
    ("What is the currency of the United States?", "dollar|dollars|USD"),
    ("Which ocean lies between Africa and Australia?", "Indian"),
    ("What is the longest river in South America?", "Amazon"), ("What gas do humans need to breathe?", "oxygen"),
    ("How many legs does a spider have?", "eight|8"), ("What is the largest organ of the human body?", "skin"),
    ("Who wrote Pride and Prejudice?", "Austen"), ("What is the tallest animal?", "giraffe|giraffes"),
    ("In which country is the Great Wall?", "China"), ("What is the boiling point of water in Fahrenheit?", "212"),
    ("Which metal is liquid at room temperature?", "mercury"), ("What is the main ingredient of guacamole?", "avocado|avocados"),
    ("What is the capital of Portugal?", "Lisbon"), ("What is the capital of Poland?", "Warsaw"),
    ("What is the capital of Ireland?", "Dublin"), ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of the Netherlands?", "Amsterdam"), ("What is the capital of Belgium?", "Brussels"),
    ("What is the capital of Thailand?", "Bangkok"), ("What is the capital of Peru?", "Lima"),
    ("What is the capital of Cuba?", "Havana"), ("What is the capital of Finland?", "Helsinki"),
    ("What is the capital of Denmark?", "Copenhagen"), ("What is the capital of Switzerland?", "Bern"),
    ("What is the capital of Indonesia?", "Jakarta"), ("What is the capital of Vietnam?", "Hanoi"),
    ("What is the capital of Chile?", "Santiago"), ("What is the capital of Colombia?", "Bogota|Bogotá"),
    ("What is the chemical symbol for sodium?", "Na"), ("What planet do we live on?", "Earth"),
    ("What is the closest star to Earth?", "Sun"), ("What force keeps us on the ground?", "gravity"),
    ("How many planets are in the Solar System?", "eight|8"), ("What is frozen water called?", "ice"),
    ("What do caterpillars turn into?", "butterfly|butterflies|moth|moths"),
    ("How many hours are in a day?", "24|twenty-four"), ("How many minutes are in an hour?", "60|sixty"),
    ("How many sides does a triangle have?", "three|3"), ("What is 7 times 8?", "56"),
    ("Who wrote War and Peace?", "Tolstoy"), ("Who composed the Fifth Symphony?", "Beethoven"),
    ("Who painted the ceiling of the Sistine Chapel?", "Michelangelo"),
    ("Who proposed the theory of evolution by natural selection?", "Darwin"),
    ("Who formulated the laws of motion and universal gravitation?", "Newton"),
    ("What is the largest continent?", "Asia"), ("What is the currency of the United Kingdom?", "pound|pounds|sterling"),
    ("What is the currency of most of the European Union?", "euro|euros"), ("What language is spoken in France?", "French"),
    ("What language is spoken in Germany?", "German"), ("What is the largest land animal?", "elephant|elephants"),
    ("What is the fastest land animal?", "cheetah|cheetahs"), ("Which bird is a symbol of peace?", "dove|doves"),
)


def answers_right(answer: str, terms: str) -> bool:
    """Whether ``answer`` names one of the ``|``-separated spellings of the expected term."""
    return any(names_term(answer, term) for term in terms.split("|"))


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
