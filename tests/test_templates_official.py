"""zhlora's templates against the official formats, token id for token id.

For each template that stands for a published model, every conversation in
`_official.CONVERSATIONS` is rendered with the model's official template (Jinja where one is
published, else the model authors' Python code, followed line by line below) and tokenized with
a real vocabulary where one can be had (llama.cpp's Qwen2 and LLaMA vocabularies from the
llama-cpp-python sdist). Asserted: zhlora's generation prompt == the official rendering with
`add_generation_prompt=True`, and zhlora's training ids == the official rendering of the whole
conversation (a trailing newline after the last end-of-turn token may be absent; where the
official rendering has no end token after the last answer, zhlora's one extra end token is
checked to be one the model stops on). Material and provenance: tests/assets/official/SOURCES.md.
"""
from __future__ import annotations

import json

import pytest

from _official import CONVERSATIONS, TEMPLATES, asking, encode_rendered, messages, vocab_tokenizer
from zhlora.chat_jinja import render_chat_template
from zhlora.templates import get_template

CONVS = sorted(CONVERSATIONS)
GLM_SPECIALS = ("[gMASK]", "<sop>", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


def official_jinja_ids(tok, jinja: str, conv, specials=()):
    """(prompt ids, full ids) of the official Jinja, tokenized as apply_chat_template does."""
    kw = {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or ""}
    prompt = render_chat_template(jinja, messages(asking(conv)), add_generation_prompt=True, **kw)
    full = render_chat_template(jinja, messages(conv), add_generation_prompt=False, **kw)
    return encode_rendered(tok, prompt, specials), encode_rendered(tok, full, specials)


def assert_same_as_official(name, tok, conv, prompt_ids, full_ids, extra_end=None):
    t = get_template(name)
    assert t.encode_prompt(asking(conv), tok) == prompt_ids, tok.decode(t.encode_prompt(asking(conv), tok))
    train = t.encode(conv, tok).input_ids
    if extra_end is not None:  # the official rendering stops after the answer's text
        assert train[-1] in extra_end and train[:-1] == full_ids, tok.decode(train)
        return
    newline = tok.encode("\n", add_special_tokens=False)
    assert train == full_ids or (full_ids[-len(newline):] == newline and train == full_ids[:-len(newline)]), \
        (tok.decode(train), tok.decode(full_ids))


# -- Qwen2 / Qwen2.5 / Qwen3 (same BPE, same special tokens) on Qwen2's real 151,936-token vocabulary ------------------------------------
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("name,jinja", [("chatml", "Qwen--Qwen2-7B-Instruct.jinja"),
                                        ("qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja"),
                                        ("qwen3", "Qwen-Qwen3-0.6B.jinja")])
def test_qwen_matches_official_jinja(name, jinja, conv):
    tok = vocab_tokenizer("qwen2")
    assert tok.vocab_size == 151936
    c = CONVERSATIONS[conv]
    assert_same_as_official(name, tok, c, *official_jinja_ids(tok, (TEMPLATES / jinja).read_text(), c))


def test_qwen3_trains_the_empty_think_block_of_the_last_answer_only():
    tok, c = vocab_tokenizer("qwen2"), CONVERSATIONS["three-rounds"]
    enc = get_template("qwen3").encode(c, tok)
    text = tok.decode(enc.input_ids)
    assert text.count("<think>") == 1 and "<think>\n\n</think>\n\n1\n2\n3" in text
    trained = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != -100])
    assert trained.endswith("<think>\n\n</think>\n\n1\n2\n3<|im_end|>")
    assert get_template("qwen3").answer_text("<think>\n\n</think>\n\n好的") == "好的"


def test_qwen2_and_qwen25_differ_only_by_default_system():
    tok, c = vocab_tokenizer("qwen2"), CONVERSATIONS["single"]
    q2 = get_template("chatml").encode_prompt(asking(c), tok)
    q25 = get_template("qwen2.5").encode_prompt(asking(c), tok)
    assert q2 != q25 and "You are Qwen, created by Alibaba Cloud." in tok.decode(q25)


# -- Llama-2-chat and Chinese-Alpaca-2 on LLaMA's real SentencePiece vocabulary -------------------
@pytest.mark.parametrize("conv", CONVS)
def test_llama2_matches_official_jinja(conv):
    tok = vocab_tokenizer("llama-spm")
    c = CONVERSATIONS[conv]
    jinja = (TEMPLATES / "meta-llama--Llama-2-7b-chat-hf.jinja").read_text()
    assert_same_as_official("llama2", tok, c, *official_jinja_ids(tok, jinja, c))


def chinese_alpaca_2_reference(tok, conv, with_answer: bool) -> list[int]:
    """hfl's Chinese-LLaMA-Alpaca-2 scripts/inference/gradio_demo.py (quoted in
    hfl--chinese-alpaca-2-7b.txt): first turn with the system prompt, later turns
    '<s>' + '[INST] q [/INST]', each answer ' ' + a + '</s>'; encode(add_special_tokens=True)
    adds the first <s>. No official Jinja exists."""
    system = conv.system or "You are a helpful assistant. 你是一个乐于助人的助手。"
    msgs = conv.messages if with_answer else conv.messages[:-1]
    text = ""
    for i in range(0, len(msgs), 2):
        q = msgs[i].content
        text += (f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST]" if i == 0 else f"<s>[INST] {q} [/INST]")
        if i + 1 < len(msgs):
            text += " " + msgs[i + 1].content + "</s>"
    return tok.encode(text, add_special_tokens=True)


@pytest.mark.parametrize("conv", CONVS)
def test_chinese_alpaca_2_matches_authors_code(conv):
    tok = vocab_tokenizer("llama-spm")
    c = CONVERSATIONS[conv]
    assert_same_as_official("chinese-alpaca-2", tok, c, chinese_alpaca_2_reference(tok, c, False),
                            chinese_alpaca_2_reference(tok, c, True))


def test_sentencepiece_runs_are_encoded_whole():
    """Encoding the parts of a run separately would put a word-start mark before the content."""
    tok = vocab_tokenizer("llama-spm")
    ids = get_template("alpaca").encode(CONVERSATIONS["single"], tok).input_ids
    text = get_template("alpaca").default_system + "\n\n### Instruction:\n你好，请介绍一下你自己。\n\n### Response:\n"
    assert ids[: len(tok.encode(text))] == tok.encode(text)


# -- GLM-4 (glm-4-9b-chat; the HF glm-4-9b-chat-hf layout is derived from it, see SOURCES.md) -----
def _glm4_tokenizers():
    from zhlora.models.tiny import build_char_tokenizer

    pytest.importorskip("tiktoken")
    from zhlora.models.chatglm import ChatGLM4Tokenizer

    native = ChatGLM4Tokenizer.from_pretrained(TEMPLATES.parent.parent / "chatglm" / "glm4")
    texts = [m.content for c in CONVERSATIONS.values() for m in c.messages] + [c.system for c in CONVERSATIONS.values()]
    return {"native (chatglm format, tiny tiktoken)": (native, GLM_SPECIALS),
            "fast (HF glm4 format, char vocab)": (build_char_tokenizer(texts, "glm4"), ())}


@pytest.mark.parametrize("conv", CONVS)
def test_glm4_matches_official_jinja(conv):
    """No real GLM-4 vocabulary can be had from a registry: zhlora's tiny GLM-4 vocabularies."""
    jinja = (TEMPLATES / "THUDM--glm-4-9b-chat.jinja").read_text()
    c = CONVERSATIONS[conv]
    for kind, (tok, specials) in _glm4_tokenizers().items():
        user = tok.convert_tokens_to_ids("<|user|>")
        prompt, full = official_jinja_ids(tok, jinja, c, specials)
        assert_same_as_official("glm4", tok, c, prompt, full, extra_end={user})


def test_glm4_llama_cpp_variant_adds_the_newline_to_the_prompt():
    """llama.cpp's ChatGLM4 string ends the generation prompt with `<|assistant|>\\n`; the Hub's
    ends with `<|assistant|>` and the model writes the newline (zhlora trains it)."""
    cases = json.loads((TEMPLATES / "llama.cpp-test-chat-template-glm.json").read_text(encoding="utf-8"))
    tok, _ = _glm4_tokenizers()["fast (HF glm4 format, char vocab)"]
    c = CONVERSATIONS["system-multi"]
    prompt, _ = official_jinja_ids(tok, cases["ChatGLM4"]["template_str"], c)
    assert prompt == get_template("glm4").encode_prompt(asking(c), tok) + tok.encode("\n", add_special_tokens=False)
    # llama.cpp's own expected rendering of its test conversation, through the same string
    rendered = render_chat_template(cases["ChatGLM4"]["template_str"], cases["conversation"], True)
    assert rendered == cases["ChatGLM4"]["expected_output"]


# -- ChatGLM3 / ChatGLM2 / ChatGLM-6B: the official format is Python code -------------------------
def _chatglm_tok(version: str):
    from zhlora.models.chatglm import ChatGLM2Tokenizer, ChatGLM6BTokenizer

    base = TEMPLATES.parent.parent / "chatglm"
    return ChatGLM6BTokenizer.from_pretrained(base / "v1") if version == "v1" else \
        ChatGLM2Tokenizer.from_pretrained(base / "v2")


def chatglm3_build_chat_input(tok, conv, with_answer: bool) -> list[int]:
    """THUDM--chatglm3-6b.txt: get_prefix_tokens + build_single_message(role, "", content) per
    message (`[<|role|>] + encode(metadata + "\\n") + encode(content)`), then `<|assistant|>`
    (build_chat_input) -- not its Jinja, which differs by a space after each newline."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731  (SentencePiece encode)
    ids = [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("sop")]
    msgs = ([("system", conv.system)] if conv.system else []) + [(m.role, m.content) for m in conv.messages]
    for role, content in (msgs if with_answer else msgs[:-1]):
        ids += [tok.convert_tokens_to_ids(f"<|{role}|>")] + enc("\n") + enc(content)
    return ids if with_answer else ids + [tok.convert_tokens_to_ids("<|assistant|>")]


@pytest.mark.parametrize("conv", CONVS)
def test_chatglm3_matches_build_chat_input(conv):
    tok, c = _chatglm_tok("v2"), CONVERSATIONS[conv]
    assert_same_as_official("chatglm3", tok, c, chatglm3_build_chat_input(tok, c, False),
                            chatglm3_build_chat_input(tok, c, True), extra_end={tok.convert_tokens_to_ids("<|user|>")})


def _history(conv, with_answer):
    msgs = conv.messages if with_answer else conv.messages[:-1]
    pairs = [(msgs[i].content, msgs[i + 1].content) for i in range(0, len(msgs) - 1, 2)]
    query = msgs[-1].content if msgs[-1].role == "user" else msgs[-2].content
    history = pairs if msgs[-1].role == "user" else pairs[:-1]
    return query, history, (msgs[-1].content if with_answer else None)


@pytest.mark.parametrize("conv", [c for c in CONVS if not CONVERSATIONS[c].system])  # no system role
def test_chatglm2_matches_build_prompt(conv):
    """THUDM--chatglm2-6b.txt: [gMASK] sop + encode(build_prompt(query, history)); training =
    build_inputs_with_special_tokens(prompt, answer) = prefix + prompt + answer + eos."""
    tok, c = _chatglm_tok("v2"), CONVERSATIONS[conv]
    query, history, answer = _history(c, True)
    prompt = "".join(f"[Round {i + 1}]\n\n问：{q}\n\n答：{r}\n\n" for i, (q, r) in enumerate(history))
    prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
    prefix = [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("sop")]
    p_ids = prefix + tok.encode(prompt, add_special_tokens=False)
    full = p_ids + tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    assert_same_as_official("chatglm2", tok, c, p_ids, full)


@pytest.mark.parametrize("conv", [c for c in CONVS if not CONVERSATIONS[c].system])
def test_chatglm_6b_matches_chat(conv):
    """THUDM--chatglm-6b.txt: chat() sends the bare query without history, else
    "[Round i]\\n问：q\\n答：r\\n"... from 0; the tokenizer APPENDS [gMASK] <sop>; training =
    build_inputs_with_special_tokens(prompt, answer) = prompt + [gMASK] <sop> + answer + <eop>."""
    tok, c = _chatglm_tok("v1"), CONVERSATIONS[conv]
    query, history, answer = _history(c, True)
    if not history:
        prompt = query
    else:
        prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
        prompt += f"[Round {len(history)}]\n问：{query}\n答："
    p_ids = tok.encode(prompt, add_special_tokens=False) + [tok.gmask_token_id, tok.bos_token_id]
    full = p_ids + tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
    assert_same_as_official("chatglm", tok, c, p_ids, full)
