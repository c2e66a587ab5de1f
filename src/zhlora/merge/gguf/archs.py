"""Which llama.cpp architecture runs each model family zhlora trains: ONE table.

Each entry says how to recognise the config, which llama.cpp architecture (`general.architecture`)
and tensor-name table it maps to, how to read the hyper-parameters, and whether Q/K rows need
reordering. What llama.cpp expects was read from its sources (`src/models/*.cpp`,
`llama-arch.cpp`, `convert_hf_to_gguf.py`):

- `llama` (LLaMA, Chinese-LLaMA/Alpaca): NORM rope (pairs (x0,x1),(x2,x3)...); Hugging Face
  stores q/k rows rotate-half style, so they are permuted (`permute_for_llama_cpp`).
- `qwen2`: NEOX rope (rotate-half), the HF order as is; q/k/v biases.
- `glm4` (transformers' Glm4ForCausalLM): NORM rope on the first half of each head (HF GLM
  already rotates interleaved pairs), fused gate_up as `ffn_up` (2*n_ff rows), post-attention
  and post-MLP norms.
- `chatglm` (ChatGLM2/3 and GLM-4 in THUDM's original format, and transformers' GlmForCausalLM):
  fused `query_key_value` (+bias) as `attn_qkv`, NORM rope on the first half of each head,
  base 10000*rope_ratio, `dense_h_to_4h` as `ffn_up` (SwiGLU halves), no BOS.
- ChatGLM-6B (v1) has no llama.cpp architecture (2-D position encoding, GLM prefix attention,
  post-LN GELU blocks): refused.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zhlora.errors import ZhloraError


@dataclass(frozen=True)
class HParams:
    context: int
    embedding: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_dims: int
    rms_eps: float
    rope_base: float


@dataclass(frozen=True)
class GGUFArch:
    name: str                                  # llama.cpp `general.architecture`
    matches: Callable[[dict], bool]
    hparams: Callable[[dict], HParams]
    permute_qk: bool = False                   # HF rotate-half rows -> llama.cpp NORM rope pairs
    strip_prefix: str = ""                     # removed from tensor names before the name table
    bpe_pre: str = "default"                   # tokenizer.ggml.pre for a byte-level BPE vocabulary
    add_bos: bool | None = None                # forced value (else measured on zhlora's tokenizer)
    check: Callable[[dict], str | None] = lambda cfg: None   # -> why llama.cpp cannot run it


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or {}
    return float(cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0)


def _partial(cfg: dict, default: float) -> float:
    rp = cfg.get("rope_parameters") or {}
    return float(cfg.get("partial_rotary_factor") or rp.get("partial_rotary_factor") or default)


def _hf_hparams(rotary: float) -> Callable[[dict], HParams]:
    def read(cfg: dict) -> HParams:
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        return HParams(cfg.get("max_position_embeddings", 2048), cfg["hidden_size"], cfg["num_hidden_layers"],
                       cfg["intermediate_size"], heads, cfg.get("num_key_value_heads") or heads, head_dim,
                       int(head_dim * _partial(cfg, rotary)), cfg.get("rms_norm_eps", 1e-6), _rope_theta(cfg))
    return read


def _chatglm_hparams(cfg: dict) -> HParams:
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("kv_channels") or hidden // heads
    kv = cfg.get("multi_query_group_num") if cfg.get("multi_query_attention") else heads
    return HParams(cfg.get("seq_length", 2048), hidden, cfg["num_layers"], cfg["ffn_hidden_size"], heads, kv,
                   head_dim, head_dim // 2, cfg.get("layernorm_epsilon", 1e-5),
                   10000.0 * float(cfg.get("rope_ratio") or 1.0))


def _is_chatglm_v1(cfg: dict) -> bool:
    return cfg.get("model_type") == "chatglm" and "ffn_hidden_size" not in cfg


def _chatglm_check(cfg: dict) -> str | None:
    if _is_chatglm_v1(cfg):
        return ("ChatGLM-6B (v1) has no llama.cpp architecture (2-D position encoding and GLM prefix "
                "attention; llama.cpp's `chatglm` runs ChatGLM2/3 and GLM-4). Serve it with `zhlora serve`")
    bad = [k for k, ok in (("rmsnorm", True), ("post_layer_norm", True), ("add_bias_linear", False),
                           ("apply_residual_connection_post_layernorm", False), ("original_rope", True))
           if k in cfg and bool(cfg[k]) != ok]
    if cfg.get("pre_seq_len"):
        bad.append("pre_seq_len (P-Tuning prefix)")
    if bad:
        return f"config fields {', '.join(bad)} differ from what llama.cpp's `chatglm` blocks compute"
    return None


def _chatglm_heads_check(cfg: dict) -> str | None:
    why = _chatglm_check(cfg)
    if why is None and (cfg.get("kv_channels") or 0) * cfg["num_attention_heads"] not in (0, cfg["hidden_size"]):
        why = "kv_channels * num_attention_heads != hidden_size (llama.cpp's `chatglm` wants them equal)"
    return why


ARCHS: dict[str, GGUFArch] = {}


def register_arch(a: GGUFArch, key: str | None = None) -> GGUFArch:
    ARCHS[key or a.name] = a
    return a


register_arch(GGUFArch("llama", lambda c: c.get("model_type") in ("llama", "mistral"), _hf_hparams(1.0),
                       permute_qk=True))
register_arch(GGUFArch("qwen2", lambda c: c.get("model_type") == "qwen2", _hf_hparams(1.0), bpe_pre="qwen2"))
register_arch(GGUFArch("glm4", lambda c: c.get("model_type") == "glm4", _hf_hparams(0.5), bpe_pre="glm4"))
register_arch(GGUFArch("chatglm", lambda c: c.get("model_type") == "glm", _hf_hparams(0.5), bpe_pre="glm4",
                       add_bos=False), key="glm-hf")
register_arch(GGUFArch("chatglm", lambda c: c.get("model_type") == "chatglm", _chatglm_hparams,
                       strip_prefix="transformer.", add_bos=False, check=_chatglm_heads_check))


def arch_for(cfg: dict, where: str) -> GGUFArch:
    """The table entry for a config, or ZhloraError saying why there is none."""
    for a in ARCHS.values():
        if a.matches(cfg):
            why = a.check(cfg)
            if why:
                raise ZhloraError(f"{where}/config.json: {why}; it cannot be exported to GGUF")
            return a
    raise ZhloraError(f"{where}/config.json: model_type {cfg.get('model_type')!r} has no GGUF export; "
                      "zhlora exports LLaMA/Chinese-LLaMA/Alpaca (llama, mistral), Qwen2/2.5 (qwen2), "
                      "GLM-4-HF (glm4, glm) and ChatGLM2/3/GLM-4 (chatglm)")
