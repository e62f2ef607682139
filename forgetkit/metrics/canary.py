"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

A record with a ``secret`` field holds that string in its answer (or text). The secret is ranked by
the model's log-likelihood of the whole record among candidates of the same format, and
exposure = log2(#candidates) - log2(rank): log2(#candidates) bits when the true secret is the most
likely, about 1 bit for a secret the model never saw. Exposure *from the bottom* is the same count
from the other end (rank among the candidates ordered least likely first): an unlearning method that
pushes a secret far below every candidate makes it as recognisable as one it still remembers, and a
never-seen secret sits about 1 bit from either end.

Candidates keep the secret's shape: every digit is replaced by a random digit; when the secret has
no digits, every letter by a random letter of the same case. A record may instead list its own
``secret_candidates``. Candidates are drawn with a seed taken from the secret's hash, so audits of
different models rank against the same candidates.
"""

from __future__ import annotations

import hashlib
import math
import random
import string

from forgetkit.data import Record
from forgetkit.errors import ForgetkitError

# Training's twins of a secret are drawn with this salt, the audit's candidates without: never the same draw.
TWIN_SALT = "forgetkit-training-twins:"


def secret_location(record: Record) -> str:
    """The field that holds the secret, with a clear error when none does."""
    secret = record["secret"]
    if not isinstance(secret, str) or not secret:
        raise ForgetkitError(f"{record.source}: field 'secret' must be a non-empty string")
    for key in ("answer", "text"):
        if isinstance(record.get(key), str) and secret in record[key]:
            return key
    raise ForgetkitError(f"{record.source}: the secret does not occur in the record's answer or text")


def candidates(secret: str, count: int, salt: str = "") -> list[str]:
    """Up to ``count`` distinct same-format strings, the true secret not among them. ``salt`` draws
    another set (training's twins use one, so they are not the audit's candidates)."""
    rng = random.Random(int.from_bytes(hashlib.sha256((salt + secret).encode()).digest()[:8], "big"))
    has_digits = any(c.isdigit() for c in secret)

    def draw() -> str:
        out = []
        for c in secret:
            if c.isdigit():
                out.append(rng.choice(string.digits))
            elif not has_digits and c.isalpha():
                out.append(rng.choice(string.ascii_uppercase if c.isupper() else string.ascii_lowercase))
            else:
                out.append(c)
        return "".join(out)

    found: dict[str, None] = {}
    for _ in range(count * 20):  # small formats (one digit) run out of distinct candidates
        if len(found) >= count:
            break
        option = draw()
        if option != secret:
            found.setdefault(option)
    return list(found)


def candidate_records(record: Record, count: int) -> list[Record]:
    """The record itself first, then one copy per candidate with the secret swapped in."""
    options = record.get("secret_candidates") or candidates(record["secret"], count)
    return [record] + swapped(record, options)


def twin_records(record: Record, count: int) -> list[Record]:
    """``count`` copies of the record with its secret swapped for same-format strings drawn apart from
    the audit's candidates (another salt; a format with few strings may share some)."""
    return swapped(record, candidates(record["secret"], count, salt=TWIN_SALT))


def swapped(record: Record, options: list[str]) -> list[Record]:
    key = secret_location(record)
    secret = record["secret"]
    return [Record(fields={**record.fields, key: record[key].replace(secret, option)}, source=record.source)
            for option in options if option != secret]


def exposure(true_nll: float, candidate_nlls: list[float]) -> float:
    """log2(n) - log2(rank), rank 1 + the candidates strictly more likely than the secret."""
    rank = 1 + sum(nll < true_nll for nll in candidate_nlls)
    return math.log2(len(candidate_nlls) + 1) - math.log2(rank)


def exposure_from_bottom(true_nll: float, candidate_nlls: list[float]) -> float:
    """log2(n) - log2(rank from the bottom), rank 1 + the candidates strictly *less* likely."""
    rank = 1 + sum(nll > true_nll for nll in candidate_nlls)
    return math.log2(len(candidate_nlls) + 1) - math.log2(rank)
