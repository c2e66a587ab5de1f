"""transformers' Trainer with the loss computed at label positions only (zhlora.train.loss),
and long padding-free batches run in pieces (`pass_tokens`).

`compute_loss` changes only for batches with labels and no label smoothing or custom loss
function: the normalisation follows the Trainer's own (divide by `num_items_in_batch` when
the model accepts loss kwargs, as it does for every family here, so gradient accumulation
and the reported loss are unchanged; eval batches get the mean).

`training_step` cuts a padding-free batch (one row, positions restarting at 0 at every
sample) of at least twice `pass_tokens` tokens into pieces of `pass_tokens` to twice that, at
sample starts, and runs forward and backward on each in turn, gradients accumulating, every
piece's loss divided by the whole batch's label count: the same loss and gradients as one
pass (nothing attends across a sample start, and the collator never asks a sample's last
token to predict the next sample's first), with the activations of one piece alive at a time. On a CPU it is also faster: a
4k-token packed batch ran faster as three passes than as one (BENCHMARKS.md, "Padding-free
batches in passes").
"""
from __future__ import annotations

import contextlib

import torch
from transformers import Trainer

from zhlora.train.loss import capture_head_input, label_only_loss, output_head

CPU_PASS_TOKENS = 1024   # pass_tokens unset: this limit on a CPU, none on a GPU


def resolve_pass_tokens(setting: int | None, on_gpu: bool) -> int:
    """The recipe's `pass_tokens` (None: the device's default) -> a limit, 0 for none."""
    if setting is None:
        return 0 if on_gpu else CPU_PASS_TOKENS
    return setting


def sample_pieces(inputs: dict, limit: int) -> list[dict]:
    """A padding-free batch of T >= 2 x `limit` tokens -> T // limit pieces of about equal size
    (each at least about `limit` tokens, less than twice that: short passes cost more than they
    save), each cut at the sample start nearest its share (a sample longer than a share stays
    whole); [inputs] for any other batch (several rows, a mask, no positions) or a shorter one."""
    ids, pos = inputs.get("input_ids"), inputs.get("position_ids")
    if (limit <= 0 or ids is None or pos is None or "attention_mask" in inputs
            or ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < 2 * limit):
        return [inputs]
    total = ids.shape[1]
    starts = [s for s in (pos[0] == 0).nonzero().flatten().tolist() if s > 0]
    cuts = [0]
    n = total // limit
    for i in range(1, n):
        later = [s for s in starts if s > cuts[-1]]
        if later:
            cuts.append(min(later, key=lambda s: abs(s - i * total / n)))
    cuts = sorted(set(cuts)) + [total]
    return [{k: v[:, a:b] if torch.is_tensor(v) and v.shape[:2] == ids.shape else v for k, v in inputs.items()}
            for a, b in zip(cuts, cuts[1:])]


class LabelOnlyLossTrainer(Trainer):
    """Trainer whose training and eval loss skip the LM head at unlabeled positions."""

    pass_tokens = 0   # set by zhlora.train.sft.make_trainer

    def training_step(self, model, inputs, num_items_in_batch=None):
        pieces = sample_pieces(inputs, self.pass_tokens) if self._can_split(num_items_in_batch) else [inputs]
        if len(pieces) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        losses = []
        for i, piece in enumerate(pieces):   # DDP: gradients are reduced once, after the last piece
            sync = contextlib.nullcontext() if i == len(pieces) - 1 else self.accelerator.no_sync(model)
            with sync:
                losses.append(super().training_step(model, piece, num_items_in_batch))
        return torch.stack(losses).sum()

    def _can_split(self, num_items_in_batch) -> bool:
        """Pieces need each loss divided by the batch's label count (not its own mean), and a
        backward per piece that DeepSpeed/FSDP would count as micro-steps of their own."""
        from accelerate.utils import DistributedType

        return (self.pass_tokens > 0 and num_items_in_batch is not None and self.model_accepts_loss_kwargs
                and self.compute_loss_func is None and self.label_smoother is None
                and self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                          DistributedType.MULTI_GPU))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs or self.label_smoother is not None or self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        head = output_head(self.accelerator.unwrap_model(model))
        with capture_head_input(head) as seen:
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        n_items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = label_only_loss(seen[-1], labels, head, n_items)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs \
                and num_items_in_batch is not None:
            # as Trainer.compute_loss: num_items_in_batch counts the labels of all processes
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss
