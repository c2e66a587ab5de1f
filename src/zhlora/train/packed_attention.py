"""Attention over packed rows, one sample at a time (`packed_attention=segments`, the default).

A packed row holds several samples back to back; positions restart at 0 at every sample.
The portable way to keep them apart is a 4D block-diagonal mask (`packed_attention=mask`),
but on CPU that sends sdpa down its math path over the whole T x T row: most of the scores
it computes belong to pairs of different samples and are masked away. This attention
function instead finds the samples from the restarted `position_ids` and runs transformers'
own sdpa attention on each sample with `is_causal=True`, so the work is sum(L_i^2), not T^2,
and no mask is built. The numbers equal the masked attention's (tested in
tests/test_train_packing.py).

It is registered with transformers' AttentionInterface under `ATTN_NAME` and set on the model
only for packed training, for models that follow that interface (transformers' LLaMA, Qwen2,
GLM-4: `_supports_attention_backend`); the model's own implementation is restored after
training, because this one ignores padding masks (packed rows are right-padded, and padding
sits in its own trailing segment, so nothing real attends to it).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

ATTN_NAME = "zhlora_packed_sdpa"


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[B, T] positions restarting at 0 per sample -> per row the (start, end) of each sample.

    Every layer of a forward gets the same position_ids tensor, so the answer is kept for it:
    one host transfer per forward, not one per layer (which on a GPU would be a sync each)."""
    if _last[0] is position_ids and _last[2] == position_ids._version:
        return _last[1]
    B, T = position_ids.shape
    starts: list[list[int]] = [[] for _ in range(B)]
    for b, t in (position_ids == 0).nonzero().tolist():
        starts[b].append(t)
    out = []
    for row in starts:
        if not row or row[0] != 0:
            row.insert(0, 0)
        out.append(list(zip(row, row[1:] + [T])))
    _last[:] = [position_ids, out, position_ids._version]
    return out


_last: list = [None, None, -1]     # position_ids of the forward in progress, its bounds, version


def packed_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, Hkv, T, D] -> ([B, T, H, D], None), causal within each sample."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[2] != key.shape[2] or query.shape[2] == 1:
        # not a packed training batch (no positions, a KV cache, one-token steps): plain attention
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    rows = []
    # split, not slicing: the backward of a split is one cat, a slice's backward fills a zero
    # tensor of the whole input for every piece (per row here, per sample below)
    by_row = [t.split(1, dim=0) for t in (query, key, value)]
    for b, bounds in enumerate(segment_bounds(position_ids)):
        sizes = [e - s for s, e in bounds]
        qs, ks, vs = (t[b].split(sizes, dim=2) for t in by_row)
        parts = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling,
                                        is_causal=True, **kwargs)[0] for q, k, v in zip(qs, ks, vs)]
        rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    return torch.cat(rows, dim=0), None


def _unwrap(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_segments(model) -> bool:
    """True for models whose attention goes through transformers' AttentionInterface."""
    base = _unwrap(model)
    return bool(getattr(base, "_supports_attention_backend", False)) and hasattr(base, "set_attn_implementation")


@contextlib.contextmanager
def segment_attention(model) -> Iterator[None]:
    """Use packed_sdpa_forward inside the block; restore the model's implementation after."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, packed_sdpa_forward)
    base = _unwrap(model)
    before = base.config._attn_implementation
    base.set_attn_implementation(ATTN_NAME)
    try:
        yield
    finally:
        base.set_attn_implementation(before)
