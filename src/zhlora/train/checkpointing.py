"""Gradient checkpointing that recomputes only what saves memory (`gradient_checkpointing`).

transformers' `activation_checkpointing_enable` wraps every decoder layer in torch's
checkpoint and hooks the input embeddings so their output requires a gradient (which
reentrant checkpointing needs to see any gradient at all). Training here differs in two
places, both exact (tests/test_train_checkpointing.py compares loss and gradients):

- the checkpoint is non-reentrant (`use_reentrant=False`), which finds the LoRA weights inside
  a layer without that hook, so the hook is removed: with it, backward also computes the
  gradient of the first layer's input, which nothing trains;
- the final decoder layer keeps its activations: its recomputation would start right after
  its own forward (only the head and the loss run between; the chunked loss holds at most one
  128 MiB block of logits), so checkpointing it saves no peak memory and costs one layer's
  forward (a quarter of the recomputation on a 4-layer model, 1/28 on a 28-layer one). With
  `label_only_loss=false` the full logits sit beside it, so there it is checkpointed.

`checkpoint_every: N` checkpoints only every N-th layer (transformers' `every_n_layers`): the
others keep their activations, for less recomputation at more memory.
"""
from __future__ import annotations

import warnings

from zhlora.errors import ZhloraError

CHECKPOINT_KWARGS = {"use_reentrant": False}


def enable_checkpointing(model, every: int = 1, final: bool = False) -> None:
    """Checkpoint every `every`-th decoder layer of `model` (a transformers model, not yet
    wrapped by PEFT), the final one only if `final` (with full logits, which coexist with the
    final layer's activations, it saves memory); no input-embedding gradient hook."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if every < 1:
        raise ZhloraError(f"checkpoint_every must be >= 1, got {every}")
    with warnings.catch_warnings():  # older 5.x names it gradient_checkpointing_enable (deprecated later)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing")
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS),
                                                  every_n_layers=every)
        elif every == 1:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
        else:
            raise ZhloraError(f"checkpoint_every={every} needs transformers' activation_checkpointing_enable "
                              "(every_n_layers), which this transformers lacks: upgrade transformers or use 1")
    model.disable_input_require_grads()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if layers and not final:  # the model's final layer: between its forward and its recompute only the head runs
        layers[-1].gradient_checkpointing = False
    model.config.use_cache = False


def layer_flags(layers: int, every: int = 1, final: bool = False) -> list[bool]:
    """Which of `layers` decoder layers enable_checkpointing checkpoints (transformers'
    every_n_layers takes layers 0, every, 2*every, ...; the final one only if `final`)."""
    flags = [i % every == 0 for i in range(layers)]
    if flags and not final:
        flags[-1] = False
    return flags


def peak_layers(flags: list[bool]) -> int:
    """How many layers' full activations are alive at once at most: at the end of the
    forward the layers not checkpointed; while layer i is recomputed in backward, it and the
    layers below it that are not checkpointed (those above are done and freed)."""
    kept_below = [sum(not f for f in flags[:i]) for i in range(len(flags))]
    return max([sum(not f for f in flags), *(kept_below[i] + 1 for i, f in enumerate(flags) if f)])


def checkpointed_layers(model) -> list[bool]:
    """Per decoder layer of `model` (PEFT-wrapped or not): is it checkpointed?"""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [bool(m.gradient_checkpointing) for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
