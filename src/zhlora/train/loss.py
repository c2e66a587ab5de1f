"""The LM head and the cross-entropy only where there are labels, in chunks (`label_only_loss`).

A causal LM's forward multiplies every position's hidden state by the output layer and the
loss then throws away the positions whose next token is not trained (prompts, padding,
packing filler). Training here instead:

1. runs the model's own forward through every wrapper (DDP, DeepSpeed, PEFT) with a forward
   pre-hook on the output layer that takes its input, the final hidden states `(B, T, H)`,
   and hands the layer a zero-length slice, so the model's logits come out `(B, 0, V)`;
2. gathers the hidden states whose next token has a label: `(N, H)`, N = label tokens;
3. applies the output layer and the cross-entropy to those N rows, `chunk` rows at a time,
   computing each chunk's gradient right away (`_ChunkedHeadCE`), so no more than one
   `(chunk, V)` block of logits exists at once and nothing is recomputed in backward.

The numbers are those of transformers' `ForCausalLMLoss` (logits upcast to fp32, sum over
label tokens divided by `num_items_in_batch` when the Trainer passes it, else their mean):
tests/test_train_loss.py checks loss and gradients against the full computation.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 25   # logits per chunk: 32M floats = 128 MiB fp32 (+ as much for their gradient)


def output_head(model) -> torch.nn.Module:
    """The output layer of a (DDP-/PEFT-wrapped) causal LM, as its forward calls it (for
    modules_to_save this is PEFT's wrapper, which runs the trained copy)."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module                       # DDP / DeepSpeed engine
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()             # PEFT
    return model.get_output_embeddings()


@contextlib.contextmanager
def capture_head_input(head: torch.nn.Module) -> Iterator[list]:
    """Inside the block the head sees zero positions; the list receives its real input."""
    seen: list[torch.Tensor] = []

    def pre_hook(module, args):
        seen.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield seen
    finally:
        handle.remove()


def label_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, H), labels (B, T) -> the hidden states that predict a label (N, H) and
    those labels (N,): position t predicts token t + 1."""
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX                  # (B, T-1)
    return hidden[:, :-1][keep], targets[keep]


def chunk_rows(head: torch.nn.Module) -> int:
    """Rows per chunk so one chunk's logits hold about CHUNK_ELEMENTS numbers."""
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 32768
    return max(16, CHUNK_ELEMENTS // max(vocab, 1))


def label_only_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                    num_items_in_batch=None, chunk: int | None = None) -> torch.Tensor:
    """Cross-entropy of `head(hidden)` against `labels` shifted by one, computed only at label
    positions, `chunk` rows at a time. hidden (B, T, H); labels (B, T), -100 = not trained.
    Divides the summed loss by `num_items_in_batch` if given, else by the label count."""
    rows, targets = label_rows(hidden, labels)
    chunk = chunk or chunk_rows(head)
    denom = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if torch.is_tensor(denom):
        denom = denom.to(hidden.device)
    if targets.numel() == 0:        # nothing trained in this batch: a zero that keeps the graph
        return hidden.sum() * 0.0
    params = [p for p in head.parameters() if p.requires_grad]
    if not torch.is_grad_enabled() or not (rows.requires_grad or params):
        with torch.no_grad():
            return _summed_ce(head, rows, targets, chunk) / denom
    return _ChunkedHeadCE.apply(rows, targets, head, chunk, *params) / denom


def _summed_ce(head, rows, targets, chunk) -> torch.Tensor:
    total = rows.new_zeros((), dtype=torch.float32)
    for i in range(0, rows.shape[0], chunk):
        logits = head(rows[i:i + chunk]).float()   # (chunk, V)
        total = total + F.cross_entropy(logits, targets[i:i + chunk], reduction="sum")
    return total


def _ce_sum_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of fp32 logits (chunk, V) and its gradient softmax - onehot,
    written over the logits (which the head's backward does not need). The softmax is taken
    in place (max, subtract, exp, sum, divide) and the loss is max + log(sum) - target logit:
    no (chunk, V) temporary and one exp pass (torch.logsumexp allocates x - max and the
    log-softmax path exponentiates twice; 2.3x slower on a 2700 x 8000 chunk, one CPU thread)."""
    rows = torch.arange(targets.shape[0], device=logits.device)
    target_logit = logits[rows, targets]
    peak = logits.amax(dim=-1, keepdim=True)                    # (chunk, 1)
    grad = logits.sub_(peak).exp_()
    total = grad.sum(dim=-1, keepdim=True)
    grad.div_(total)
    loss = (peak.squeeze(1) + total.squeeze(1).log() - target_logit).sum()
    grad[rows, targets] -= 1.0
    return loss, grad


class _ChunkedHeadCE(torch.autograd.Function):
    """Summed CE of head(rows) with each chunk's gradient taken in the forward: the
    (chunk, V) logits and their gradient are freed before the next chunk, and backward only
    scales the stored gradients of the rows (N, H) and of the head's trainable parameters."""

    @staticmethod
    def forward(ctx, rows, targets, head, chunk, *params):
        want_rows = rows.requires_grad
        grad_rows = torch.zeros_like(rows) if want_rows else None
        grad_params = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        for i in range(0, rows.shape[0], chunk):
            with torch.enable_grad():
                part = rows[i:i + chunk].detach().requires_grad_(want_rows)
                logits = head(part).float()                        # (chunk, V)
            loss, grad_logits = _ce_sum_and_grad(logits.detach(), targets[i:i + chunk])
            inputs = ([part] if want_rows else []) + list(params)
            grads = torch.autograd.grad(logits, inputs, grad_outputs=grad_logits)
            del logits, grad_logits
            if want_rows:
                grad_rows[i:i + chunk] = grads[0]
            for acc, g in zip(grad_params, grads[int(want_rows):]):
                acc.add_(g)
            total += loss
        ctx.save_for_backward(*([grad_rows] if want_rows else []), *grad_params)
        ctx.want_rows = want_rows
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        grad_rows = saved.pop(0) * grad_out if ctx.want_rows else None
        return (grad_rows, None, None, None, *(g * grad_out for g in saved))
