"""ChatGLM tokenizers over THUDM-layout vocab files (small ones trained in tests/assets/chatglm,
same special-token layout), loaded through zhlora's load_tokenizer / AutoTokenizer with the
tokenizer_config.json THUDM ships (tokenizer_class + auto_map to absent remote code)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zhlora.errors import ZhloraError
from zhlora.models.chatglm.tokenization import V2_SPECIALS
from zhlora.models.chatglm.tokenization_glm4 import GLM4_SPECIALS
from zhlora.models.loading import load_tokenizer

ASSETS = Path(__file__).parent / "assets" / "chatglm"
TEXT = "你好，世界！\n  Hello\tworld     end"


def _folder(tmp_path, sub) -> Path:
    d = tmp_path / sub
    shutil.copytree(ASSETS / sub, d)
    cfg = {"v1": {"model_type": "chatglm", "position_encoding_2d": True, "inner_hidden_size": 128},
           "v2": {"model_type": "chatglm", "multi_query_attention": True, "padded_vocab_size": 432},
           "glm4": {"model_type": "chatglm", "multi_query_attention": True, "rope_ratio": 500}}[sub]
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_chatglm_tokenizer_v1_pieces_and_layout(tmp_path):
    tok = load_tokenizer(_folder(tmp_path, "v1"))
    assert type(tok).__name__ == "ChatGLM6BTokenizer"
    pieces = tok.tokenize(TEXT)
    assert "<n>" in pieces and "<|tab|>" in pieces and "<|blank_2|>" in pieces and "<|blank_5|>" in pieces
    assert tok.decode(tok.encode(TEXT, add_special_tokens=False)) == TEXT
    sp = tok.sp
    assert (tok.gmask_token_id, tok.bos_token_id, tok.eos_token_id) == \
        (sp.piece_to_id("[gMASK]"), sp.piece_to_id("<sop>"), sp.piece_to_id("<eop>"))
    assert tok.mask_token_id == sp.piece_to_id("[MASK]") and tok.pad_token_id == 3
    assert tok.build_inputs_with_special_tokens([10, 11], [12]) == \
        [10, 11, tok.gmask_token_id, tok.bos_token_id, 12, tok.eos_token_id]
    assert tok("你好")["input_ids"][-2:] == [tok.gmask_token_id, tok.bos_token_id]


def test_chatglm_tokenizer_v1_old_150k_offset_is_mapped(tmp_path):
    d = _folder(tmp_path, "v1")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    base = load_tokenizer(d)
    cfg["num_image_tokens"] = 20000
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    old = load_tokenizer(d)
    assert old.gmask_token_id == base.gmask_token_id + 20000
    ids = old.encode(TEXT, add_special_tokens=False)
    assert ids == [i + 20000 for i in base.encode(TEXT, add_special_tokens=False)]
    assert old.decode(ids) == TEXT


def test_chatglm_tokenizer_v2_specials_after_sentencepiece(tmp_path):
    tok = load_tokenizer(_folder(tmp_path, "v2"))
    assert type(tok).__name__ == "ChatGLM2Tokenizer"
    n = tok.sp.get_piece_size()
    assert [tok.convert_tokens_to_ids(t) for t in V2_SPECIALS] == list(range(n, n + len(V2_SPECIALS)))
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (0, 2, "left")
    assert tok.build_inputs_with_special_tokens([10], [11]) == [n + 1, n + 3, 10, 11, 2]
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert tok.decode(ids) == TEXT
    assert tok.decode([n + 6] + ids[:2]) == "<|user|>" + tok.decode(ids[:2])
    batch = tok(["你好", "你好，世界！"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["input_ids"][0][0] == 0  # left padding with <unk>


def test_chatglm_tokenizer_glm4_tiktoken(tmp_path):
    pytest.importorskip("tiktoken")
    tok = load_tokenizer(_folder(tmp_path, "glm4"))
    assert type(tok).__name__ == "ChatGLM4Tokenizer"
    n = sum(1 for line in (ASSETS / "glm4" / "tokenizer.model").read_text().splitlines() if line.strip())
    assert [tok.convert_tokens_to_ids(t) for t in GLM4_SPECIALS] == list(range(n, n + len(GLM4_SPECIALS)))
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode("utf-8"))  # BPE merges happened
    assert tok.encode("<|user|>", add_special_tokens=False) != [n + 7]  # text, not the special token
    assert tok.build_inputs_with_special_tokens([5]) == [n + 2, n + 4, 5]


@pytest.mark.parametrize("sub,saved", [("v1", "ice_text.model"), ("v2", "tokenizer.model")])
def test_chatglm_tokenizer_saves_thudm_layout(tmp_path, sub, saved):
    tok = load_tokenizer(_folder(tmp_path, sub))
    out = tmp_path / "saved"
    tok.save_pretrained(out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "ChatGLMTokenizer"
    assert cfg["auto_map"]["AutoTokenizer"][0] == "tokenization_chatglm.ChatGLMTokenizer"
    assert (out / saved).read_bytes() == (ASSETS / sub / saved).read_bytes()
    (out / "config.json").write_text((tmp_path / sub / "config.json").read_text())
    again = load_tokenizer(out)
    assert again.encode(TEXT) == tok.encode(TEXT)


def test_chatglm_tokenizer_missing_vocab_is_a_clear_error(tmp_path):
    d = _folder(tmp_path, "v2")
    (d / "tokenizer.model").unlink()
    with pytest.raises(ZhloraError, match="tokenizer.model"):
        load_tokenizer(d)
