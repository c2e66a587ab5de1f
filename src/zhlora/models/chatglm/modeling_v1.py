"""ChatGLM-6B (v1), written for transformers 5. The quirks of THUDM's original are kept:

- 2D rotary positions: each head's dims split in halves; the first half rotates by the token
  position (tokens from `<sop>` on keep the `[gMASK]` index), the second by the block position
  (0 in the context, 1, 2, ... from `<sop>`). `inv_freq` is rounded to fp16 (as at THUDM init),
  rotate-half layout.
- attention: bidirectional over the context (everything before `<sop>`), causal after; masked
  scores are filled with -10000.0; the query is scaled by 1/(sqrt(D)*(layer+1)) and the scores
  multiplied back by (layer+1) in fp32 before the softmax.
- DeepNorm residual `x = ln(x) * sqrt(2 * 28) + f(ln(x))` (28 whatever `num_layers` says), tanh-GELU MLP, LayerNorm,
  `lm_head` tied to `transformer.word_embeddings`.
Packed rows (4D block masks) are not supported: the positions and the prefix mask depend on
where `[gMASK]` and `<sop>` sit in each row.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from zhlora.errors import ZhloraError
from zhlora.models.chatglm.common import (ChatGLMLMBase, ChatGLMPreTrainedModel, PrefixEncoder,
                                          never_empty, padding_allowed, prepend_prefix, with_prefix)
from zhlora.models.chatglm.configuration import GLMSpec


DEEPNORM_LAYERS = 28


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_cos_sin(positions, rot_dim: int, dtype):
    """positions `(B, T)` -> cos, sin `(B, 1, T, rot_dim)` (fp16-rounded inv_freq, fp32 math)."""
    inv_freq = (1.0 / 10000 ** (torch.arange(0, rot_dim, 2, device=positions.device).float() / rot_dim))
    inv_freq = inv_freq.half().float()
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_2d_rope(x, rope):
    """x `(B, H, T, D)`; rope = (cos_pos, sin_pos, cos_block, sin_block)."""
    cp, sp, cb, sb = rope
    x1, x2 = x.chunk(2, dim=-1)
    x1 = x1 * cp + rotate_half(x1) * sp
    x2 = x2 * cb + rotate_half(x2) * sb
    return torch.cat([x1, x2], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, spec: GLMSpec, layer_idx: int):
        super().__init__()
        self.spec, self.layer_idx = spec, layer_idx
        self.query_key_value = nn.Linear(spec.hidden_size, 3 * spec.hidden_size)
        self.dense = nn.Linear(spec.hidden_size, spec.hidden_size)

    def forward(self, x, rope, allowed, cache=None, prefix=None):
        s = self.spec
        B, T, _ = x.shape
        # per head [q_h, k_h, v_h] (THUDM's layout)
        q, k, v = self.query_key_value(x).view(B, T, s.num_heads, 3 * s.head_dim).chunk(3, dim=-1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = apply_2d_rope(q, rope), apply_2d_rope(k, rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        k, v = with_prefix(k, v, prefix)
        coeff = float(self.layer_idx + 1)
        q = q / (math.sqrt(s.head_dim) * coeff)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, T, S)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, -10000.0)
        probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, -1)
        return self.dense(out)


class MLP(nn.Module):
    def __init__(self, spec: GLMSpec):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(spec.hidden_size, spec.ffn_size)
        self.dense_4h_to_h = nn.Linear(spec.ffn_size, spec.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x)))


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, spec: GLMSpec, layer_idx: int):
        super().__init__()
        # THUDM's ChatGLMModel never passes num_layers to GLMBlock, whose default is 28: the
        # DeepNorm factor is sqrt(2*28) for every model size (checked against their outputs)
        self.alpha = math.sqrt(2 * DEEPNORM_LAYERS)
        self.input_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.eps)
        self.attention = SelfAttention(spec, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.eps)
        self.mlp = MLP(spec)

    def forward(self, hidden, rope=None, allowed=None, cache=None, prefix=None, use_cache=False):
        ln = self.input_layernorm(hidden)
        hidden = ln * self.alpha + self.attention(ln, rope, allowed, cache=cache, prefix=prefix)
        ln = self.post_attention_layernorm(hidden)
        return ln * self.alpha + self.mlp(ln)


def glm_positions(input_ids, spec: GLMSpec, attention_mask=None):
    """-> (position_ids `(B, 2, T)`, context_lengths `[B]`) from where `[gMASK]`/`[MASK]` and
    `<sop>` sit in each row. Left padding (zeros in a 2D `attention_mask`) is skipped, so a
    padded row gets the same positions as the unpadded one."""
    B, T = input_ids.shape
    rows = input_ids.tolist()
    pads = [0] * B
    if attention_mask is not None and attention_mask.dim() == 2:
        pads = [int(p) for p in (attention_mask[:, -T:].cumsum(-1) == 0).sum(-1).tolist()]
    pos = torch.zeros(B, 2, T, dtype=torch.long)
    contexts = []
    for b, row in enumerate(rows):
        start = pads[b]
        body = row[start:]
        mask_tok = spec.gmask_token_id if spec.gmask_token_id in body else spec.mask_token_id
        ctx = body.index(spec.bos_token_id) if spec.bos_token_id in body else len(body)
        mask_pos = body.index(mask_tok) if mask_tok in body else max(ctx - 1, 0)
        n = len(body)
        first = torch.arange(n)
        first[ctx:] = mask_pos
        block = torch.cat([torch.zeros(ctx, dtype=torch.long), torch.arange(1, n - ctx + 1)])
        pos[b, 0, start:], pos[b, 1, start:] = first, block
        contexts.append(start + ctx)
    return pos.to(input_ids.device), contexts


def glm_allowed(contexts, batch, q_len, past_len, attention_mask, pre_seq_len, device):
    """-> `(B, 1, T, P+S)` bool, True = may attend: context bidirectional, causal after."""
    key_len = past_len + q_len
    k_idx = torch.arange(key_len, device=device)[None, :]
    q_idx = torch.arange(past_len, key_len, device=device)[:, None]
    causal = (k_idx <= q_idx)[None].expand(batch, -1, -1)
    ctx = torch.tensor(contexts, device=device)[:, None, None] if contexts else None
    allowed = causal if ctx is None else causal | (k_idx[None] < ctx)
    allowed = allowed[:, None] & padding_allowed(attention_mask, batch, key_len, device)
    return prepend_prefix(never_empty(allowed), pre_seq_len)


class ChatGLM6BModel(ChatGLMPreTrainedModel):
    """The trunk (THUDM's `ChatGLMModel`): `word_embeddings`, `layers`, `final_layernorm`."""

    def __init__(self, config):
        super().__init__(config)
        spec = self.spec
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(spec, i) for i in range(spec.num_layers)])
        self.final_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.eps)
        self.prefix_encoder = PrefixEncoder(spec) if spec.pre_seq_len else None
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, past_key_values=None, **kwargs):
        """input_ids `(B, T)`; position_ids `(B, 2, T)` (derived from input_ids when absent);
        attention_mask 2D `(B, past+T)`, 1 = token. -> last_hidden_state `(B, T, C)`."""
        spec = self.spec
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and attention_mask.dim() == 4:
            raise ZhloraError("ChatGLM-6B (v1) builds its own attention mask from [gMASK]/<sop>; a 4D "
                              "attention_mask (packed rows) is not supported: set packing=false")
        hidden = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = hidden.shape
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        contexts = None
        if past_len == 0:
            if input_ids is None and position_ids is None:
                raise ZhloraError("ChatGLM-6B needs input_ids (or position_ids) to place [gMASK]/<sop>")
            derived, contexts = glm_positions(input_ids, spec, attention_mask) if input_ids is not None \
                else (None, None)
            position_ids = derived if position_ids is None else position_ids
        elif position_ids is None:
            raise ZhloraError("ChatGLM-6B decoding with a cache needs position_ids (B, 2, T); "
                              "use model.generate, which derives them")
        half = spec.head_dim // 2
        rope = (*rope_cos_sin(position_ids[:, 0], half, hidden.dtype),
                *rope_cos_sin(position_ids[:, 1], half, hidden.dtype))
        n_prefix = self.prefix_encoder.pre_seq_len if self.prefix_encoder is not None else None
        allowed = glm_allowed(contexts, B, T, past_len, attention_mask, n_prefix, hidden.device)
        prefixes = self.prefix_encoder(B, hidden.dtype) if self.prefix_encoder is not None else None
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, rope=rope, allowed=allowed, cache=cache,
                           prefix=prefixes[i] if prefixes else None, use_cache=use_cache)
        hidden = self.final_layernorm(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None)


class ChatGLM6BForConditionalGeneration(ChatGLMLMBase):
    """ChatGLM-6B causal LM; `lm_head` is tied to the word embeddings (not saved)."""

    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = ChatGLM6BModel(config)
        self.lm_head = nn.Linear(config.hidden_size, self.spec.vocab_size, bias=False)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        return dict(self._tied_weights_keys)  # v1 always ties, whatever tie_word_embeddings says

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value


    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None,
                                      next_sequence_length=None, past_key_values=None, **kwargs):
        """2D positions from the whole sequence so far; only the new tokens are fed."""
        cache = cache if cache is not None else past_key_values
        past_len = cache.get_seq_length() if cache is not None else 0
        positions, _ = glm_positions(input_ids, self.spec, attention_mask)
        new = input_ids.shape[1] - past_len
        inputs = {"input_ids": input_ids[:, -new:], "position_ids": positions[..., -new:],
                  "cache": cache, "attention_mask": attention_mask,
                  "use_cache": kwargs.get("use_cache", True)}
        return inputs
