"""Decoding steps whose numbers do not depend on what else is in the batch.

The scheduler runs many sequences (any adapter, any length) through one forward pass per
token. Greedy output must equal each request's solo output token for token, so every row's
arithmetic must be the same whatever shares its batch:

- Attention runs per sequence on its own KV cache (`SeqCache`: no padding, no mask), through
  an attention function registered with transformers (`zhlora_rows`; it falls back to sdpa
  when no scheduler step is running, so other callers of the model see plain sdpa).
- Every forward pass, prefill or decode, runs the new tokens of all its sequences as one
  flat column: input (N, 1) with N the tokens of the step, so that linear layers see one
  (N, hidden) GEMM and PEFT's per-sample routing (`adapter_names`) is per token. Each
  sequence's tokens are one contiguous span; attention runs per span on the sequence's own
  cache. So prompts of different lengths and adapters are prefilled in ONE forward, with no
  padding between them and no mask.
- Linear layers (and PEFT's per-adapter LoRA sub-batches) run batched. A CPU GEMM gives a row
  bit-identical results only if the row sits in a full block of the kernel's micro-tile:
  measured on fp32 CPU, rows of an M=1, 2 or 3 (or a ragged tail) GEMM differ in the last
  bits from rows of an M=4k GEMM. So the tokens are grouped by adapter and every group is
  padded to a multiple of `ROW_QUANTUM` with dummy tokens (no cache, zero attention output,
  thrown away); a solo step is padded the same way. Only the rows whose logits are wanted
  (each sequence's last token) reach the head, again padded to a multiple of ROW_QUANTUM.

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
_active = threading.local()  # .spans: list of (first row, tokens, SeqCache) while a step runs


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
    """Attention per sequence on its own cache. query (N, H, 1, D), key/value (N, Hkv, 1, D):
    the step's N new tokens as one column, each sequence a span of rows -> (N, 1, H, D) like
    transformers' sdpa function. A span of n > 1 tokens is a prompt on an empty cache (causal)."""
    spans = getattr(_active, "spans", None)
    if spans is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    gqa = query.shape[1] != key.shape[1]
    for start, n, cache in spans:
        rows = slice(start, start + n)
        k, v = cache.append(module.layer_idx, _span(key, rows), _span(value, rows))
        o = F.scaled_dot_product_attention(_span(query, rows), k, v, is_causal=n > 1,
                                           scale=scaling, enable_gqa=gqa)   # (1, H, n, D)
        out[rows, 0] = o[0].transpose(0, 1)
    return out, None


def _span(x: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows of a column (N, H, 1, D) -> one sequence (1, H, n, D)."""
    return x[rows, :, 0].transpose(0, 1)[None]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, row_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


class RowsBackend:
    """Batched linear layers, per-sequence attention (transformers' own model classes)."""

    def __init__(self, engine):
        self.engine = engine
        self.forwards = 0   # forward passes run (the scheduler counts its prefills with it)

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

    def prefill(self, seqs: list) -> torch.Tensor:
        """The prompts of `seqs` (any lengths, adapters) in one forward -> logits (len(seqs), V)
        of each one's next token."""
        return self.step([(s, s.prompt, 0) for s in seqs])

    def decode(self, seqs: list) -> torch.Tensor:
        """One token for every sequence -> logits (len(seqs), V), rows in `seqs` order."""
        return self.step([(s, [s.last_token], s.length - 1) for s in seqs])

    def step(self, work: list) -> torch.Tensor:
        """One forward for [(sequence, new token ids, position of the first)] -> logits
        (len(work), V) after each item's last token."""
        layout = padded_layout([seq.adapter for seq, _, _ in work])
        ids, pos, names, spans, last = [], [], [], [], {}
        for i, name in layout:
            seq, new, first = work[i] if i is not None else (None, [0], 0)   # dummies: token 0
            if i is not None:
                spans.append((len(ids), len(new), seq.cache))
                last[i] = len(ids) + len(new) - 1
            ids += new
            pos += range(first, first + len(new))
            names += [name] * len(new)
        dev = self.engine.device
        col = [torch.tensor(x, device=dev)[:, None] for x in (ids, pos)]   # (N, 1) each
        return self._forward(*col, names, spans, [last[i] for i in range(len(work))])

    def _forward(self, ids, pos, names, spans, keep) -> torch.Tensor:
        model = self.engine.model
        kw = {}
        if hasattr(model, "peft_config"):
            kw["adapter_names"] = [BASE_ROW if n is None else n for n in names]
        head = model.get_output_embeddings()
        rows = keep + keep[:1] * (-len(keep) % ROW_QUANTUM)   # the head sees full blocks too
        # a plain head computes only the rows asked for (a LoRA-wrapped head routes per row: all)
        hook = (head.register_forward_pre_hook(lambda _m, args: (args[0][rows], *args[1:]))
                if type(head) is torch.nn.Linear else None)
        _active.spans = spans
        self.forwards += 1
        try:
            out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1, **kw)
        finally:
            _active.spans = None
            if hook is not None:
                hook.remove()
        logits = out.logits[:, -1]                              # (len(rows) or N, V)
        return (logits[:len(keep)] if hook is not None else logits[keep]).float()


def _probe(model) -> int:
    """Run one tiny forward with a step of no rows active; count `row_attention` calls."""
    calls = []

    class _Counting(list):  # the rows of the step: none, but reading them counts a call
        def __iter__(self):
            calls.append(1)
            return iter(())

    _active.spans = _Counting()
    try:
        ids = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
        model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False, logits_to_keep=1)
    except Exception:  # a model that cannot run this way is not supported
        return 0
    finally:
        _active.spans = None
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
        self.forwards = 0

    def prefill(self, seqs: list) -> torch.Tensor:
        return torch.stack([self._step(s, s.prompt) for s in seqs])

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
        self.forwards += 1
        with self.engine.prefix_active(seq.adapter if prefix else None):
            out = model(**inputs)
        return out.logits[0, -1].float()
