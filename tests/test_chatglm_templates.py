"""Golden ids and label masks of the ChatGLM templates with the fixed tokenizers in
tests/assets/chatglm (single- and multi-turn), plus the family registry entries.

The generation prompt ends at `<|assistant|>` (chatglm3, glm4): the newline after it is the
model's to write, as THUDM's build_chat_input and the official GLM-4 chat_template have it,
so it is trained with the answer."""
from __future__ import annotations

from pathlib import Path

import pytest

import zhlora  # noqa: F401
from zhlora.conversation import Conversation
from zhlora.families import family_for_config
from zhlora.models.chatglm import ChatGLM2Tokenizer, ChatGLM4Tokenizer, ChatGLM6BTokenizer
from zhlora.templates import get_template

ASSETS = Path(__file__).parent / "assets" / "chatglm"
X = -100
SINGLE = Conversation.from_pairs([("你好", "你好！")])
MULTI = Conversation.from_pairs([("你好", "你好！"), ("今天天气", "很好。")])
GOLDEN = {
    "chatglm": (
        [150, 86, 89, 150, 246, 90], 3,  # no history: the bare query, as chat() sends it
        [111, 169, 215, 253, 259, 4, 245, 218, 93, 4, 241, 218, 93, 246, 4, 258, 169, 215, 254, 259, 4, 245,
         218, 267, 155, 4, 241, 218, 86, 89, 215, 133, 216, 90],
        [X] * 30 + [215, 133, 216, 90]),
    "chatglm2": (
        [421, 423, 278, 311, 274, 334, 374, 268, 340, 365, 337, 259, 340, 340, 361, 337, 319, 366, 2], 16,
        [421, 423, 278, 311, 274, 334, 374, 268, 340, 365, 337, 259, 340, 340, 361, 337, 259, 366, 340, 340,
         378, 311, 274, 334, 53, 268, 340, 365, 337, 387, 324, 340, 340, 361, 337, 334, 301, 335, 2],
        [X] * 35 + [334, 301, 335, 2]),
    "chatglm3": (
        [421, 423, 426, 334, 340, 319, 427, 334, 340, 319, 366, 426], 7,
        [421, 423, 426, 334, 340, 319, 427, 334, 340, 319, 366, 426, 334, 340, 285, 324, 427, 334, 340, 334,
         301, 335, 426],
        [X] * 7 + [334, 340, 319, 366, 426] + [X] * 5 + [334, 340, 334, 301, 335, 426]),
    "glm4": (
        [633, 635, 638, 10, 448, 639, 10, 448, 352, 638], 6,
        [633, 635, 638, 10, 448, 639, 10, 448, 352, 638, 10, 436, 483, 639, 10, 503, 257, 638],
        [X] * 6 + [10, 448, 352, 638] + [X] * 4 + [10, 503, 257, 638]),
}
TEXT = {  # what the ids decode to, as a reader would check them
    "chatglm": "[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：今天天气\n答：[gMASK]<sop> 很好。<eop>",
    "chatglm2": "[gMASK]sop[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：今天天气\n\n答： 很好。",
    "chatglm3": "[gMASK]sop<|user|>\n 你好<|assistant|>\n 你好！<|user|>\n 今天天气<|assistant|>\n 很好。<|user|>",
    "glm4": "[gMASK]<sop><|user|>\n你好<|assistant|>\n你好！<|user|>\n今天天气<|assistant|>\n很好。<|user|>",
}


def _tokenizer(name):
    if name == "chatglm":
        return ChatGLM6BTokenizer.from_pretrained(ASSETS / "v1")
    if name == "glm4":
        pytest.importorskip("tiktoken")
        return ChatGLM4Tokenizer.from_pretrained(ASSETS / "glm4")
    return ChatGLM2Tokenizer.from_pretrained(ASSETS / "v2")


@pytest.mark.parametrize("name", list(GOLDEN))
def test_chatglm_templates_golden(name):
    tok, tpl = _tokenizer(name), get_template(name)
    single_ids, single_prompt_len, multi_ids, multi_labels = GOLDEN[name]
    one = tpl.encode(SINGLE, tok)
    assert one.input_ids == single_ids
    assert one.labels == [X] * single_prompt_len + single_ids[single_prompt_len:]
    two = tpl.encode(MULTI, tok)
    assert two.input_ids == multi_ids and two.labels == multi_labels
    assert tok.decode(two.input_ids) == TEXT[name]
    # the generation prompt is the training ids up to the last answer
    prompt = tpl.encode_prompt(Conversation.from_pairs([("你好", "你好！"), ("今天天气", None)]), tok)
    start = max(i for i, label in enumerate(multi_labels) if label == X) + 1  # last answer starts here
    assert prompt == multi_ids[:start]


def test_chatglm_templates_v1_trains_answer_not_sop():
    tok = _tokenizer("chatglm")
    enc = get_template("chatglm").encode(SINGLE, tok)
    sop = enc.input_ids.index(tok.bos_token_id)
    assert enc.input_ids[sop - 1] == tok.gmask_token_id and enc.labels[sop] == X
    assert enc.labels[sop + 1:] == enc.input_ids[sop + 1:] and enc.labels[-1] == tok.eos_token_id


def test_chatglm_templates_truncation_keeps_special_tokens():
    tok = _tokenizer("chatglm2")
    long = Conversation.from_pairs([("你好" * 30, "很好。" * 30)])
    enc = get_template("chatglm2").encode(long, tok, cutoff_len=24)
    assert enc.truncated and len(enc.input_ids) == 24
    assert enc.input_ids[:2] == [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("sop")]
    assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id


@pytest.mark.parametrize("fields,family,template", [
    ({"position_encoding_2d": True, "inner_hidden_size": 16384}, "chatglm-6b", "chatglm"),
    ({"multi_query_attention": True, "seq_length": 32768, "padded_vocab_size": 65024}, "chatglm", "chatglm2"),
    ({"multi_query_attention": True, "seq_length": 8192, "padded_vocab_size": 65024}, "chatglm", "chatglm3"),
    ({"multi_query_attention": True, "seq_length": 131072, "padded_vocab_size": 151552, "rope_ratio": 500},
     "chatglm", "glm4"),
])
def test_chatglm_templates_family_picks_template(fields, family, template):
    fam = family_for_config({"model_type": "chatglm", **fields})
    assert fam.name == family and fam.default_template({"model_type": "chatglm", **fields}) == template
    assert "output_layer" not in fam.lora_targets("all") and "lm_head" not in fam.lora_targets("all")
    assert fam.lora_targets("default") == ["query_key_value"]
    assert fam.packing is (family == "chatglm")


def test_chatglm_templates_unknown_config_is_a_clear_error():
    from zhlora.errors import ZhloraError

    with pytest.raises(ZhloraError, match="do not say which ChatGLM"):
        family_for_config({"model_type": "chatglm", "hidden_size": 64})
