"""Pieces shared by the ChatGLM-6B (v1) and ChatGLM2/3/GLM-4 (v2) modeling code.

Layout inside zhlora: activations are batch-first `(B, T, C)`; attention tensors are
`(B, heads, T, head_dim)`; the KV cache is transformers' `DynamicCache` holding the real
tokens only. A P-Tuning v2 prefix is kept apart from the cache and put in front of the keys
and values in each layer, so cache lengths and positions never count virtual tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from zhlora.errors import ZhloraError
from zhlora.models.chatglm.configuration import ChatGLMConfig, GLMSpec, glm_spec

THUDM_ARCH = "ChatGLMForConditionalGeneration"


class PrefixEncoder(nn.Module):
    """P-Tuning v2: `pre_seq_len` virtual tokens -> a key/value prefix for every layer.

    Same parameters as THUDM's `transformer.prefix_encoder`: `embedding`, and with
    `prefix_projection` the MLP `trans.0` / `trans.2`, shaped as each generation's code has them:
    ChatGLM-6B embeds to `hidden` and maps hidden -> hidden -> kv; ChatGLM2/3/GLM-4 embed to `kv`
    and map kv -> hidden -> kv (kv = num_layers * 2 * kv_groups * head_dim). In training the
    prefix goes through dropout 0.1, as THUDM's `get_prompt` does.
    """

    dropout = 0.1

    def __init__(self, spec: GLMSpec):
        super().__init__()
        self.spec = spec
        kv_size = spec.num_layers * 2 * spec.kv_groups * spec.head_dim
        if spec.prefix_projection:
            width = spec.hidden_size if spec.version == 1 else kv_size
            self.embedding = nn.Embedding(spec.pre_seq_len, width)
            self.trans = nn.Sequential(nn.Linear(width, spec.hidden_size), nn.Tanh(),
                                       nn.Linear(spec.hidden_size, kv_size))
        else:
            self.embedding = nn.Embedding(spec.pre_seq_len, kv_size)
            self.trans = None

    @property
    def pre_seq_len(self) -> int:
        return self.spec.pre_seq_len

    def forward(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """-> per layer (key, value), each `(B, kv_groups, pre_seq_len, head_dim)`."""
        s = self.spec
        tokens = torch.arange(s.pre_seq_len, device=self.embedding.weight.device)
        kv = self.embedding(tokens)
        if self.trans is not None:
            kv = self.trans(kv)
        kv = nn.functional.dropout(kv.to(dtype), self.dropout, self.training)
        # (P, L*2*G*D) -> (L*2, G, P, D), the order THUDM's get_prompt produces
        kv = kv.view(s.pre_seq_len, s.num_layers * 2, s.kv_groups, s.head_dim).permute(1, 2, 0, 3)
        kv = kv.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(s.num_layers)]


def with_prefix(key, value, prefix):
    """Put the P-Tuning prefix `(k, v)` (or None) in front of this layer's keys/values."""
    if prefix is None:
        return key, value
    pk, pv = prefix
    return torch.cat([pk.to(key.dtype), key], dim=2), torch.cat([pv.to(value.dtype), value], dim=2)


def padding_allowed(attention_mask_2d, batch: int, key_len: int, device) -> torch.Tensor:
    """2D mask (1 = real token) -> `(B, 1, 1, S)` bool, True = key may be attended."""
    if attention_mask_2d is None:
        return torch.ones(batch, 1, 1, key_len, dtype=torch.bool, device=device)
    if attention_mask_2d.shape[-1] != key_len:
        raise ZhloraError(f"attention_mask has {attention_mask_2d.shape[-1]} columns but the cache plus the "
                          f"input hold {key_len} tokens; pass a mask that covers past and new tokens")
    return attention_mask_2d.bool()[:, None, None, :]


def never_empty(allowed: torch.Tensor) -> torch.Tensor:
    """Rows that may attend nothing (left-padding queries) attend everything instead, like
    THUDM's `get_masks` does for pad rows; their outputs are never used."""
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty


def prepend_prefix(allowed: torch.Tensor, pre_seq_len: int | None) -> torch.Tensor:
    if not pre_seq_len:
        return allowed
    ones = allowed.new_ones(*allowed.shape[:-1], pre_seq_len)
    return torch.cat([ones, allowed], dim=-1)


def mask_from_4d(mask: torch.Tensor) -> torch.Tensor:
    """A 4D mask passed in (packing): bool or 0/1 -> True = may attend; a float additive mask
    (0 = attend, large negative = masked) is accepted too."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() and bool((mask < 0).any()):
        return mask == 0
    return mask != 0


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"rotary_pos_emb\.inv_freq"]

    @property
    def spec(self) -> GLMSpec:
        return glm_spec(self.config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save in THUDM's layout: same key names, and a config.json their code reads
        (`architectures` = ChatGLMForConditionalGeneration, `torch_dtype`, `auto_map` kept)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        path = Path(save_directory) / "config.json"
        if path.is_file():
            cfg = json.loads(path.read_text(encoding="utf-8"))
            cfg["architectures"] = [THUDM_ARCH]
            if cfg.get("dtype") is not None:  # THUDM's code (transformers 4.x) reads torch_dtype
                cfg["torch_dtype"] = cfg.pop("dtype")
            cfg.setdefault("use_cache", True)  # dropped by transformers 5's config, read by THUDM's code
            path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class ChatGLMLMBase(ChatGLMPreTrainedModel, GenerationMixin):
    """Shared forward and loss for both generations: the trunk (`self.transformer`), the output
    layer (`get_output_embeddings()`), standard next-token shift, labels -100 ignored."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, use_cache=None, past_key_values=None,
                logits_to_keep: int = 0, **kwargs):
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache if cache is not None else past_key_values,
                               inputs_embeds=inputs_embeds, use_cache=use_cache)
        hidden = out.last_hidden_state  # (B, T, hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.get_output_embeddings()(hidden)  # (B, T, vocab)
        return CausalLMOutputWithPast(loss=self._loss(logits, labels, **kwargs), logits=logits, cache=out.cache)

    def _loss(self, logits, labels, **kwargs):
        if labels is None:
            return None
        return self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
