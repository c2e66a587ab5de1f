"""Multi-process training helpers: DeepSpeed ZeRO-3 and FSDP specifics in one place.

Two things a sharded run needs that a single process does not:

- ZeRO-3 must partition the weights while they load, so the `TrainingArguments` holding the
  DeepSpeed config are built BEFORE `from_pretrained` (transformers then loads under
  `deepspeed.zero.Init`); `train()` in sft.py keeps that order.
- ZeRO-3 and FSDP leave each process holding a shard (ZeRO-3: a 0-element placeholder) of every
  parameter, so saving `model.state_dict()` on rank 0 writes an empty or partial adapter.
  `adapter_state` gathers the trainable (LoRA) parameters on every rank first; only they are
  gathered, never the frozen base (14 GB for a 7B model).
"""
from __future__ import annotations

import logging
import warnings


class _NoAcceleratorChatter(logging.Filter):
    """Drops DeepSpeed's notes on which accelerator it picked ("Setting accelerator to CPU. If
    you have GPU ..."), logged at import by any library that imports DeepSpeed: on a CPU
    machine or with DS_ACCELERATOR set there is nothing for the user to do about them."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(("Setting accelerator to", "Setting ds_accelerator to"))


def quiet_deepspeed() -> None:
    """Install the filter on the "DeepSpeed" logger (before DeepSpeed is imported: the filter
    survives the logger set-up DeepSpeed's import does; its level would not)."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _NoAcceleratorChatter) for f in logger.filters):
        logger.addFilter(_NoAcceleratorChatter())


def import_deepspeed():
    """`import deepspeed` without its start-up chatter."""
    quiet_deepspeed()
    import deepspeed

    # DeepSpeed's collectives call torch.distributed functions torch has renamed
    warnings.filterwarnings("ignore", category=FutureWarning,
                            message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)`")
    return deepspeed


def init_deepspeed_comm() -> None:
    """Let DeepSpeed use the process group the Trainer's arguments set up (gloo on CPU).
    `deepspeed.initialize` would do this itself, but ZeRO-3's partitioned loading runs before
    it and would otherwise count one process (and reject the global batch size)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    deepspeed = import_deepspeed()
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def adapter_state(trainer) -> dict | None:
    """The full trainable parameters of `trainer.model`, gathered from every shard, as CPU
    tensors keyed like `model.state_dict()`. Must run on EVERY rank (gathering is collective).
    None when nothing is sharded (plain, DDP, ZeRO-1/2): the model's own state dict is whole."""
    model = trainer.model
    if getattr(trainer, "is_deepspeed_enabled", False) and _is_zero3(trainer):
        deepspeed = import_deepspeed()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().cpu().clone() for n, p in named}
    if getattr(trainer, "is_fsdp_enabled", False):  # FSDP2: each parameter is a sharded DTensor
        from torch.distributed.tensor import DTensor

        return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
                for n, p in model.named_parameters() if p.requires_grad}
    return None


def _is_zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3
