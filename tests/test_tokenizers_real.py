"""Real vocabularies through zhlora's load_tokenizer: llama.cpp's tokenizer test vectors for
Qwen2's BPE and LLaMA's SentencePiece vocabularies (tests/assets/official, see SOURCES.md), and a
Chinese-LLaMA-style extended vocabulary (LLaMA's real pieces plus added Chinese pieces) that
trains, merges and reloads with the resized embeddings."""
from __future__ import annotations

import json

import pytest
import torch

from _official import (VOCAB, sentencepiece_proto_from_gguf, vocab_tokenizer, vocab_vectors,
                       write_llama_tokenizer_folder)
from zhlora.models.loading import load_tokenizer

ADDED = ["我们", "公园", "今天", "天气", "北京", "世界", "你好", "改正", "句子", "谢谢"]


def _mismatches(tok, name):
    return [(text, tok.encode(text, add_special_tokens=False), ids) for text, ids in vocab_vectors(name)
            if tok.encode(text, add_special_tokens=False) != ids]


@pytest.mark.parametrize("name,size", [("qwen2", 151936), ("llama-spm", 32000)])
def test_llama_cpp_vectors_through_load_tokenizer(name, size):
    tok = vocab_tokenizer(name)
    assert tok.vocab_size == size
    assert len(vocab_vectors(name)) == 47
    assert _mismatches(tok, name) == []


def test_saved_tokenizer_keeps_the_sentencepiece_rule(tmp_path):
    vocab_tokenizer("llama-spm").save_pretrained(tmp_path / "tok")
    assert _mismatches(load_tokenizer(tmp_path / "tok"), "llama-spm") == []


def test_llama_tokenizer_model_folder_matches_sentencepiece(tmp_path):
    """The release layout (tokenizer.model + LlamaTokenizer): SentencePiece itself reproduces the
    vectors (so the rebuilt model is faithful), and so does load_tokenizer."""
    import sentencepiece as spm

    folder = write_llama_tokenizer_folder(tmp_path / "llama", sentencepiece_proto_from_gguf("llama-spm"))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert [t for t, ids in vocab_vectors("llama-spm") if sp.encode(t) != ids] == []
    assert _mismatches(load_tokenizer(folder), "llama-spm") == []


def chinese_llama_proto():
    """ymcui's merge_tokenizers.py way: append the Chinese pieces LLaMA lacks, score 0."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = sentencepiece_proto_from_gguf("llama-spm")
    have = {p.piece for p in proto.pieces}
    for piece in sorted({c for w in ADDED for c in w}) + ADDED:
        if piece not in have:
            new = pb.ModelProto.SentencePiece(piece=piece, score=0.0)
            proto.pieces.append(new)
            have.add(piece)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


def test_extended_vocabulary_tokenizes_like_sentencepiece(tmp_path):
    import sentencepiece as spm

    folder = write_llama_tokenizer_folder(tmp_path / "zh", chinese_llama_proto())
    tok = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    assert len(tok) == sp.get_piece_size() > 32000
    text = "今天天气很好，我们去公园。谢谢！ Hello 世界"
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert {"我们", "公园", "天气"} <= set(tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False)))


def test_extended_vocabulary_trains_merges_and_reloads(tmp_path):
    """Base embeddings 32000 rows, tokenizer 32000 + N: train resizes and trains the embeddings
    whole; the merged model has 32000 + N rows and gives the adapter's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhlora.merge.merge import merge_adapters
    from zhlora.models.tiny import make_tiny_model
    from zhlora.train.config import load_config
    from zhlora.train.sft import train

    tok = load_tokenizer(write_llama_tokenizer_folder(tmp_path / "zh", chinese_llama_proto()))
    n = len(tok)
    base = make_tiny_model(tmp_path / "base", "llama", tokenizer=tok, vocab_size=32000, hidden=16, layers=1,
                           heads=2, kv_heads=1)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"改正句子：{w}", "output": f"谢谢，{w}。"},
                                       ensure_ascii=False) + "\n" for w in ADDED), encoding="utf-8")
    cfg = load_config(None, [f"model={base}", f"data={data}", f"output_dir={tmp_path / 'a'}", "max_steps=2",
                             "save_steps=0", "report_to=none", "eval_ratio=0", "learning_rate=1e-2"])
    res = train(cfg)
    meta = json.loads((res.output / "zhlora_adapter.json").read_text(encoding="utf-8"))
    assert meta["resized_vocab"] == {"from": 32000, "to": n}
    merge_adapters(base, [res.output], tmp_path / "merged", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert merged.get_input_embeddings().weight.shape[0] == n
    assert len(load_tokenizer(tmp_path / "merged")) == n
    plain = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    plain.resize_token_embeddings(n)
    adapter = PeftModel.from_pretrained(plain, str(res.output)).eval()
    ids = torch.tensor([tok.encode("今天天气很好，我们去公园。")])
    assert (ids >= 32000).any()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, rtol=1e-4, atol=1e-4)


def test_gguf_vocab_files_are_the_recorded_ones():
    import hashlib

    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in VOCAB.glob("*.gguf")}
    assert sums == {"ggml-vocab-qwen2.gguf": "44c2f46b715f585c", "ggml-vocab-llama-spm.gguf": "16c3724582d59aa8"}
