"""Helpers every stage uses: reading a data set for a loaded model, seeding, tables."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from rich.table import Table

from forgetkit.data import Example, Record, encode, load_records
from forgetkit.models import LoadedModel


def load_examples(
    source: str,
    loaded: LoadedModel,
    *,
    truncate: bool = False,
    prepare: Callable[[Sequence[Record]], list[Record]] | None = None,
) -> tuple[list[Record], list[Example]]:
    records = load_records(source)
    if prepare is not None:
        records = prepare(records)
    examples = encode(records, loaded.tokenizer, context_length=loaded.context_length, truncate=truncate)
    return records, examples


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    out = Table(title=title)
    for index, column in enumerate(columns):
        out.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        out.add_row(*[fmt(v) for v in row])
    return out


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
