"""`zhlora export gguf`: a merged LLaMA-family folder -> one llama.cpp GGUF file.

What llama.cpp's converter does for LLaMA, with the `gguf` package's own helpers:
- metadata `llama.*` (context, width, layers, heads, KV heads, FFN, RMS eps, rope base/dims);
- tokenizer: SentencePiece `tokenizer.model` (Chinese-LLaMA/Alpaca; `tokenizer.ggml.model`
  "llama", scores and token types), else a `tokenizer.json` (LLaMA byte-fallback BPE, or
  GPT-2 byte-level BPE with merges), padded with `[PAD{i}]` tokens up to the embedding rows;
  special ids and add_bos/add_eos and the chat template via `gguf.SpecialVocab`;
- tensors renamed with `gguf.get_tensor_name_map` (token_embd, blk.N.attn_q, ...), q/k rows
  permuted from Hugging Face's rotate-half order to llama.cpp's interleaved rope order;
- f16 (1-D norms stay f32), or q8_0 for 2-D weights whose rows are a multiple of 32.

Tensors are converted one at a time: infos are declared from the headers, then data is
streamed. The file is written next to the target and renamed when complete.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zhlora.errors import ZhloraError
from zhlora.families import read_config
from zhlora.merge.base import open_base
from zhlora.outputs import check_output_free

SUPPORTED = ("llama", "mistral")


@dataclass
class GGUFInfo:
    path: Path
    tensors: int
    type: str
    bytes: int
    vocab: int
    tokenizer: str


def export_gguf(model_dir, output, qtype: str = "f16", overwrite: bool = False) -> GGUFInfo:
    import gguf

    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    if cfg.get("model_type") not in SUPPORTED:
        raise ZhloraError(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r}; GGUF export "
                          f"covers the LLaMA family ({', '.join(SUPPORTED)}: Chinese-LLaMA/Alpaca). "
                          "Use llama.cpp's convert_hf_to_gguf.py for other architectures")
    if qtype not in ("f16", "q8_0"):
        raise ZhloraError(f"--type {qtype!r}: use f16 or q8_0")
    out = check_output_free(output, overwrite).resolve()
    base = open_base(model_dir)
    names = _tensor_names(base, cfg)
    rows = base.tensors[next(n for n in names if names[n] == "token_embd.weight")].shape[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        _add_metadata(w, cfg, qtype, model_dir.name)
        tok = _add_tokenizer(w, model_dir, rows)
        plan = [(src, dst, _gguf_type(dst, base.tensors[src].shape, qtype)) for src, dst in names.items()]
        for src, dst, ty in plan:
            shape = base.tensors[src].shape
            nbytes = _nbytes(shape, ty)
            w.add_tensor_info(dst, _byte_shape(shape, ty), np.dtype(np.uint8 if ty == "q8_0" else ty), nbytes,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0 if ty == "q8_0" else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        _write_data(w, base, plan, cfg)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return GGUFInfo(out, len(plan), qtype, out.stat().st_size, rows, tok)


def _tensor_names(base, cfg) -> dict[str, str]:
    """HF name -> llama.cpp name, for every tensor llama.cpp reads (rotary caches dropped)."""
    import gguf

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    names, unknown = {}, []
    for n in base.tensors:
        if n.endswith("rotary_emb.inv_freq"):
            continue
        dst = tmap.get_name(n, try_suffixes=(".weight", ".bias"))
        (unknown.append(n) if dst is None else names.__setitem__(n, dst))
    if unknown:
        raise ZhloraError(f"{base.folder}: tensors llama.cpp has no name for: {', '.join(unknown[:8])}; "
                          "is this a plain LLaMA checkpoint?")
    if "output.weight" not in names.values() and not cfg.get("tie_word_embeddings"):
        raise ZhloraError(f"{base.folder}: no lm_head.weight and tie_word_embeddings is false")
    return names


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or {}
    return float(cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0)


def _add_metadata(w, cfg: dict, qtype: str, name: str) -> None:
    import gguf

    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_name(name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_vocab_size(cfg["vocab_size"])
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(w, model_dir: Path, rows: int) -> str:
    """Write the vocabulary llama.cpp needs; returns which kind it was."""
    import gguf

    vocab = _load_vocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(ttype)
    if len(tokens) > rows:
        raise ZhloraError(f"{model_dir}: the tokenizer has {len(tokens)} tokens but the embedding only "
                          f"{rows} rows; export the merged model whose vocabulary matches")
    for i in range(len(tokens), rows):          # llama.cpp wants one token per embedding row
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(w, quiet=True)
    return vocab.name


def _load_vocab(model_dir: Path):
    import gguf

    if (model_dir / "tokenizer.model").is_file():
        return gguf.SentencePieceVocab(model_dir)
    tried = []
    for cls in (gguf.LlamaHfVocab, gguf.BpeVocab):
        try:
            return cls(model_dir)
        except (FileNotFoundError, TypeError, ValueError, KeyError, OSError) as e:
            tried.append(f"{cls.__name__}: {e}")
    raise ZhloraError(f"{model_dir}: no tokenizer llama.cpp can use (it reads a SentencePiece "
                      "tokenizer.model or a BPE tokenizer.json; " + "; ".join(tried) + "). Put the "
                      "original model's tokenizer.model in the folder and export again")


def _gguf_type(dst: str, shape, qtype: str):
    if len(shape) == 1:
        return np.float32                     # norms stay f32, as llama.cpp keeps them
    if qtype == "q8_0" and shape[-1] % 32 == 0:
        return "q8_0"
    return np.float16


def _byte_shape(shape, ty) -> tuple[int, ...]:
    if ty == "q8_0":                          # 32 values -> 2-byte scale + 32 int8
        return (*shape[:-1], shape[-1] // 32 * 34)
    return tuple(shape)


def _nbytes(shape, ty) -> int:
    n = 1
    for s in _byte_shape(shape, ty):
        n *= s
    return n if ty == "q8_0" else n * np.dtype(ty).itemsize


def _write_data(w, base, plan, cfg: dict) -> None:
    import gguf

    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    by_file: dict = {}
    for item in plan:
        by_file.setdefault(base.tensors[item[0]].file, []).append(item)
    order = {item[0]: i for i, item in enumerate(plan)}
    if [i for f in by_file.values() for i in (order[x[0]] for x in f)] != list(range(len(plan))):
        raise ZhloraError("internal error: GGUF tensors out of order")
    for file, items in by_file.items():
        with base.open_file(file) as get:
            for src, dst, ty in items:
                t = get(src).to(torch.float32)
                if dst.endswith("attn_q.weight"):
                    t = permute_for_llama_cpp(t, heads)
                elif dst.endswith("attn_k.weight"):
                    t = permute_for_llama_cpp(t, kv_heads)
                a = t.numpy()
                data = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0) if ty == "q8_0" else a.astype(ty)
                w.write_tensor_data(data)


def permute_for_llama_cpp(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads*head_dim, in): HF stores each head's rotary pairs as [first half | second half];
    llama.cpp wants them interleaved (x0, x_half, x1, x_half+1, ...)."""
    out, inp = w.shape
    return w.reshape(n_heads, 2, out // n_heads // 2, inp).transpose(1, 2).reshape(out, inp)
