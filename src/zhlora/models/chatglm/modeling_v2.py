"""ChatGLM2-6B / ChatGLM3-6B / GLM-4 (original `chatglm` format), written for transformers 5.

Architecture (THUDM's modeling_chatglm.py for these models, re-derived):
- multi-query attention: `query_key_value` -> [q (H*D), k (G*D), v (G*D)], each of the G key/value
  groups shared by H/G query heads; bias on `query_key_value` only (`add_qkv_bias`).
- rotary embedding on the first D/2 dims of each head, as interleaved pairs (x0, x1), base
  10000 * `rope_ratio` (GLM-4 uses rope_ratio 500), cos/sin computed in fp32.
- RMSNorm (fp32 variance), SwiGLU MLP (`dense_h_to_4h` = [gate; up]), untied `output_layer`.
Key names match THUDM's checkpoints: transformer.embedding.word_embeddings,
transformer.encoder.layers.N.{input_layernorm,self_attention.{query_key_value,dense},
post_attention_layernorm,mlp.{dense_h_to_4h,dense_4h_to_h}}, transformer.encoder.final_layernorm,
transformer.output_layer, transformer.prefix_encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from zhlora.models.chatglm.common import (ChatGLMLMBase, ChatGLMPreTrainedModel, PrefixEncoder,
                                          mask_from_4d, never_empty, padding_allowed, prepend_prefix,
                                          with_prefix)
from zhlora.models.chatglm.configuration import GLMSpec


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(variance + self.eps))).to(x.dtype)


def rope_cos_sin(position_ids, spec: GLMSpec, dtype):
    """position_ids `(B, T)` -> cos, sin `(B, 1, T, D/4)` for the D/2 rotated dims."""
    n_elem = spec.head_dim // 2
    base = 10000.0 * spec.rope_ratio
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=position_ids.device) / n_elem))
    angles = position_ids.float()[..., None] * theta  # (B, T, D/4)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if dtype in (torch.float16, torch.bfloat16):
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos[:, None], sin[:, None]


def apply_rope(x, cos, sin):
    """x `(B, heads, T, D)`: rotate pairs (x[2i], x[2i+1]) of the first 2*len(cos) dims."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    pairs = x_rot.reshape(*x_rot.shape[:-1], rot // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, spec: GLMSpec, layer_idx: int):
        super().__init__()
        self.spec, self.layer_idx = spec, layer_idx
        qkv_out = (spec.num_heads + 2 * spec.kv_groups) * spec.head_dim
        self.query_key_value = nn.Linear(spec.hidden_size, qkv_out, bias=spec.qkv_bias)
        self.dense = nn.Linear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=spec.linear_bias)

    def forward(self, x, cos, sin, allowed, cache=None, prefix=None):
        s = self.spec
        B, T, _ = x.shape
        q, k, v = self.query_key_value(x).split(
            [s.num_heads * s.head_dim, s.kv_groups * s.head_dim, s.kv_groups * s.head_dim], dim=-1)
        q = q.view(B, T, s.num_heads, s.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, s.kv_groups, s.head_dim).transpose(1, 2)  # (B, G, T, D)
        v = v.view(B, T, s.kv_groups, s.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        k, v = with_prefix(k, v, prefix)
        rep = s.num_heads // s.kv_groups
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        causal = allowed is None and q.shape[2] == k.shape[2] and T > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal)
        return self.dense(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, spec: GLMSpec):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(spec.hidden_size, spec.ffn_size * 2, bias=spec.linear_bias)
        self.dense_4h_to_h = nn.Linear(spec.ffn_size, spec.hidden_size, bias=spec.linear_bias)

    def forward(self, x):
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, spec: GLMSpec, layer_idx: int):
        super().__init__()
        self.spec = spec
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.eps)
        self.self_attention = SelfAttention(spec, layer_idx)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.eps)
        self.mlp = MLP(spec)

    def forward(self, hidden, cos=None, sin=None, allowed=None, cache=None, prefix=None, use_cache=False):
        ln = self.input_layernorm(hidden)
        attn = self.self_attention(ln, cos, sin, allowed, cache=cache, prefix=prefix)
        hidden = (ln if self.spec.residual_post_ln else hidden) + attn
        ln = self.post_attention_layernorm(hidden)
        return (ln if self.spec.residual_post_ln else hidden) + self.mlp(ln)


class Embedding(nn.Module):
    def __init__(self, spec: GLMSpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class GLMTransformer(nn.Module):
    def __init__(self, spec: GLMSpec):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(spec, i) for i in range(spec.num_layers)])
        self.final_layernorm = RMSNorm(spec.hidden_size, spec.eps) if spec.post_layer_norm else None


def build_allowed(attention_mask, batch, q_len, past_len, pre_seq_len, device):
    """-> `(B, 1, T, P+S)` bool (True = may attend) or None when plain causal attention is right."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return prepend_prefix(mask_from_4d(attention_mask).to(device), pre_seq_len)
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and not pre_seq_len and (past_len == 0 or q_len == 1):
        return None  # causal (prefill) or a single new token that sees everything
    key_len = past_len + q_len
    q_pos = torch.arange(past_len, key_len, device=device)[:, None]
    causal = (torch.arange(key_len, device=device)[None, :] <= q_pos)[None, None]  # (1, 1, T, S)
    allowed = never_empty(causal & padding_allowed(attention_mask, batch, key_len, device))
    return prepend_prefix(allowed, pre_seq_len)


class ChatGLM2Model(ChatGLMPreTrainedModel):
    """The trunk (THUDM's `ChatGLMModel`): embeddings, blocks, final norm; holds `output_layer`
    too, because THUDM's checkpoints name it `transformer.output_layer`."""

    def __init__(self, config):
        super().__init__(config)
        spec = self.spec
        self.embedding = Embedding(spec)
        self.encoder = GLMTransformer(spec)
        self.output_layer = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.prefix_encoder = PrefixEncoder(spec) if spec.pre_seq_len else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def set_input_embeddings(self, value):
        self.embedding.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, use_cache=None, past_key_values=None, **kwargs):
        """input_ids `(B, T)`; attention_mask 2D `(B, past+T)` (1 = token) or 4D `(B, 1, T, S)`
        (True = may attend); position_ids `(B, T)`. -> last_hidden_state `(B, T, C)`."""
        spec = self.spec
        cache = cache if cache is not None else past_key_values
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = hidden.shape
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=hidden.device)[None].expand(B, T)
        cos, sin = rope_cos_sin(position_ids, spec, hidden.dtype)
        n_prefix = self.prefix_encoder.pre_seq_len if self.prefix_encoder is not None else None
        allowed = build_allowed(attention_mask, B, T, past_len, n_prefix, hidden.device)
        prefixes = self.prefix_encoder(B, hidden.dtype) if self.prefix_encoder is not None else None
        for i, layer in enumerate(self.encoder.layers):
            hidden = layer(hidden, cos=cos, sin=sin, allowed=allowed, cache=cache,
                           prefix=prefixes[i] if prefixes else None, use_cache=use_cache)
        if self.encoder.final_layernorm is not None:
            hidden = self.encoder.final_layernorm(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None)


class ChatGLM2ForConditionalGeneration(ChatGLMLMBase):
    """ChatGLM2-6B / ChatGLM3-6B / GLM-4 causal LM (`logits`, `loss` when `labels` given)."""

    def __init__(self, config):
        super().__init__(config)
        self.transformer = ChatGLM2Model(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def set_output_embeddings(self, value):
        self.transformer.output_layer = value

