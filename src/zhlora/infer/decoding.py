"""Decoding steps whose numbers do not depend on what else is in the batch.

The scheduler runs many sequences (any adapter, any length) through one forward pass per
token. Greedy output must equal each request's solo output token for token, so every row's
arithmetic must be the same whatever shares its batch:

- Attention runs per sequence on its own KV cache (`SeqCache`: no padding, no mask), through
  an attention function registered with transformers (`zhlora_rows`; it falls back to sdpa
  when no scheduler step is running, so other callers of the model see plain sdpa).
- Linear layers (and PEFT's per-adapter LoRA sub-batches, `adapter_names`) run batched. A CPU
  GEMM gives a row bit-identical results only if the row sits in a full block of the
  kernel's micro-tile: measured on fp32 CPU, rows of an M=1, 2 or 3 (or a ragged tail) GEMM
  differ in the last bits from rows of an M=4k GEMM. So every adapter's group of rows is
  padded to a multiple of `ROW_QUANTUM` with dummy rows (no cache, zero attention output,
  thrown away), and the base rows likewise; solo decoding is padded the same way.
- Prefill runs one sequence at a time (same shapes alone or not); only its last position's
  logits are computed.

Models whose attention does not go through transformers' attention interface (our ChatGLM
port) use `SoloBackend`: each sequence steps alone with its own transformers cache.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

ROW_QUANTUM = 4
ATTN_NAME = "zhlora_rows"
BASE_ROW = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
_active = threading.local()  # .rows: list of (batch row, SeqCache) while a step runs


class SeqCache:
    """One sequence's keys and values, per layer a (1, Hkv, capacity, D) buffer."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.filled: dict[int, int] = {}

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `k`, `v` (1, Hkv, q, D) after the layer's cached ones -> all of them."""
        n, q = self.filled.get(layer, 0), k.shape[2]
        buf = self.k.get(layer)
        if buf is None or n + q > buf.shape[2]:
            cap = max(2 * (n + q), 16)
            for store, new in ((self.k, k), (self.v, v)):
                grown = new.new_empty(1, new.shape[1], cap, new.shape[3])
                if n:
                    grown[:, :, :n] = store[layer][:, :, :n]
                store[layer] = grown
        self.k[layer][:, :, n:n + q] = k
        self.v[layer][:, :, n:n + q] = v
        self.filled[layer] = n + q
        return self.k[layer][:, :, :n + q], self.v[layer][:, :, :n + q]


def row_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention per sequence on its own cache. query (B, H, q, D), key/value (B, Hkv, q, D)
    for the new tokens -> (B, q, H, D) like transformers' sdpa function."""
    rows = getattr(_active, "rows", None)
    if rows is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    gqa = query.shape[1] != key.shape[1]
    for row, cache in rows:
        k, v = cache.append(module.layer_idx, key[row:row + 1], value[row:row + 1])
        o = F.scaled_dot_product_attention(query[row:row + 1], k, v, is_causal=query.shape[2] > 1,
                                           scale=scaling, enable_gqa=gqa)   # (1, H, q, D)
        out[row] = o[0].transpose(0, 1)
    return out, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, row_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


class RowsBackend:
    """Batched linear layers, per-sequence attention (transformers' own model classes)."""

    def __init__(self, engine):
        self.engine = engine

    @staticmethod
    def supports(model) -> bool:
        """True when the model's attention goes through transformers' interface (probed)."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "_attn_implementation", None) != "sdpa":
            return False
        _register()
        cfg._attn_implementation = ATTN_NAME
        with torch.inference_mode():
            calls = _probe(model)
        if not calls:
            cfg._attn_implementation = "sdpa"
        return bool(calls)

    def prefill(self, seq) -> torch.Tensor:
        """The prompt of one sequence -> logits (V,) of its next token."""
        ids = torch.tensor([seq.prompt], device=self.engine.device)
        pos = torch.arange(len(seq.prompt), device=ids.device)[None]
        return self._forward(ids, pos, [seq.adapter], [(0, seq.cache)])[0]

    def decode(self, seqs: list) -> torch.Tensor:
        """One token for every sequence -> logits (len(seqs), V), rows in `seqs` order."""
        layout = padded_layout([s.adapter for s in seqs])
        rows = [(r, seqs[i].cache) for r, (i, _) in enumerate(layout) if i is not None]
        where = {i: r for r, (i, _) in enumerate(layout) if i is not None}
        tok = [[seqs[i].last_token if i is not None else 0] for i, _ in layout]    # dummies: token 0
        pos = [[seqs[i].length - 1 if i is not None else 0] for i, _ in layout]
        dev = self.engine.device
        logits = self._forward(torch.tensor(tok, device=dev), torch.tensor(pos, device=dev),
                               [name for _, name in layout], rows)
        return logits[[where[i] for i in range(len(seqs))]]

    def _forward(self, ids, pos, names, rows) -> torch.Tensor:
        model = self.engine.model
        kw = {}
        if hasattr(model, "peft_config"):
            kw["adapter_names"] = [BASE_ROW if n is None else n for n in names]
        _active.rows = rows
        try:
            out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1, **kw)
        finally:
            _active.rows = None
        return out.logits[:, -1].float()  # (B, V)


def _probe(model) -> int:
    """Run one tiny forward with a step of no rows active; count `row_attention` calls."""
    calls = []

    class _Counting(list):  # the rows of the step: none, but reading them counts a call
        def __iter__(self):
            calls.append(1)
            return iter(())

    _active.rows = _Counting()
    try:
        ids = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
        model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False, logits_to_keep=1)
    except Exception:  # a model that cannot run this way is not supported
        return 0
    finally:
        _active.rows = None
    return len(calls)


def padded_layout(adapters: list) -> list[tuple[int | None, str | None]]:
    """Batch rows grouped by adapter, each group padded to a multiple of ROW_QUANTUM with
    dummy rows: -> [(index into `adapters` or None for a dummy, adapter)]."""
    groups: dict = {}
    for i, a in enumerate(adapters):
        groups.setdefault(a, []).append(i)
    out: list[tuple[int | None, str | None]] = []
    for a, idx in groups.items():
        out += [(i, a) for i in idx] + [(None, a)] * (-len(idx) % ROW_QUANTUM)
    return out


class SoloBackend:
    """Every sequence steps alone with its own transformers cache (models outside the
    attention interface). Exact by construction; no batching gain."""

    def __init__(self, engine):
        self.engine = engine

    def prefill(self, seq) -> torch.Tensor:
        return self._step(seq, seq.prompt)

    def decode(self, seqs: list) -> torch.Tensor:
        return torch.stack([self._step(s, [s.last_token]) for s in seqs])

    def _step(self, seq, new: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        model = self.engine.model
        if seq.hf_cache is None:
            seq.hf_cache = DynamicCache(config=model.config)
        kw = {}
        prefix = seq.adapter in self.engine.prefixes   # P-Tuning v2: base weights + its prefix
        if hasattr(model, "peft_config"):
            kw["adapter_names"] = [BASE_ROW if seq.adapter is None or prefix else seq.adapter]
        ids = torch.tensor([seq.prompt + seq.generated], device=self.engine.device)
        inputs = model.prepare_inputs_for_generation(  # as in generate(): the model's own rules
            ids, cache=seq.hf_cache, attention_mask=torch.ones_like(ids), use_cache=True,
            next_sequence_length=len(new))
        inputs.update(kw)
        with self.engine.prefix_active(seq.adapter if prefix else None):
            out = model(**inputs)
        return out.logits[0, -1].float()
