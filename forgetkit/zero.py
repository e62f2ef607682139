"""Training the adapter inside a DeepSpeed engine (ZeRO), when ``accelerate launch`` runs a DeepSpeed config.

accelerate exports the config to every process (ACCELERATE_USE_DEEPSPEED and its ACCELERATE_DEEPSPEED_*
variables); its ``DeepSpeedPlugin`` reads them back into a DeepSpeed config, whose "auto" values are
filled here from forgetkit's own settings, and ``deepspeed.initialize`` builds the engine. With ZeRO-3
the engine partitions every weight (the frozen base included) over the processes and gathers a layer's
weights only while it runs. accelerate's ``prepare`` is not used: it sets DeepSpeed up only on GPUs,
and calling DeepSpeed directly keeps the CPU (gloo) runs the tests make on the same path as GPU runs.

forgetkit's loop keeps its own accumulation (micro-batches of a global batch spread over the
processes, weighted by size) and tells the engine where each step ends; DeepSpeed reduces and
partitions the gradients, clips them, and takes the optimiser step.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager, Iterator

import torch

from forgetkit.artifacts import atomic_file
from forgetkit.distributed import Ranks, env_flag, barrier
from forgetkit.errors import ForgetkitError

CHECKPOINT_STATE = "state.json"


def deepspeed_requested() -> bool:
    """Whether ``accelerate launch`` ran a config whose distributed_type is DEEPSPEED."""
    return env_flag("ACCELERATE_USE_DEEPSPEED")


def import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise ForgetkitError("this launch uses a DeepSpeed config but deepspeed is not installed: "
                             "pip install 'forgetkit[deepspeed]'") from None
    return deepspeed


def engine_config(micro_batch_size: int, max_grad_norm: float, world: int, hidden_size: int | None) -> dict:
    """The launch's DeepSpeed config with forgetkit's batch and clipping settings in place of "auto".

    One engine micro-batch is one of forgetkit's micro-batches and each step's end is set by the
    loop, so the engine's own accumulation count is 1. --max-grad-norm wins over the config's
    gradient_clipping: the command line is what the run's metadata records. A config file's "auto"
    ZeRO bucket sizes are filled from the model's hidden size as accelerate fills them.
    """
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    config = json.loads(json.dumps(plugin.deepspeed_config, default=str))  # a copy the plugin does not share
    source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the accelerate config's deepspeed_config"
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ForgetkitError(f"{source}: remove its '{section}' section: forgetkit sets the optimiser "
                                 "itself (AdamW with --lr and --weight-decay, constant rate)")
    zero = config.get("zero_optimization", {})
    if hidden_size:
        sizes = {"reduce_bucket_size": hidden_size * hidden_size,
                 "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                 "stage3_param_persistence_threshold": 10 * hidden_size}
        zero.update({key: value for key, value in sizes.items() if zero.get(key) == "auto"})
    config.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=micro_batch_size * world,
        gradient_clipping=max_grad_norm,
        zero_allow_untested_optimizer=True,  # forgetkit's AdamW over the adapter weights
        steps_per_print=2**31 - 1,
    )
    for precision in ("bf16", "fp16"):
        if config.get(precision, {}).get("enabled") == "auto":
            config[precision]["enabled"] = False
    if unfilled := sorted(_auto_keys(config)):
        raise ForgetkitError(f"{source}: forgetkit cannot fill these \"auto\" values; set them: {', '.join(unfilled)}")
    return config


def _auto_keys(config: dict, prefix: str = "") -> Iterator[str]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            yield prefix + key


class ZeroEngine:
    """The DeepSpeed engine around a PEFT model, with the few calls forgetkit's training loop makes."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batch_size: int,
                 max_grad_norm: float, ranks: Ranks):
        deepspeed = import_deepspeed()
        whole = sum(p.numel() * p.element_size() for p in model.parameters())
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
        config = engine_config(micro_batch_size, max_grad_norm, ranks.world, hidden_size)
        if not torch.cuda.is_available():
            _skip_shared_memory_kernel(deepspeed)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.world = ranks.world
        self.ranks = ranks
        self.stage = int(config.get("zero_optimization", {}).get("stage", 0))
        held = sum(_held(p).numel() * p.element_size() for p in model.parameters())
        self.layout = {"by": f"deepspeed-zero{self.stage}", "held_bytes": held, "model_bytes": whole}

    @property
    def forward_model(self) -> torch.nn.Module:
        """What the losses call: forward passes through the engine keep its accumulation count."""
        return self.engine

    def backward(self, loss: torch.Tensor, last_of_step: bool) -> None:
        # DeepSpeed averages gradients over the processes; forgetkit's micro-batch weights already sum
        # to 1 over the global batch, so the loss is scaled back up by the process count.
        self.engine.set_gradient_accumulation_boundary(last_of_step)
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> float:
        """Clip, step, zero the gradients; the global gradient norm before clipping."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save_checkpoint(self, root: Path, epoch: int, log: list[dict]) -> None:
        """Every process writes its partition of the adapter and optimiser (the frozen base is left out);
        rank 0 then writes the state that marks the checkpoint complete."""
        tag = f"epoch-{epoch:04d}"
        self.engine.save_checkpoint(str(root), tag=tag, exclude_frozen_parameters=True)
        barrier(self.ranks)
        if self.ranks.is_main:
            with atomic_file(root / tag / CHECKPOINT_STATE) as staging:
                staging.write_text(json.dumps({"epoch": epoch, "log": log, "processes": self.world}))
        barrier(self.ranks)

    def restore(self, root: Path) -> tuple[int, list[dict]]:
        finished = sorted(p for p in root.glob("epoch-*") if (p / CHECKPOINT_STATE).is_file())
        if not finished:
            return 0, []
        latest = finished[-1]
        state = json.loads((latest / CHECKPOINT_STATE).read_text())
        if "processes" not in state:
            raise ForgetkitError(f"{latest}: made without DeepSpeed; resume it under the launch that made it")
        if state["processes"] != self.world:
            # Each process wrote its own partition: another process count would read the wrong slices.
            raise ForgetkitError(f"{latest}: written by {state['processes']} processes; resume it with "
                                 f"as many (this launch has {self.world})")
        loaded, _ = self.engine.load_checkpoint(str(root), tag=latest.name, load_module_strict=False,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise ForgetkitError(f"{latest}: not a DeepSpeed checkpoint of this run (made with another launch config?)")
        return int(state["epoch"]), list(state["log"])


def _skip_shared_memory_kernel(deepspeed) -> None:
    """On CPU DeepSpeed compiles a shared-memory all-reduce kernel when its communication starts,
    which needs a C++ toolchain and Python headers on the machine and takes a while; gloo (which
    accelerate has already set up) does the same job. Marking the kernel unavailable makes
    DeepSpeed use gloo alone."""
    compatible = deepspeed.ops.__compatible_ops__
    compatible["deepspeed_shm_comm"] = False


def _held(param: torch.Tensor) -> torch.Tensor:
    """This process's partition of a ZeRO-3 weight; any other weight as it is."""
    return getattr(param, "ds_tensor", param)


def gathered(params: list[torch.nn.Parameter]) -> ContextManager:
    """Whole values of ZeRO-3-partitioned weights inside the block (a collective: every process enters it)."""
    if not any(hasattr(p, "ds_tensor") for p in params):
        return nullcontext()
    return _gathered(params)


@contextmanager
def _gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    deepspeed = import_deepspeed()
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
