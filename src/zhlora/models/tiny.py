"""Tiny random models and a character tokenizer, for tests, benchmarks and the demo.

`make_tiny_model(out_dir, family="llama")` writes a complete Hugging Face folder
(config.json, model.safetensors, tokenizer files) that every zhlora command accepts.
Chinese is tokenized per character, which is also how GEC wants it.
"""
from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = {
    "llama": ["<unk>", "<s>", "</s>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "glm4": ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
             "<|user|>", "<|assistant|>", "<|observation|>"],
}
ROLE_TOKENS = {"llama": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>"},
               "qwen2": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
               "glm4": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}}
BASE_CHARS = ("\n !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
              "abcdefghijklmnopqrstuvwxyz{|}~，。！？、；：“”‘’（）《》…—")


def build_char_tokenizer(texts=(), family: str = "llama", extra_chars: str = ""):
    """A deterministic character-level fast tokenizer (specials first, then sorted chars)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[family]
    chars = sorted(set(BASE_CHARS + extra_chars + "".join(texts)) - set(specials))
    vocab = {t: i for i, t in enumerate(specials + [c for c in chars if c])}
    unk = "<unk>" if "<unk>" in vocab else specials[0]
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **ROLE_TOKENS[family])
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials
                                                         if s not in ROLE_TOKENS[family].values()]})
    return tok


def tiny_config(family: str, vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int | None = None, max_pos: int = 512, tok=None,
                init_range: float = 0.1):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads,
                  intermediate_size=intermediate or hidden * 3, max_position_embeddings=max_pos,
                  tie_word_embeddings=False, initializer_range=init_range)
    if tok is not None:
        common.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model_type = {"llama": "llama", "qwen2": "qwen2", "glm4": "glm4"}[family]
    return AutoConfig.for_model(model_type, **common)


def make_tiny_model(out_dir: str | Path, family: str = "llama", texts=(), seed: int = 0,
                    hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    extra_chars: str = "", vocab_size: int | None = None, tokenizer=None) -> Path:
    """Write a random tiny model + char tokenizer to `out_dir`; returns the folder.

    `vocab_size` smaller than the tokenizer simulates a base whose tokenizer was extended
    (Chinese-LLaMA style); larger pads the embedding as many real checkpoints do.
    """
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    tok = tokenizer or build_char_tokenizer(texts, family, extra_chars)
    cfg = tiny_config(family, vocab_size or len(tok), hidden, layers, heads, kv_heads, tok=tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
