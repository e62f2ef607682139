"""Running a stage on several processes (``accelerate launch`` or ``torchrun``): who does which
share of the work, how shares are summed, and who writes.

Work is split by index, round robin (item i goes to rank i mod N), so every item is done exactly
once and the split does not depend on timing. Sums are all-reduced in float32 or float64; every
file is written by rank 0 alone while the others wait, so no process exits before the output exists.
With one process every function here is a no-op, and nothing needs ``torch.distributed``.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator that also sees a multi-process CPU launch (torchrun, or accelerate with MULTI_CPU):
    accelerate only sets up gloo when told the run is on CPU."""
    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def ranks_of(accelerator: Accelerator) -> Ranks:
    return Ranks(accelerator.process_index, accelerator.num_processes)


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's items: every N-th, starting at its rank."""
    return list(items[ranks.rank::ranks.world])


def owns(index: int, ranks: Ranks) -> bool:
    return index % ranks.world == ranks.rank


def _active(ranks: Ranks) -> bool:
    return ranks.world > 1 and dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensors: Sequence[torch.Tensor], ranks: Ranks) -> None:
    """Sum each tensor over all ranks, in place."""
    if not _active(ranks):
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def sum_numbers(values: Sequence[float], ranks: Ranks, device: torch.device) -> list[float]:
    """Sum a few Python numbers over all ranks (in float64, so counts and losses stay exact)."""
    if not _active(ranks):
        return list(values)
    buffer = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.tolist()


def gather_objects(value: T, ranks: Ranks) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not _active(ranks):
        return [value]
    out: list = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def barrier(ranks: Ranks) -> None:
    if _active(ranks):
        dist.barrier()


@contextmanager
def main_writes(ranks: Ranks) -> Iterator[bool]:
    """``with main_writes(r) as writer: if writer: write()``: rank 0 writes, the others wait for it."""
    try:
        yield ranks.is_main
    finally:
        barrier(ranks)


def rank_generator(seed: int, ranks: Ranks, stream: int = 0) -> torch.Generator:
    """A random stream of this rank's own, the same on every run: seeded from the run seed, the rank
    and the stream number, so ranks never draw the same samples and reruns draw them again."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + ranks.rank)
