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

import contextlib
import json
import logging
import warnings
from pathlib import Path


def zero_stage(deepspeed_config: str | None) -> int:
    """The ZeRO stage a DeepSpeed JSON config asks for (0 without one)."""
    if not deepspeed_config:
        return 0
    try:
        conf = json.loads(Path(deepspeed_config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0  # training_arguments reports a missing file; DeepSpeed reports bad JSON
    return int((conf.get("zero_optimization") or {}).get("stage", 0) or 0)


@contextlib.contextmanager
def quiet_deepspeed():
    """DeepSpeed logs at import which accelerator it picked ("Setting ds_accelerator to cpu
    (auto detect)") and ops it could not build; a user cannot act on either. Raise its
    logger to ERROR while it is imported, then leave it as it was."""
    logger = logging.getLogger("DeepSpeed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_deepspeed():
    """`import deepspeed` without its start-up chatter."""
    with quiet_deepspeed():
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
    if getattr(trainer, "is_fsdp_enabled", False):
        full = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if _strip_fsdp(k) in trainable} if full else {}
    return None


def _is_zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _strip_fsdp(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
