"""`zhlora export gguf`: read the file back with gguf.GGUFReader and compare every tensor."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file
from test_merge_helpers import ZH, run_cli

from zhlora.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A tiny LLaMA whose tokenizer is a real SentencePiece model (as Chinese-LLaMA ships)."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(ZH * 20 + ["我们 你们 他们 世界 天气 公园 翻译"] * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "sp"), vocab_size=60,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=False,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    model = make_tiny_model(d / "model", "llama", texts=ZH, hidden=64, layers=2, heads=4, kv_heads=2,
                            vocab_size=sp.vocab_size() + 4)     # padded rows, like many checkpoints
    (model / "tokenizer.model").write_bytes((d / "sp.model").read_bytes())
    return model, sp


def _inverse_permute(w: np.ndarray, heads: int) -> np.ndarray:
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _read(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items()}
    tensors = {t.name: t for t in r.tensors}
    return r, fields, tensors


def _field(f):
    return f.contents()


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_merge_export_gguf_tensors_and_metadata(spm_model, tmp_path, qtype):
    import gguf

    model, sp = spm_model
    out = tmp_path / "m.gguf"
    assert run_cli("export", "gguf", "--model", model, "--output", out, "--type", qtype) == 0
    _, fields, tensors = _read(out)
    assert _field(fields["general.architecture"]) == "llama"
    assert _field(fields["llama.block_count"]) == 2 and _field(fields["llama.embedding_length"]) == 64
    assert _field(fields["llama.attention.head_count"]) == 4 and _field(fields["llama.attention.head_count_kv"]) == 2
    assert _field(fields["tokenizer.ggml.model"]) == "llama"
    toks = _field(fields["tokenizer.ggml.tokens"])
    assert len(toks) == sp.vocab_size() + 4 and toks[:sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert toks[-1] == f"[PAD{sp.vocab_size() + 3}]"
    assert _field(fields["tokenizer.ggml.bos_token_id"]) == 1
    sd = load_file(model / "model.safetensors")
    assert len(tensors) == len(sd)
    names = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight",
             "model.layers.1.self_attn.q_proj.weight": "blk.1.attn_q.weight",
             "model.layers.0.self_attn.k_proj.weight": "blk.0.attn_k.weight",
             "model.layers.1.mlp.down_proj.weight": "blk.1.ffn_down.weight",
             "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight"}
    for hf, gg in names.items():
        t = tensors[gg]
        ref = sd[hf].numpy()
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
            tol = np.abs(ref).max() / 127 * 0.51 + 1e-7    # half a quantization step per 32-block
        else:
            got = np.asarray(t.data, dtype=np.float32).reshape(ref.shape)
            tol = 0 if ref.ndim == 1 else np.abs(ref).max() * 2**-11
        if gg.endswith("attn_q.weight"):
            got = _inverse_permute(got, 4)
        elif gg.endswith("attn_k.weight"):
            got = _inverse_permute(got, 2)
        assert np.abs(got - ref).max() <= tol, (gg, np.abs(got - ref).max(), tol)
    expect = gguf.GGMLQuantizationType.Q8_0 if qtype == "q8_0" else gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.ffn_up.weight"].tensor_type == expect
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_merge_export_gguf_refusals(spm_model, tmp_path, capsys):
    """An existing output, an adapter folder, ChatGLM-6B v1 and an unknown architecture: a
    message, exit 2, and no file (not even a temporary one) left behind."""
    import json

    from zhlora.models.chatglm.tiny import make_tiny_chatglm
    from zhlora.train.lora import make_tiny_adapter

    model, _ = spm_model
    out = tmp_path / "m.gguf"
    out.write_text("old")
    assert run_cli("export", "gguf", "--model", model, "--output", out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "old"
    adapter = make_tiny_adapter(model, tmp_path / "adapter")
    assert run_cli("export", "gguf", "--model", adapter, "--output", tmp_path / "a.gguf") == 2
    assert "LoRA adapter folder" in capsys.readouterr().err
    v1 = make_tiny_chatglm(tmp_path / "v1", "chatglm")
    assert run_cli("export", "gguf", "--model", v1, "--output", tmp_path / "v1.gguf") == 2
    assert "ChatGLM-6B (v1) has no llama.cpp architecture" in capsys.readouterr().err
    other = make_tiny_model(tmp_path / "other", "llama", texts=ZH, hidden=32)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "baichuan"}))
    assert run_cli("export", "gguf", "--model", other, "--output", tmp_path / "o.gguf") == 2
    assert "'baichuan' has no GGUF export" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*gguf*")) == ["m.gguf"]


def test_merge_export_gguf_char_vocab_and_chatglm_layout(tmp_path):
    """A character vocabulary becomes llama.cpp's unigram kind (space as U+2581, no space prefix);
    ChatGLM2 keeps its fused query_key_value (+bias) as attn_qkv, rope on half of each head."""
    import gguf

    from zhlora.merge.gguf import export_gguf
    from zhlora.models.chatglm.tiny import make_tiny_chatglm

    char = make_tiny_model(tmp_path / "char", "llama", texts=ZH, hidden=32)
    export_gguf(char, tmp_path / "c.gguf", "f32")
    _, fields, tensors = _read(tmp_path / "c.gguf")
    toks = _field(fields["tokenizer.ggml.tokens"])
    assert _field(fields["tokenizer.ggml.model"]) == "t5" and "\u2581" in toks and " " not in toks
    assert _field(fields["tokenizer.ggml.add_space_prefix"]) is False
    assert _field(fields["tokenizer.ggml.add_bos_token"]) is False   # zhlora's char tokenizer adds none
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    glm = make_tiny_chatglm(tmp_path / "glm", "chatglm2", hidden=32, heads=4, kv_groups=2)
    export_gguf(glm, tmp_path / "g.gguf", "f16")
    _, fields, tensors = _read(tmp_path / "g.gguf")
    assert _field(fields["general.architecture"]) == "chatglm"
    assert _field(fields["chatglm.rope.dimension_count"]) == 4 and _field(fields["chatglm.attention.head_count_kv"]) == 2
    sd = load_file(glm / "model.safetensors")
    qkv = sd["transformer.encoder.layers.0.self_attention.query_key_value.bias"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.0.attn_qkv.bias"].data), qkv)
