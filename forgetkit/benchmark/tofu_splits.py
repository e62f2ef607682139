"""The TOFU splits a benchmark run trains and audits on: the full benchmark, or a subset of authors
small enough for a CPU.

TOFU (Maini et al. 2024) has 200 fictitious authors of 20 question/answer pairs each, in file
order: authors 0-179 make retain90, 180-199 forget10. ``retain_perturbed`` (the retain set with
paraphrased and perturbed answers, for truth ratios) covers authors 0-19 and 22.

A subset keeps the benchmark's shape: the first ``forget_authors`` authors of forget10 are
forgotten, the next ``holdout_authors`` of forget10 are never trained on (the membership-inference
and verdict control), and the first ``retain_authors`` of retain90 are retained; the retain audit
set is the retain_perturbed rows of those authors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from forgetkit.artifacts import sha256_file
from forgetkit.cache import cached_folder
from forgetkit.errors import ForgetkitError

QUESTIONS_PER_AUTHOR = 20
FILES = {
    "forget": "forget10.jsonl",
    "retain": "retain90.jsonl",
    "retain_perturbed": "retain_perturbed.jsonl",
    "real_authors": "real_authors_perturbed.jsonl",
    "world_facts": "world_facts_perturbed.jsonl",
}
# What a run writes: training sets for the two target models, and the audit's sets.
OUTPUTS = ("full_train", "reference_train", "forget", "retain", "retain_eval", "holdout", "real_authors",
           "world_facts")


@dataclasses.dataclass(frozen=True)
class SubsetSpec:
    """``forget_authors=None`` means the whole benchmark: forget10 against retain90."""

    forget_authors: int | None = 4
    retain_authors: int = 36
    holdout_authors: int = 4
    retain_eval_rows: int = 200  # cap on the retain audit set (it is audited once per method)
    utility_rows: int | None = None  # cap on the real-authors and world-facts sets (None: all of each)

    @property
    def name(self) -> str:
        if self.forget_authors is None:
            return "tofu-full"
        name = f"tofu-f{self.forget_authors}-r{self.retain_authors}-h{self.holdout_authors}"
        if self.utility_rows is not None:
            name += f"-u{self.utility_rows}"
        if self.retain_eval_rows != SubsetSpec.retain_eval_rows:
            name += f"-e{self.retain_eval_rows}"
        return name


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ForgetkitError(f"{path}: no such file (point --tofu at the folder with the TOFU JSONL splits)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ForgetkitError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def authors(rows: list[dict], first: int, count: int, source: Path) -> list[dict]:
    start, end = first * QUESTIONS_PER_AUTHOR, (first + count) * QUESTIONS_PER_AUTHOR
    if end > len(rows):
        raise ForgetkitError(f"{source}: has {len(rows) // QUESTIONS_PER_AUTHOR} authors, {first + count} asked for")
    return rows[start:end]


def select(tofu: Path, spec: SubsetSpec) -> dict[str, list[dict]]:
    data = {key: read_jsonl(tofu / name) for key, name in FILES.items()}
    if spec.forget_authors is None:
        forget, retain, holdout = data["forget"], data["retain"], []
    else:
        if spec.forget_authors < 1 or spec.retain_authors < 1 or spec.holdout_authors < 0:
            raise ForgetkitError("a TOFU subset needs at least one forget and one retain author")
        forget = authors(data["forget"], 0, spec.forget_authors, tofu / FILES["forget"])
        holdout = authors(data["forget"], spec.forget_authors, spec.holdout_authors, tofu / FILES["forget"])
        retain = authors(data["retain"], 0, spec.retain_authors, tofu / FILES["retain"])
    retained_questions = {row["question"] for row in retain}
    retain_eval = [row for row in data["retain_perturbed"] if row["question"] in retained_questions]
    if not retain_eval:
        raise ForgetkitError(f"{tofu}: no retain_perturbed rows belong to the retained authors")
    return {
        "full_train": forget + retain,
        "reference_train": retain,
        "forget": forget,
        "retain": retain,
        "retain_eval": retain_eval[: spec.retain_eval_rows],
        "holdout": holdout,
        "real_authors": data["real_authors"][: spec.utility_rows],
        "world_facts": data["world_facts"][: spec.utility_rows],
    }


def write_splits(tofu: Path, spec: SubsetSpec, folder: Path) -> dict[str, Path]:
    """Write the subset's JSONL files (once; an existing complete folder is reused)."""
    paths = {name: folder / f"{name}.jsonl" for name in OUTPUTS}

    def finished(folder: Path) -> bool:
        manifest = folder / "splits.json"
        return manifest.is_file() and _stored_spec(manifest) == dataclasses.asdict(spec)

    def build(staging: Path) -> None:
        rows = select(tofu, spec)
        for name, part in rows.items():
            if part:
                (staging / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        summary = {"spec": dataclasses.asdict(spec), "source": str(tofu),
                   "rows": {name: len(part) for name, part in rows.items()},
                   "sha256": {name: sha256_file(staging / f"{name}.jsonl") for name, part in rows.items() if part}}
        (staging / "splits.json").write_text(json.dumps(summary, indent=2) + "\n")

    cached_folder(folder, finished, build)
    return {name: p for name, p in paths.items() if p.is_file()}


def _stored_spec(manifest: Path) -> dict:
    """The spec a folder was written for; fields added since then read as their defaults."""
    stored = json.loads(manifest.read_text()).get("spec") or {}
    return {field.name: stored.get(field.name, field.default) for field in dataclasses.fields(SubsetSpec)}


def corpus_rows(tofu: Path) -> list[dict]:
    """Every TOFU question/answer, for a tokenizer trained on the benchmark's own text."""
    rows = read_jsonl(tofu / FILES["forget"]) + read_jsonl(tofu / FILES["retain"])
    for name in ("real_authors", "world_facts"):
        rows += [{"question": r["question"], "answer": r["answer"]} for r in read_jsonl(tofu / FILES[name])]
    return rows
