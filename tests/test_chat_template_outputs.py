"""Folders zhlora writes carry a chat_template that renders exactly what zhlora trained on:
`tokenizer.apply_chat_template` on a merged model's folder gives zhlora's prompt and training
ids, for alpaca on LLaMA's real vocabulary, ChatML (Qwen) and GLM-4."""
from __future__ import annotations

import json

import pytest

from _official import CONVERSATIONS, asking, messages, vocab_tokenizer
from zhlora.chat_jinja import chat_template_jinja
from zhlora.models.loading import load_tokenizer
from zhlora.templates import TEMPLATES, get_template


def _char_tok(family):
    from zhlora.models.tiny import build_char_tokenizer

    texts = [m.content for c in CONVERSATIONS.values() for m in c.messages] + \
        [c.system for c in CONVERSATIONS.values()] + [t.default_system for t in TEMPLATES.values()]
    return build_char_tokenizer(texts, family)


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("template,family", [("alpaca", "llama"), ("chatml", "qwen2"), ("qwen3", "qwen2"),
                                             ("glm4", "glm4")])
def test_merged_folder_apply_chat_template_equals_zhlora(tmp_path, template, family):
    from zhlora.merge.merge import merge_adapters
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.lora import make_tiny_adapter

    tok = vocab_tokenizer("llama-spm") if family == "llama" else _char_tok(family)
    base = make_tiny_model(tmp_path / "base", family, tokenizer=tok, hidden=16, layers=1, heads=2, kv_heads=1)
    adapter = make_tiny_adapter(base, tmp_path / "adapter", template=template)
    merge_adapters(base, [adapter], tmp_path / "merged", progress=False)
    merged = load_tokenizer(tmp_path / "merged")
    cfg = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["chat_template"] == (tmp_path / "merged" / "chat_template.jinja").read_text(encoding="utf-8")
    assert merged.chat_template == chat_template_jinja(template)
    t = get_template(template)
    for name, conv in CONVERSATIONS.items():
        prompt = merged.apply_chat_template(messages(asking(conv)), add_generation_prompt=True, tokenize=True)
        assert _ids(prompt) == t.encode_prompt(asking(conv), merged), name
        full = merged.apply_chat_template(messages(conv), tokenize=True)
        assert _ids(full) == t.encode(conv, merged).input_ids, name


def test_every_template_has_a_jinja_that_renders_its_training_text():
    import zhlora

    zhlora.register_native_models()
    for name in sorted(TEMPLATES):
        jinja = chat_template_jinja(name)
        assert jinja.startswith(f"{{#- zhlora template {name!r}"), name
    with pytest.raises(Exception, match="unknown template"):
        chat_template_jinja("no-such-template")


@pytest.mark.parametrize("name", ["chatglm", "chatglm2"])
def test_round_text_jinja_renders_the_prompt_text(name):
    """The ChatGLM-6B/ChatGLM2 formats as Jinja (text view: special tokens as their strings)."""
    from zhlora.chat_jinja import render_chat_template

    conv = CONVERSATIONS["three-rounds"]
    t = get_template(name)
    text = render_chat_template(chat_template_jinja(name), messages(asking(conv)), True)
    body = t._prompt_text(asking(conv))
    before = "".join(p.token for p in t.before)
    after = "".join(p.token for p in t.after)
    assert text == before + body + after
    one = render_chat_template(chat_template_jinja(name), messages(asking(CONVERSATIONS["single"])), True)
    assert one == before + t._prompt_text(asking(CONVERSATIONS["single"])) + after


def test_gguf_export_of_a_merged_model_carries_the_chat_template(tmp_path):
    """llama.cpp reads the prompt format from the GGUF's tokenizer.chat_template."""
    gguf = pytest.importorskip("gguf")
    from _official import sentencepiece_proto_from_gguf, write_llama_tokenizer_folder
    from zhlora.merge.gguf import export_gguf
    from zhlora.merge.merge import merge_adapters
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.lora import make_tiny_adapter

    sp_dir = write_llama_tokenizer_folder(tmp_path / "sp", sentencepiece_proto_from_gguf("llama-spm"))
    base = make_tiny_model(tmp_path / "base", "llama", tokenizer=load_tokenizer(sp_dir), hidden=16, layers=1,
                           heads=2, kv_heads=1)
    (base / "tokenizer.model").write_bytes((sp_dir / "tokenizer.model").read_bytes())
    adapter = make_tiny_adapter(base, tmp_path / "adapter", template="alpaca")
    merge_adapters(base, [adapter], tmp_path / "merged", progress=False)
    export_gguf(tmp_path / "merged", tmp_path / "m.gguf")
    fields = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields
    assert fields["tokenizer.chat_template"].contents() == chat_template_jinja("alpaca")
