"""Running a stage on several processes (``accelerate launch`` or ``torchrun``): who does which
share of the work, how shares are summed, and who writes.

Work is split by index, round robin (item i goes to rank i mod N), so every item is done exactly
once and the split does not depend on timing. Sums are all-reduced in float32 or float64; every
file is written by rank 0 alone while the others wait, so no process exits before the output exists.
With one process every function here is a no-op, and nothing needs ``torch.distributed``.
"""

from __future__ import annotations

import dataclasses
import os
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
    if env_flag("ACCELERATE_USE_DEEPSPEED"):
        from forgetkit.zero import import_deepspeed

        import_deepspeed()  # a one-line message, not accelerate's ImportError, when it is missing
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


# --------------------------------------------------------------------------- sharded base (FSDP)


def sharded_base_requested() -> bool:
    """Whether the launch asks for the base to be split over the processes: an FSDP config
    (``accelerate launch`` exports ACCELERATE_USE_FSDP=true to every process), or a DeepSpeed config
    with ZeRO stage 3. fisher and audit take no optimiser step, so under either they split the base
    with FSDP2 (``shard_base``); unlearn under a DeepSpeed config trains in DeepSpeed's engine instead."""
    if env_flag("ACCELERATE_USE_FSDP"):
        return True
    if not env_flag("ACCELERATE_USE_DEEPSPEED"):
        return False
    from accelerate.utils import DeepSpeedPlugin

    return int(DeepSpeedPlugin().deepspeed_config.get("zero_optimization", {}).get("stage", 0)) == 3


def env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def shard_base(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> dict[str, int]:
    """Split the frozen base model over the processes with FSDP2 (torch's ``fully_shard``); returns
    the number of sharded blocks and the bytes of model weights this process now holds, against
    the whole model's.

    Each transformer block (the classes in FSDP_TRANSFORMER_CLS_TO_WRAP, else the model's own
    ``_no_split_modules``) and then the rest of the base become FSDP units (FSDP_RESHARD_AFTER_FORWARD
    is honoured; the other FSDP settings of the config are not read): a process keeps 1/N of
    their weights and gathers a block's weights only while that block runs. The LoRA weights are
    left out (``ignored_params``): they are small, stay whole on every process, and their gradients
    are summed by the training loop as in the unsharded case, so the optimiser, checkpoints and
    the saved adapter are unchanged. accelerate itself shards only on GPUs; calling torch here
    makes CPU (gloo) runs shard the same way, which is what the tests exercise.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    adapter_params = [p for name, p in model.named_parameters() if "lora_" in name]
    for param in adapter_params:  # fully_shard moves what it manages to the device; the rest is ours to move
        param.data = param.data.to(device)
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or ",".join(getattr(base, "_no_split_modules", None) or [])
    block_classes = {name.strip() for name in names.split(",") if name.strip()}
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    mesh = init_device_mesh(device.type, (ranks.world,))
    # fsdp_reshard_after_forward: false keeps each block's gathered weights from forward to backward.
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() != "false"
    blocks = [module for module in base.modules() if type(module).__name__ in block_classes]
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=set(adapter_params), reshard_after_forward=reshard)
    fully_shard(base, mesh=mesh, ignored_params=set(adapter_params), reshard_after_forward=reshard)
    held = sum(local_part(p).numel() * p.element_size() for p in model.parameters())
    return {"by": "fsdp2", "blocks": len(blocks), "held_bytes": held, "model_bytes": whole}


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a sharded (DTensor) weight or gradient; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def gather_sharded(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor from every process's slice ``local``, split as the sharded parameter ``like``
    is (a collective: every process calls it, in the same order). A plain ``like`` returns ``local``."""
    if not hasattr(like, "device_mesh"):
        return local
    from torch.distributed.tensor import DTensor

    device = like.to_local().device
    whole = DTensor.from_local(local.to(device), like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
    return whole.full_tensor()
