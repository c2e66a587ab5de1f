"""Exported GGUF files run in the real runtime: llama-cpp-python (llama.cpp) loads each file, its
tokenization of Chinese text equals zhlora's, and its greedy continuation equals zhlora's
(transformers / zhlora's native ChatGLM) token for token.

Skipped without the `llamacpp` extra (`pip install 'zhlora[llamacpp]'`; `make test` installs it).
The embedded tiny-zh base is trained, so its argmax is clear and f16 must match exactly; the
random tiny models of the other families have near-tied logits, so for them f16 must match up to
the first step where zhlora's own top-2 logits are closer than f16 can resolve (reported).
"""
from __future__ import annotations

import json

import pytest
import torch
from test_merge_helpers import ZH

from zhlora.merge.gguf import export_gguf, llamacpp
from zhlora.models.embedded import EMBEDDED_BASE_DIR

pytestmark = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed "
                                "(the `llamacpp` extra: pip install 'zhlora[llamacpp]')")

PROMPTS = ["今天天气很好，", "人工智能正在", "请把这句话翻译成英文："]
TEXT = "今天天气很好，我们去公园散步。Hello world 123！“人工智能”正在改变世界…\n第二行"
N = 12
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tiny(tmp, family):
    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.models.tiny import make_tiny_model

    d = tmp / family
    if family == "tiny-zh":
        return EMBEDDED_BASE_DIR
    if family in ("chatglm2", "chatglm3", "glm4-orig"):
        return make_tiny_chatglm(d, {"glm4-orig": "glm4"}.get(family, family), hidden=64, heads=4)
    model = make_tiny_model(d, {"glm4-hf": "glm4"}.get(family, family), texts=ZH + PROMPTS + [TEXT])
    if family == "qwen2":                   # a chat template in the folder, as merged folders carry
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["chat_template"] = CHATML
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return model


FAMILIES = ["tiny-zh", "qwen2", "glm4-hf", "chatglm2", "chatglm3", "glm4-orig"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf_rt")
    return {f: _tiny(tmp, f) for f in FAMILIES}, tmp


@pytest.fixture(scope="module")
def exported(models):
    folders, tmp = models
    cache = {}

    def get(family, qtype):
        if (family, qtype) not in cache:
            info = export_gguf(folders[family], tmp / f"{family}-{qtype}.gguf", qtype)
            cache[family, qtype] = llamacpp.load(info.path, n_ctx=256)
        return cache[family, qtype]
    return get


@pytest.fixture(scope="module")
def reference(models):
    """zhlora's side: tokenizer, and greedy ids with zhlora's top-2 margins, per family."""
    from zhlora.models.loading import load_model, load_tokenizer

    folders, _ = models
    cache = {}

    def get(family):
        if family not in cache:
            tok = load_tokenizer(folders[family])
            model = load_model(folders[family], dtype=torch.float32)
            model.eval()
            cache[family] = tok, model
        return cache[family]
    return get


def _hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Argmax continuation (full forward each step; tiny models) and each step's top-2 gap
    relative to the largest |logit|."""
    ids, out, gaps = list(ids), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            top = torch.topk(logits, 2).values
            gaps.append(float((top[0] - top[1]) / logits.abs().max()))
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
    return out, gaps


def _prompt_ids(tok, text):
    return tok(text)["input_ids"]          # with the family's own prefix ([gMASK] sop for ChatGLM)


@pytest.mark.parametrize("family", FAMILIES)
def test_llamacpp_tokenizes_chinese_like_zhlora(family, exported, reference):
    tok, _ = reference(family)
    llm = exported(family, "f32")
    for text in [TEXT] + PROMPTS + ZH:
        assert llamacpp.tokenize(llm, text) == tok(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.parametrize("qtype", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llamacpp_greedy_equals_zhlora(family, qtype, exported, reference):
    tok, model = reference(family)
    llm = exported(family, qtype)
    compared = 0
    for prompt in PROMPTS:
        ids = _prompt_ids(tok, prompt)
        want, gaps = _hf_greedy(model, ids, N)
        got = llamacpp.greedy(llm, ids, N, stop_at_eog=False)
        if qtype == "f32" or family == "tiny-zh":
            assert got == want, (prompt, got, want)
            compared += N
        else:   # f16 weights resolve ~2^-11 relative: compare up to the first near tie
            clear = next((i for i, g in enumerate(gaps) if g < 4e-3), N)
            assert got[:clear] == want[:clear], (prompt, clear, got, want)
            compared += clear
    assert compared >= N, f"{family}: only {compared} tokens before zhlora's own near ties"


@pytest.mark.parametrize("family", FAMILIES)
def test_llamacpp_q8_0_first_tokens_agree(family, exported, reference):
    tok, model = reference(family)
    llm = exported(family, "q8_0")
    agree = 0
    for prompt in PROMPTS:
        ids = _prompt_ids(tok, prompt)
        want, _ = _hf_greedy(model, ids, 8)
        agree += llamacpp.greedy(llm, ids, 8, stop_at_eog=False) == want
    assert agree >= 2, f"{family}: q8_0 first 8 tokens agree on {agree} of 3 prompts"


def test_llamacpp_chat_template_from_metadata(exported, reference):
    """llama.cpp renders the prompt from the GGUF's tokenizer.chat_template itself; its greedy
    answer equals zhlora's greedy answer on the same conversation."""
    tok, model = reference("qwen2")
    llm = exported("qwen2", "f32")
    for q in PROMPTS:
        messages = [{"role": "user", "content": q}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        want, _ = _hf_greedy(model, list(ids), N)
        stops = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        want = want[:next((i for i, t in enumerate(want) if t in stops), N)]
        assert llamacpp.chat(llm, messages, N) == tok.decode(want), q


def test_demo_gguf_stage_corrects_like_zhlora(tmp_path):
    """`make demo`'s last stage: the merged GEC model exported and run by llama.cpp answers as
    zhlora's engine does (greedy, the adapter's template from the merge record)."""
    from zhlora.embedded import demo
    from zhlora.gec.prompt import gec_conversation
    from zhlora.infer.engine import Engine, GenerationOptions
    from zhlora.merge.merge import merge_adapters
    from zhlora.train.lora import make_tiny_adapter

    adapter = make_tiny_adapter(EMBEDDED_BASE_DIR, tmp_path / "gec", b_std=0.05)
    merged = merge_adapters(EMBEDDED_BASE_DIR, [adapter], tmp_path / "merged", dtype=torch.float32,
                            progress=False).output
    text = demo.CHAT[0][1]
    answer = demo.gguf_run(tmp_path, merged, text)
    want = Engine.load(merged).generate([gec_conversation(text)],
                                        options=GenerationOptions(max_new_tokens=60, temperature=0.0))[0]
    assert answer == want and (tmp_path / "merged-gec.gguf").is_file()
