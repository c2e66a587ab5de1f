"""Decoding steps whose numbers do not depend on what else is in the batch.

The scheduler runs many sequences (any adapter, any length) through one forward pass per
token. Greedy output must equal each request's solo output token for token, so every row's
arithmetic must be the same whatever shares its batch:

- Attention runs on each sequence's own KV cache, through an attention function registered
  with transformers (`zhlora_rows`; it falls back to sdpa when no scheduler step is running,
  so other callers of the model see plain sdpa). The caches live in capacity buckets
  (kvpool.py): a sequence's capacity is a function of its own length only, and each bucket
  keeps the caches of its sequences in one tensor per layer. A prompt (a span of n > 1
  tokens on an empty cache) attends alone, causal, over its own n tokens. The decoding rows
  (one token each) of a bucket attend together: one write appends their keys and values, one
  masked attention call (`masked_attention`) runs over the bucket's slots, each row masked to
  its own length within its own capacity. A row's numbers depend on its own cache and
  capacity only, not on how many slots share the call: checked row by row (torch.equal,
  fp32 CPU, 1, 2, 4, 8 and 16 threads at the buckets' capacities) against the same row
  alone. CPU SDPA (flash kernel) does not hold this with more than one thread, so the
  decoding call is batched matmuls + softmax.
- Every forward pass, prefill or decode, runs the new tokens of all its sequences as one
  flat column: input (N, 1) with N the tokens of the step, so that linear layers see one
  (N, hidden) GEMM and PEFT's per-sample routing (`adapter_names`) is per token (the names
  reach each LoRA layer through a hook `route_rows` adds once, not through the PEFT model's
  argument, which walks the whole model to add and remove such hooks every forward). Each
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

from zhlora.infer.kvpool import KVPool, SeqCache  # noqa: F401  (SeqCache: the scheduler's import)

ROW_QUANTUM = 4
ATTN_NAME = "zhlora_rows"
BASE_ROW = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
_active = threading.local()  # .step: the running _Step (None: no step, plain sdpa); .names: its rows' adapters


class _Layout:
    """Where a step's rows go, worked out once (at its first layer) for all layers: prompts
    [(rows, bucket, slot, position, n)] and the decoding rows by bucket (`_Group`)."""

    def __init__(self, spans: list, pool: KVPool, device):
        at = [cache.reserve(pool, n) for _, n, cache in spans]   # slots and positions first
        with pool.lock:
            for bucket in {cache.bucket for _, _, cache in spans}:
                bucket.compact()
        self.prompts, groups = [], {}
        for (start, n, cache), pos in zip(spans, at):
            if n == 1:
                groups.setdefault(cache.bucket, []).append((cache.slot, start, pos))
            else:
                self.prompts.append((slice(start, start + n), cache.bucket, cache.slot, pos, n))
        self.groups = [_Group(b, sorted(rows), device) for b, rows in groups.items()]


class _Group:
    """The decoding rows of one bucket, by slot: their slots, rows of the column and positions,
    and the mask (used, 1, 1, cap) of the positions NOT to attend to (a slot outside the step
    keeps position 0, so its row is finite; it is thrown away). `dense`: the rows fill slots
    [0, used) in order (the usual case: no scatter into a zero query tensor needed)."""

    def __init__(self, bucket, rows: list, device):
        self.bucket, self.used = bucket, bucket.used
        self.dense = [r[0] for r in rows] == list(range(self.used))
        slot, row, pos = (torch.tensor(x, device=device) for x in zip(*rows))
        self.slots, self.rows, self.pos = slot, row, pos
        lengths = torch.ones(self.used, dtype=torch.long, device=device)
        lengths[slot] = pos + 1
        self.masked = (torch.arange(bucket.cap, device=device) >= lengths[:, None])[:, None, None]


class _Step:
    """A running step: its spans [(first row, tokens, SeqCache)] and, once known, its layout."""

    def __init__(self, spans: list, pool: KVPool):
        self.spans, self.pool, self._layout = spans, pool, None

    def layout(self, device) -> _Layout:
        if self._layout is None:
            self._layout = _Layout(self.spans, self.pool, device)
        return self._layout


def row_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention per sequence on its own cache. query (N, H, 1, D), key/value (N, Hkv, 1, D):
    the step's N new tokens as one column, each sequence a span of rows -> (N, 1, H, D) like
    transformers' sdpa function. A span of n > 1 tokens is a prompt on an empty cache (causal);
    the one-token spans of a bucket attend together."""
    step = getattr(_active, "step", None)
    if step is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    layout = step.layout(query.device)
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    for rows, bucket, slot, pos, n in layout.prompts:
        k, v = bucket.layer(module.layer_idx, key)
        k[slot, :, pos:pos + n] = _span(key, rows)[0]
        v[slot, :, pos:pos + n] = _span(value, rows)[0]
        o = F.scaled_dot_product_attention(_span(query, rows), k[slot:slot + 1, :, :pos + n],
                                           v[slot:slot + 1, :, :pos + n], is_causal=True, scale=scaling,
                                           enable_gqa=query.shape[1] != key.shape[1])   # (1, H, n, D)
        out[rows, 0] = o[0].transpose(0, 1)
    for g in layout.groups:
        out[g.rows] = _group_attention(g, module.layer_idx, query, key, value, scale).transpose(1, 2)
    return out, None


def _group_attention(g: _Group, layer: int, query, key, value, scale: float) -> torch.Tensor:
    """Append the group's new keys/values at (slot, position) and attend over the bucket's
    slots [0, used) in one call -> (rows, H, 1, D), rows in slot order."""
    k, v = g.bucket.layer(layer, key)
    k[g.slots, :, g.pos] = key[g.rows, :, 0]
    v[g.slots, :, g.pos] = value[g.rows, :, 0]
    if g.dense:
        return masked_attention(query[g.rows], k[:g.used], v[:g.used], g.masked, scale)
    q = query.new_zeros(g.used, *query.shape[1:])   # (used, H, 1, D); slots outside: zeros
    q[g.slots] = query[g.rows]
    return masked_attention(q, k[:g.used], v[:g.used], g.masked, scale)[g.slots]


def masked_attention(q, k, v, masked, scale: float) -> torch.Tensor:
    """Softmax attention of one query per row: q (B, H, 1, D) over k, v (B, Hkv, cap, D)
    without the positions `masked` (B, 1, 1, cap) -> (B, H, 1, D). A row's numbers do not
    depend on B (batched matmuls; CPU SDPA's flash kernel changes them with B when it runs on
    more than one thread). Query heads share key heads in groups (GQA) without copying k, v."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    s = torch.matmul(q.view(b, hkv, h // hkv, d), k.transpose(-1, -2))   # (B, Hkv, H/Hkv, cap)
    s = s.mul_(scale).masked_fill_(masked, float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(p, v).view(b, h, 1, d)


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
        self.pool = KVPool()   # every sequence's keys and values

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
        routed = self._routed(model)
        _active.names = [BASE_ROW if n is None else n for n in names] if routed else None
        head = model.get_output_embeddings()
        rows = keep + keep[:1] * (-len(keep) % ROW_QUANTUM)   # the head sees full blocks too
        # a plain head computes only the rows asked for (a LoRA-wrapped head routes per row: all)
        hook = (head.register_forward_pre_hook(lambda _m, args: (args[0][rows], *args[1:]))
                if type(head) is torch.nn.Linear else None)
        _active.step = _Step(spans, self.pool)
        self.forwards += 1
        try:
            out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1)
        finally:
            _active.step = _active.names = None
            if hook is not None:
                hook.remove()
        logits = out.logits[:, -1]                              # (len(rows) or N, V)
        return (logits[:len(keep)] if hook is not None else logits[keep]).float()


    def _routed(self, model) -> bool:
        """A PEFT model's LoRA layers carry `route_rows`' hook (checked again when its adapter
        set changes: adapters loaded by zhlora.infer.loading are routed there already)."""
        if not hasattr(model, "peft_config"):
            return False
        key = (id(model), tuple(model.peft_config))
        if key != getattr(self, "_routed_key", None):
            route_rows(model)
            self._routed_key = key
        return True


def route_rows(model) -> None:
    """Give every PEFT LoRA layer of `model` (once) a forward pre-hook passing the running
    step's per-row adapter names, as PEFT's `adapter_names` argument does (its mixed-batch
    forward), without PEFT walking the whole model to add and remove those hooks on every
    forward (a twentieth of a decoding step here)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import other

    # modules_to_save wrappers route per row too (PEFT's own hooks cover both)
    wrapper = getattr(other, "AuxiliaryTrainingWrapper", None) or other.ModulesToSaveWrapper
    for m in model.modules():
        if isinstance(m, (LoraLayer, wrapper)) and not getattr(m, "_zhlora_rows", False):
            m.register_forward_pre_hook(_row_names, with_kwargs=True)
            m._zhlora_rows = True


def _row_names(module, args, kwargs):
    names = getattr(_active, "names", None)
    if names is not None:
        kwargs["adapter_names"] = names
    return args, kwargs


def _probe(model) -> int:
    """Run one tiny forward with a step of no rows active; count `row_attention` calls."""
    calls = []

    class _Counting(_Step):  # a step of no rows, but asking for its layout counts a call
        def layout(self, device):
            calls.append(1)
            return super().layout(device)

    _active.step = _Counting([], KVPool())
    try:
        ids = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
        model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False, logits_to_keep=1)
    except Exception:  # a model that cannot run this way is not supported
        return 0
    finally:
        _active.step = None
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
