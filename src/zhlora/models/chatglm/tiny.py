"""Tiny random ChatGLM folders in THUDM's exact layout, for tests and demos.

`make_tiny_chatglm(out, "chatglm2")` writes config.json (with THUDM's `auto_map`, whose .py
files are absent on purpose), generation_config.json, model.safetensors and the tokenizer files
THUDM ships (`ice_text.model` / `tokenizer.model` + tokenizer_config.json naming
`ChatGLMTokenizer` / `ChatGLM4Tokenizer`). The tokenizers are small models trained here with the
same special-token layout as the real vocabularies (which cannot be downloaded).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import torch

from zhlora.errors import ZhloraError

VERSIONS = ("chatglm", "chatglm2", "chatglm3", "glm4")
CORPUS = ["今天天气很好，我们去公园散步。", "请把这句话翻译成英文：我爱北京天安门。", "他的错误在于没有仔细检查。",
          "人工智能正在改变世界。", "你好，世界！", "[Round 0]\n问：你好\n答：你好！", "Hello world, this is a test.",
          "问：请改正句子中的错误。答：好的。", "def f(x):\n    return x + 1\n"]
V1_SPECIALS = ["<n>", "<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, 81)] + \
    ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
AUTO_MAP_V1 = {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
               "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
               "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}
AUTO_MAP_V2 = {**AUTO_MAP_V1, "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"}


def train_sentencepiece(path: Path, version: str, texts=CORPUS) -> Path:
    """A small SentencePiece model: v1 with ChatGLM-6B's special pieces (`<n>`, blanks, [gMASK],
    <sop>, <eop> ...; pad id 3), v2/v3 with byte fallback (unk 0, <s> 1, </s> 2)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    v1 = version == "chatglm"
    if v1:  # THUDM's preprocessing happens before SentencePiece
        from zhlora.models.chatglm.tokenization import ChatGLM6BTokenizer
        texts = [ChatGLM6BTokenizer.preprocess(t) for t in texts]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) * 4), model_writer=buf, vocab_size=300 if v1 else 420, minloglevel=2,
        model_type="bpe", character_coverage=1.0, num_threads=1, hard_vocab_limit=False,
        user_defined_symbols=V1_SPECIALS if v1 else [], byte_fallback=not v1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3 if v1 else -1, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    path.write_bytes(buf.getvalue())
    return path


def write_glm4_vocab(path: Path, texts=CORPUS) -> Path:
    """A tiktoken-style `base64 rank` file: the 256 bytes, then each character's UTF-8 prefixes
    and the most common character pairs, so BPE merges can reach them."""
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    chars = sorted({c for t in texts for c in t})
    words = sorted({t[i:i + 2] for t in texts for i in range(len(t) - 1) if not t[i:i + 2].isspace()})
    for piece in chars + words:
        data = piece.encode("utf-8")
        for end in range(2, len(data) + 1):
            if data[:end] not in seen:
                seen.add(data[:end])
                tokens.append(data[:end])
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)), encoding="utf-8")
    return path


def write_tokenizer(folder: Path, version: str) -> None:
    """Vocabulary file + THUDM-style tokenizer_config.json for `version`."""
    if version == "glm4":
        write_glm4_vocab(folder / "tokenizer.model")
        cfg = {"tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "padding_side": "left", "clean_up_tokenization_spaces": False,
               "remove_space": False, "do_lower_case": False,
               "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]}}
    elif version == "chatglm":
        train_sentencepiece(folder / "ice_text.model", version)
        cfg = {"tokenizer_class": "ChatGLMTokenizer", "bos_token": "<sop>", "eos_token": "<eop>",
               "end_token": "</s>", "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>",
               "unk_token": "<unk>", "num_image_tokens": 0, "remove_space": False, "do_lower_case": False,
               "padding_side": "left", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}
    else:
        train_sentencepiece(folder / "tokenizer.model", version)
        cfg = {"tokenizer_class": "ChatGLMTokenizer", "remove_space": False, "do_lower_case": False,
               "padding_side": "left", "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


def tiny_config_fields(version: str, tok, hidden: int, layers: int, heads: int, kv_groups: int) -> dict:
    """config.json fields as THUDM's config classes write them, sized for `tok`."""
    if version == "chatglm":
        return {"architectures": ["ChatGLMForConditionalGeneration"], "auto_map": AUTO_MAP_V1,
                "model_type": "chatglm", "vocab_size": len(tok), "hidden_size": hidden, "num_layers": layers,
                "num_attention_heads": heads, "inner_hidden_size": 4 * hidden, "layernorm_epsilon": 1e-5,
                "max_sequence_length": 2048, "position_encoding_2d": True, "bos_token_id": tok.bos_token_id,
                "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                "mask_token_id": tok.mask_token_id, "gmask_token_id": tok.gmask_token_id,
                "pre_seq_len": None, "prefix_projection": False, "quantization_bit": 0, "use_cache": True,
                "torch_dtype": "float32"}
    padded = (len(tok) + 15) // 16 * 16
    fields = {"architectures": ["ChatGLMForConditionalGeneration"], "auto_map": AUTO_MAP_V2,
              "model_type": "chatglm", "add_bias_linear": False, "add_qkv_bias": True,
              "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
              "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
              "ffn_hidden_size": hidden * 8 // 3, "fp32_residual_connection": False, "hidden_dropout": 0.0,
              "hidden_size": hidden, "kv_channels": hidden // heads, "layernorm_epsilon": 1e-5,
              "multi_query_attention": True, "multi_query_group_num": kv_groups, "num_attention_heads": heads,
              "num_layers": layers, "original_rope": True, "padded_vocab_size": padded, "vocab_size": padded,
              "post_layer_norm": True, "pre_seq_len": None, "prefix_projection": False, "quantization_bit": 0,
              "rmsnorm": True, "seq_length": {"chatglm2": 32768, "chatglm3": 8192, "glm4": 131072}[version],
              "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "float32",
              "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if version == "glm4":
        fields.update(rope_ratio=500, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|user|>"),
                                                    tok.convert_tokens_to_ids("<|observation|>")])
    return fields


def make_tiny_chatglm(out_dir, version: str = "chatglm2", hidden: int = 32, layers: int = 2, heads: int = 4,
                      kv_groups: int = 2, seed: int = 0, tokenizer_dir=None) -> Path:
    """Write a random tiny ChatGLM folder in THUDM's layout; returns the folder.

    `tokenizer_dir`: copy the tokenizer files from there instead of training new ones."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zhlora.models.chatglm.configuration import ChatGLMConfig

    if version not in VERSIONS:
        raise ZhloraError(f"unknown ChatGLM version {version!r}; use one of {', '.join(VERSIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir:
        for name in ("ice_text.model", "tokenizer.model", "tokenizer_config.json"):
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy(Path(tokenizer_dir) / name, out / name)
    else:
        write_tokenizer(out, version)
    tok = AutoTokenizer.from_pretrained(str(out), config=ChatGLMConfig())
    fields = tiny_config_fields(version, tok, hidden, layers, heads, kv_groups)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(ChatGLMConfig(**fields), dtype=torch.float32)
    model.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = fields["auto_map"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
