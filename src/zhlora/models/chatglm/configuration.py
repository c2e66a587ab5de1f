"""ChatGLM config: one `model_type` ("chatglm") for four generations of THUDM checkpoints.

The config keeps exactly the fields the checkpoint's config.json holds (so saving writes what
THUDM's code and chatglm.cpp expect); `glm_spec(config)` reads them into a typed `GLMSpec`
that the modeling code uses. Which generation a folder holds is decided from its fields:

- ChatGLM-6B (v1): `position_encoding_2d`, `inner_hidden_size`, `max_sequence_length`
- ChatGLM2-6B / ChatGLM3-6B: `multi_query_attention`, `kv_channels`, `ffn_hidden_size`,
  `seq_length`, `padded_vocab_size`
- GLM-4 in its original `chatglm` format: the v2 fields plus `rope_ratio` (and a 151k vocab)
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig

from zhlora.errors import ZhloraError

V1_KEYS = ("position_encoding_2d", "inner_hidden_size", "max_sequence_length")
V2_KEYS = ("multi_query_attention", "kv_channels", "ffn_hidden_size", "seq_length", "padded_vocab_size")


class ChatGLMConfig(PreTrainedConfig):
    """All ChatGLM generations. Fields are stored as given (see module docstring)."""

    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers"}
    keys_to_ignore_at_inference = ["past_key_values", "cache"]


@dataclass(frozen=True)
class GLMSpec:
    """The architecture a ChatGLM config describes, with every default filled in."""

    version: int                 # 1 = ChatGLM-6B; 2 = ChatGLM2/3 and GLM-4 (same blocks)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    kv_groups: int               # key/value heads (v1: = num_heads)
    ffn_size: int
    eps: float
    max_positions: int
    rope_ratio: float = 1.0
    qkv_bias: bool = True
    linear_bias: bool = False
    post_layer_norm: bool = True
    residual_post_ln: bool = False
    tie_embeddings: bool = False
    pre_seq_len: int | None = None
    prefix_projection: bool = False
    mask_token_id: int | None = None   # v1 only
    gmask_token_id: int | None = None  # v1 only
    bos_token_id: int | None = None    # v1: <sop>


def _get(cfg, name, default=None):
    value = getattr(cfg, name, None)
    return default if value is None else value


def detect_version(fields: dict) -> int:
    """1 or 2 from a config dict; ZhloraError for an unknown combination."""
    v1 = [k for k in V1_KEYS if fields.get(k) is not None]
    v2 = [k for k in V2_KEYS if fields.get(k) is not None]
    if v1 and not v2:
        return 1
    if v2 and not v1:
        return 2
    raise ZhloraError(
        "config.json: model_type 'chatglm' but the fields do not say which ChatGLM this is "
        f"(ChatGLM-6B fields present: {v1 or 'none'}; ChatGLM2/3/GLM-4 fields present: {v2 or 'none'}). "
        "Use the config.json that came with the THUDM checkpoint, unedited")


def _refuse(cond: bool, what: str) -> None:
    if cond:
        raise ZhloraError(f"config.json: {what} is not supported by zhlora's native ChatGLM; "
                          "use an unquantized float checkpoint with the standard THUDM config")


def glm_spec(cfg) -> GLMSpec:
    """Read a `ChatGLMConfig` (or any object with its fields) into a `GLMSpec`."""
    fields = {k: getattr(cfg, k, None) for k in V1_KEYS + V2_KEYS}
    version = detect_version(fields)
    _refuse(bool(_get(cfg, "quantization_bit", 0)), f"quantization_bit={_get(cfg, 'quantization_bit')}")
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    common = dict(hidden_size=hidden, num_layers=cfg.num_layers, num_heads=heads,
                  eps=_get(cfg, "layernorm_epsilon", 1e-5), pre_seq_len=_get(cfg, "pre_seq_len"),
                  prefix_projection=bool(_get(cfg, "prefix_projection", False)))
    if version == 1:
        _refuse(not _get(cfg, "position_encoding_2d", True), "position_encoding_2d=false")
        return GLMSpec(version=1, vocab_size=cfg.vocab_size, head_dim=hidden // heads, kv_groups=heads,
                       ffn_size=_get(cfg, "inner_hidden_size", 4 * hidden),
                       max_positions=_get(cfg, "max_sequence_length", 2048), qkv_bias=True,
                       linear_bias=True, tie_embeddings=True,
                       mask_token_id=_get(cfg, "mask_token_id", 130000),
                       gmask_token_id=_get(cfg, "gmask_token_id", 130001),
                       bos_token_id=_get(cfg, "bos_token_id", 130004), **common)
    _refuse(not _get(cfg, "rmsnorm", True), "rmsnorm=false (LayerNorm blocks)")
    _refuse(not _get(cfg, "original_rope", True), "original_rope=false")
    mqa = _get(cfg, "multi_query_attention", False)
    return GLMSpec(version=2, vocab_size=_get(cfg, "padded_vocab_size") or cfg.vocab_size,
                   head_dim=_get(cfg, "kv_channels", hidden // heads),
                   kv_groups=_get(cfg, "multi_query_group_num", 1) if mqa else heads,
                   ffn_size=cfg.ffn_hidden_size, max_positions=_get(cfg, "seq_length", 2048),
                   rope_ratio=float(_get(cfg, "rope_ratio", 1.0)),
                   qkv_bias=bool(_get(cfg, "add_qkv_bias", False) or _get(cfg, "add_bias_linear", False)),
                   linear_bias=bool(_get(cfg, "add_bias_linear", False)),
                   post_layer_norm=bool(_get(cfg, "post_layer_norm", True)),
                   residual_post_ln=bool(_get(cfg, "apply_residual_connection_post_layernorm", False)),
                   tie_embeddings=bool(_get(cfg, "tie_word_embeddings", False)), **common)


def template_for_config(config: dict) -> str:
    """The chat template a THUDM checkpoint was trained with, from its config.json fields.

    GLM-4: a 151k vocabulary or a list of eos ids. ChatGLM3-6B: `seq_length` 8192 or a
    `rope_ratio` (ChatGLM3-6B-32k/128k). Otherwise ChatGLM2. Override with `template=`.
    """
    if detect_version(config) == 1:
        return "chatglm"
    if (config.get("padded_vocab_size") or 0) >= 150000 or isinstance(config.get("eos_token_id"), list):
        return "glm4"
    if config.get("seq_length") == 8192 or config.get("rope_ratio") is not None:
        return "chatglm3"
    return "chatglm2"
