"""Shared helpers for the tests against official material (tests/assets/official, see SOURCES.md)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from zhlora.data import Conversation
from zhlora.models.loading import load_tokenizer

OFFICIAL = Path(__file__).parent / "assets" / "official"
VOCAB = OFFICIAL / "vocab"
TEMPLATES = OFFICIAL / "templates"

# Conversations no template was written for: with and without system, multi-turn, newlines
# inside contents, mixed Chinese and English.
CONVERSATIONS = {
    "single": Conversation.from_pairs([("你好，请介绍一下你自己。", "我是一个AI助手，可以回答问题。")]),
    "system-multi": Conversation.from_pairs(
        [("What is 2+2? 用中文回答。", "二加二等于四。"), ("Say it in English, please.", "Two plus two is four.")],
        system="你是一个乐于助人的助手。Answer briefly."),
    "newlines": Conversation.from_pairs(
        [("改正下面的句子：\n我门去公园。\n谢谢！", "我们去公园。\n（“门”应为“们”。）")]),
    "three-rounds": Conversation.from_pairs(
        [("北京是哪个国家的首都？", "中国。"), ("And Paris?", "France, 法国。"), ("列出三个数字：", "1\n2\n3")]),
}


@functools.cache
def vocab_tokenizer(name: str):
    """zhlora's tokenizer for llama.cpp's `ggml-vocab-<name>.gguf` (loaded once per session)."""
    import pytest

    pytest.importorskip("gguf", reason="reading .gguf vocabularies needs gguf (pip install 'zhlora[test]')")
    return load_tokenizer(VOCAB / f"ggml-vocab-{name}.gguf")


def vocab_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors: (text, ids without BOS)."""
    inp = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = (VOCAB / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(x) for x in ids.split()]) for text, ids in zip(inp, out)]


def messages(conv: Conversation) -> list[dict]:
    """A zhlora conversation as chat messages (system first when present)."""
    head = [{"role": "system", "content": conv.system}] if conv.system else []
    return head + [{"role": m.role, "content": m.content} for m in conv.messages]


def asking(conv: Conversation) -> Conversation:
    """The conversation without its last answer (a generation prompt)."""
    return Conversation(conv.messages[:-1], system=conv.system)


def encode_rendered(tok, text: str, specials: tuple[str, ...] = ()) -> list[int]:
    """Ids of rendered text as `apply_chat_template` tokenizes it: special-token strings are one
    token each, the text between them is encoded in one piece. `specials`: for tokenizers that
    do not split them out themselves (zhlora's native ChatGLM classes)."""
    if not specials:
        return tok.encode(text, add_special_tokens=False)
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if piece in specials:
            ids.append(tok.convert_tokens_to_ids(piece))
        elif piece:
            ids += tok.encode(piece, add_special_tokens=False)
    return ids


def sentencepiece_proto_from_gguf(name: str):
    """The SentencePiece ModelProto of a llama.cpp SPM vocabulary (pieces, scores, types): the
    `tokenizer.model` the model was released with, rebuilt from the GGUF copy of it."""
    import pytest

    pytest.importorskip("gguf", reason="reading .gguf vocabularies needs gguf (pip install 'zhlora[test]')")
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    reader = GGUFReader(str(VOCAB / f"ggml-vocab-{name}.gguf"))
    field = lambda key: [reader.fields[key].parts[i] for i in reader.fields[key].data]  # noqa: E731
    kinds = {1: pb.ModelProto.SentencePiece.NORMAL, 2: pb.ModelProto.SentencePiece.UNKNOWN,
             3: pb.ModelProto.SentencePiece.CONTROL, 4: pb.ModelProto.SentencePiece.USER_DEFINED,
             5: pb.ModelProto.SentencePiece.UNUSED, 6: pb.ModelProto.SentencePiece.BYTE}
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for tok, score, kind in zip(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"),
                                field("tokenizer.ggml.token_type")):
        p = m.pieces.add()
        p.piece, p.score, p.type = bytes(tok).decode("utf-8"), float(score[0]), kinds[int(kind[0])]
    m.trainer_spec.vocab_size = len(m.pieces)
    return m


def write_llama_tokenizer_folder(folder: Path, proto) -> Path:
    """A tokenizer folder laid out like LLaMA / Chinese-LLaMA releases: tokenizer.model plus a
    LlamaTokenizer tokenizer_config.json (no tokenizer.json)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False}), encoding="utf-8")
    return folder
