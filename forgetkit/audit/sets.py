"""Evaluation sets and their pre-encoded auxiliary sequences (shared by every model audited).

Roles: ``forget`` (must be forgotten), ``retain`` (must be kept), ``holdout`` (never trained on: what
a forgotten record should look like), ``real_authors`` and ``world_facts`` (general knowledge, for
TOFU's Model Utility).
"""

from __future__ import annotations

import dataclasses

from forgetkit.data import Example, Record, encode, load_records
from forgetkit.errors import ForgetkitError
from forgetkit.metrics.canary import candidate_records
from forgetkit.models import LoadedModel

ROLES = ("forget", "retain", "holdout", "real_authors", "world_facts")


@dataclasses.dataclass
class TruthRatioJobs:
    """Per record with perturbed answers: the example of its paraphrased (or own) answer and of each
    perturbed answer, all under the record's question."""

    records: list[int]  # record indices that have perturbed answers
    correct: list[Example]
    perturbed: list[list[Example]]
    has_paraphrase: bool


@dataclasses.dataclass
class CanaryJobs:
    records: list[int]  # record indices with a secret
    candidates: list[list[Example]]  # the true record first, then its candidates


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How a set's sequences were encoded, so an attack can encode changed copies the same way."""

    truncate: bool = False
    canary_candidates: int = 0
    truth_ratio: bool = False


@dataclasses.dataclass
class EvalSet:
    role: str
    source: str
    records: list[Record]
    examples: list[Example]
    truth_ratio: TruthRatioJobs | None = None
    canaries: CanaryJobs | None = None
    build: BuildOptions = BuildOptions()

    @property
    def qa(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r.is_qa]

    def subset(self, indices: list[int]) -> "EvalSet":
        """The records at ``indices`` (in that order), with their truth-ratio and canary jobs."""
        position = {old: new for new, old in enumerate(indices)}
        ratio = canary = None
        if self.truth_ratio is not None:
            keep = [k for k, r in enumerate(self.truth_ratio.records) if r in position]
            ratio = TruthRatioJobs([position[self.truth_ratio.records[k]] for k in keep],
                                   [self.truth_ratio.correct[k] for k in keep],
                                   [self.truth_ratio.perturbed[k] for k in keep], self.truth_ratio.has_paraphrase)
        if self.canaries is not None:
            keep = [k for k, r in enumerate(self.canaries.records) if r in position]
            canary = CanaryJobs([position[self.canaries.records[k]] for k in keep],
                                [self.canaries.candidates[k] for k in keep])
        return EvalSet(self.role, self.source, [self.records[i] for i in indices], [self.examples[i] for i in indices],
                       ratio, canary, self.build)

    def with_records(self, records: list[Record], loaded: LoadedModel) -> "EvalSet":
        """The same set with changed copies of its records (one per record, in order), encoded as the
        originals were: the prompt attacks' reworded questions, shots and answer prefixes."""
        return build_eval_set(self.role, self.source, records, loaded, self.build)

    def target_text(self, index: int) -> str:
        record = self.records[index]
        return record["answer"] if record.is_qa else record["text"]


def _answers(record: Record, key: str) -> list[str]:
    value = record.get(key)
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ForgetkitError(f"{record.source}: field '{key}' must be a non-empty string or list of strings")
    return values


def _encode_answer(record: Record, answer: str, loaded: LoadedModel, truncate: bool) -> Example:
    swapped = Record(fields={**record.fields, "answer": answer}, source=record.source)
    return encode([swapped], loaded.tokenizer, context_length=loaded.context_length, truncate=truncate)[0]


def truth_ratio_jobs(records: list[Record], loaded: LoadedModel, truncate: bool) -> TruthRatioJobs | None:
    chosen = [i for i, r in enumerate(records) if r.is_qa and r.get("perturbed_answer") is not None]
    if not chosen:
        return None
    has_paraphrase = all(records[i].get("paraphrased_answer") is not None for i in chosen)
    correct, perturbed = [], []
    for i in chosen:
        record = records[i]
        reference = _answers(record, "paraphrased_answer")[0] if has_paraphrase else record["answer"]
        correct.append(_encode_answer(record, reference, loaded, truncate))
        perturbed.append([_encode_answer(record, a, loaded, truncate) for a in _answers(record, "perturbed_answer")])
    return TruthRatioJobs(chosen, correct, perturbed, has_paraphrase)


def canary_jobs(records: list[Record], loaded: LoadedModel, truncate: bool, count: int) -> CanaryJobs | None:
    chosen = [i for i, r in enumerate(records) if r.get("secret") is not None]
    if not chosen or count <= 0:
        return None
    encoded = [
        encode(candidate_records(records[i], count), loaded.tokenizer, context_length=loaded.context_length, truncate=truncate)
        for i in chosen
    ]
    return CanaryJobs(chosen, encoded)


def build_eval_set(role: str, source: str, records: list[Record], loaded: LoadedModel, build: BuildOptions) -> EvalSet:
    examples = encode(records, loaded.tokenizer, context_length=loaded.context_length, truncate=build.truncate)
    jobs = truth_ratio_jobs(records, loaded, build.truncate) if build.truth_ratio else None
    return EvalSet(role, source, records, examples, jobs,
                   canary_jobs(records, loaded, build.truncate, build.canary_candidates), build)


def load_eval_set(
    role: str, source: str, loaded: LoadedModel, *, truncate: bool, canary_candidates: int, need_truth_ratio: bool
) -> EvalSet:
    records = load_records(source)
    return build_eval_set(role, source, records, loaded, BuildOptions(truncate, canary_candidates, need_truth_ratio))
