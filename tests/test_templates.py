"""Golden renderings: every template, one single-turn and one multi-turn conversation, to
exact ids and label masks with a fixed character tokenizer.

Expected renderings are written by hand below; `[[...]]` marks the trained (label) spans.
"""
from __future__ import annotations

import re

import pytest

from zhlora.conversation import Conversation
from zhlora.errors import ZhloraError
from zhlora.models.tiny import build_char_tokenizer
from zhlora.templates import IGNORE_INDEX, TEMPLATES, get_template

SINGLE = Conversation.from_pairs([("你好", "世界")])
MULTI = Conversation.from_pairs([("你好", "世界"), ("再见", "明天")], system="助手")
ALPACA_SYS = ("Below is an instruction that describes a task. "
              "Write a response that appropriately completes the request.")
LLAMA2_SYS = "You are a helpful assistant. 你是一个乐于助人的助手。"
QWEN25_SYS = "You are Qwen, created by Alibaba Cloud."

GOLDEN = {
    ("default", "single"): "<s>Human: 你好\nAssistant: [[世界</s>]]",
    ("default", "multi"): "<s>助手\nHuman: 你好\nAssistant: [[世界</s>]]\nHuman: 再见\nAssistant: [[明天</s>]]",
    ("alpaca", "single"): f"<s>{ALPACA_SYS}\n\n### Instruction:\n你好\n\n### Response:\n[[世界</s>]]",
    ("alpaca", "multi"): "<s>助手\n\n### Instruction:\n你好\n\n### Response:\n[[世界</s>]]\n\n"
                         "### Instruction:\n再见\n\n### Response:\n[[明天</s>]]",
    ("llama2", "single"): "<s>[INST] 你好 [/INST][[ 世界 </s>]]",
    ("llama2", "multi"): "<s>[INST] <<SYS>>\n助手\n<</SYS>>\n\n你好 [/INST][[ 世界 </s>]]"
                         "<s>[INST] 再见 [/INST][[ 明天 </s>]]",
    ("chinese-alpaca-2", "single"): f"<s>[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n你好 [/INST][[ 世界</s>]]",
    ("chinese-alpaca-2", "multi"): "<s>[INST] <<SYS>>\n助手\n<</SYS>>\n\n你好 [/INST][[ 世界</s>]]"
                                   "<s>[INST] 再见 [/INST][[ 明天</s>]]",
    ("chatml", "single"): "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                          "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n[[世界<|im_end|>]]",
    ("chatml", "multi"): "<|im_start|>system\n助手<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
                         "<|im_start|>assistant\n[[世界<|im_end|>]]\n<|im_start|>user\n再见<|im_end|>\n"
                         "<|im_start|>assistant\n[[明天<|im_end|>]]",
    ("qwen2.5", "single"): "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                           "assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
                           "[[世界<|im_end|>]]",
    ("glm4", "single"): "[gMASK]<sop><|user|>\n你好<|assistant|>[[\n世界<|user|>]]",
    ("glm4", "multi"): "[gMASK]<sop><|system|>\n助手<|user|>\n你好<|assistant|>[[\n世界<|user|>]]"
                       "\n再见<|assistant|>[[\n明天<|user|>]]",
}
FAMILY_OF_TEMPLATE = {"default": "llama", "alpaca": "llama", "llama2": "llama", "chatml": "qwen2",
                      "glm4": "glm4", "chinese-alpaca-2": "llama", "qwen2.5": "qwen2"}
_tok_cache: dict = {}


def tokenizer_for(family: str):
    if family not in _tok_cache:
        _tok_cache[family] = build_char_tokenizer([ALPACA_SYS, LLAMA2_SYS, QWEN25_SYS, "你好世界再见明天助手"],
                                                  family)
    return _tok_cache[family]


def expected_ids(tok, golden: str) -> tuple[list[int], list[bool]]:
    """Split the hand-written rendering into special tokens and characters."""
    specials = sorted(tok.all_special_tokens + ["<s>", "</s>"], key=len, reverse=True)
    pattern = "|".join(re.escape(s) for s in specials)
    ids, trained, on = [], [], False
    for piece in re.split(r"(\[\[|\]\])", golden):
        if piece in ("[[", "]]"):
            on = piece == "[["
            continue
        for m in re.finditer(f"({pattern})|(.)", piece, flags=re.S):
            ids.append(tok.convert_tokens_to_ids(m.group(0)))
            trained.append(on)
    return ids, trained


@pytest.mark.parametrize("name,kind", sorted(GOLDEN))
def test_golden_rendering(name, kind):
    tok = tokenizer_for(FAMILY_OF_TEMPLATE[name])
    conv = SINGLE if kind == "single" else MULTI
    enc = get_template(name).encode(conv, tok)
    ids, trained = expected_ids(tok, GOLDEN[(name, kind)])
    assert enc.input_ids == ids, tok.decode(enc.input_ids)
    assert [lab != IGNORE_INDEX for lab in enc.labels] == trained
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(enc.labels, enc.input_ids))


def test_every_core_template_has_golden_cases():
    core = {"default", "alpaca", "llama2", "chinese-alpaca-2", "chatml", "qwen2.5", "glm4"}  # + qwen3: official tests
    assert core <= set(TEMPLATES)
    assert {n for n, _ in GOLDEN} == core


def test_pinned_ids_of_the_fixed_tokenizer():
    # guards the fixed tokenizer itself: specials first, then sorted characters
    tok = tokenizer_for("llama")
    assert get_template("default").encode(SINGLE, tok).input_ids[:3] == [1, 44, 89]  # <s>, "H" = 4 + (72 - 32), "u" = 4 + (117 - 32)


def test_last_turn_only():
    tok = tokenizer_for("qwen2")
    enc = get_template("chatml").encode(MULTI, tok, train_on="last")
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])
    assert trained == "明天<|im_end|>"


@pytest.mark.parametrize("name", sorted({n for n, _ in GOLDEN}))
def test_prompt_is_training_prefix(name):
    """Inference renders exactly the prompt the model was trained on."""
    tok = tokenizer_for(FAMILY_OF_TEMPLATE[name])
    t = get_template(name)
    full = t.encode(MULTI, tok).input_ids
    prompt = t.encode_prompt(Conversation(MULTI.messages[:-1], system=MULTI.system), tok)
    assert full[: len(prompt)] == prompt
    labels = t.encode(MULTI, tok).labels
    assert labels[len(prompt):] == full[len(prompt):]  # everything after the prompt is trained
    assert tok.decode(full[len(prompt):]).strip().startswith("明天")


def test_truncation_keeps_special_tokens_whole():
    tok = tokenizer_for("qwen2")
    t = get_template("chatml")
    long = Conversation.from_pairs([("长" * 200, "短" * 100), ("再见", "明天")])
    enc = t.encode(long, tok, cutoff_len=60)
    assert enc.truncated and len(enc) == 60
    text = tok.decode(enc.input_ids)
    # one whole round survives, with all of its structure tokens
    assert text.count("<|im_start|>") == 3 and text.count("<|im_end|>") == 3
    assert "再见" not in text and text.endswith("<|im_end|>")
    assert any(lab != IGNORE_INDEX for lab in enc.labels)


def test_truncation_too_short_for_structure():
    tok = tokenizer_for("qwen2")
    with pytest.raises(ZhloraError, match="cutoff_len"):
        get_template("chatml").encode(SINGLE, tok, cutoff_len=3)


def test_missing_special_token_is_explained():
    tok = tokenizer_for("llama")
    with pytest.raises(ZhloraError, match="<\\|im_start\\|>"):
        get_template("chatml").encode(SINGLE, tok)


def test_answer_text_drops_what_the_model_writes_before_the_content():
    """GLM-4 / ChatGLM3 prompts end at <|assistant|>; the model writes the newline itself."""
    assert get_template("glm4").answer_text("\n世界") == "世界"
    assert get_template("glm4").answer_text("世界") == "世界"
    assert get_template("chatml").answer_text("\n世界") == "\n世界"
