"""The tokenizer of a merged folder, written the way llama.cpp's tokenizer of that kind reads it.

One reader per vocabulary format (a registry, tried in order; the first that recognises the
folder writes it):

- `char`: a `tokenizer.json` WordLevel vocabulary split per character (zhlora's embedded base
  and tiny models). Written as llama.cpp's unigram tokenizer (`tokenizer.ggml.model = "t5"`,
  UGM) with no space prefix and no extra-whitespace removal: every character is a piece of
  score 0, so the Viterbi search has exactly one path, one token per character, as the
  WordLevel model gives. A space is stored as U+2581 (UGM escapes spaces to it). A character
  outside the vocabulary becomes `<unk>` (llama.cpp merges a run of them into one; the
  WordLevel model gives one per character). SentencePiece-kind (`llama`) would abort on such a
  character: with no `<0xXX>` byte pieces its byte fallback has nothing to fall back to.
- `sentencepiece`: a SentencePiece `tokenizer.model` (Chinese-LLaMA/Alpaca, ChatGLM2/3). Pieces,
  scores and types from the model; ids past the model (ChatGLM's `[gMASK]`, `sop`,
  `<|user|>` ...) from zhlora's tokenizer; `add_space_prefix` from the model's normalizer.
- `tiktoken`: GLM-4's original `tokenizer.model` (base64 token, rank): GPT-2 byte-level BPE
  with merges rebuilt from the ranks, pre-tokenizer `chatglm-bpe`.
- `bpe`: a byte-level BPE `tokenizer.json` (Qwen2, GLM-4-HF, LLaMA byte-fallback BPE) through
  the `gguf` package's readers.

Every kind pads the list with `[PAD{i}]` tokens to one token per embedding row, and adds the
special ids, add_bos/add_eos and the chat template (`gguf.SpecialVocab`).
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.errors import ZhloraError

SPACE = "\u2581"


@dataclass
class Vocab:
    kind: str                         # which reader made it (reported to the user)
    model: str                        # tokenizer.ggml.model
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    pre: str | None = None            # tokenizer.ggml.pre (BPE only)
    merges: list[str] = field(default_factory=list)
    flags: dict = field(default_factory=dict)   # add_space_prefix, remove_extra_whitespaces


def read_vocab(model_dir: Path, rows: int, bpe_pre: str = "default") -> Vocab:
    """The folder's vocabulary padded to `rows` tokens; ZhloraError if no reader applies."""
    for reader in READERS:
        vocab = reader(model_dir, bpe_pre)
        if vocab is not None:
            return _pad(vocab, rows, model_dir)
    raise ZhloraError(f"{model_dir}: no tokenizer llama.cpp can use (zhlora writes a SentencePiece "
                      "tokenizer.model, GLM-4's tiktoken tokenizer.model, or a tokenizer.json with a "
                      "BPE or character-level WordLevel model). Copy the original model's tokenizer "
                      "files into the folder and export again")


def _pad(v: Vocab, rows: int, model_dir: Path) -> Vocab:
    import gguf

    if len(v.tokens) > rows:
        raise ZhloraError(f"{model_dir}: the tokenizer has {len(v.tokens)} tokens but the embedding only "
                          f"{rows} rows; export the merged model whose vocabulary matches")
    for i in range(len(v.tokens), rows):          # llama.cpp wants one token per embedding row
        v.tokens.append(f"[PAD{i}]".encode())
        v.scores.append(-1000.0)
        v.types.append(gguf.TokenType.UNUSED)
    return v


def write_vocab(w, v: Vocab, model_dir: Path, add_bos: bool | None, eot_ids: list[int]) -> bool:
    """Add the tokenizer keys to GGUFWriter `w`; True if a chat template went in."""
    import gguf

    w.add_tokenizer_model(v.model)
    if v.pre:
        w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_scores(v.scores)
    w.add_token_types(v.types)
    if v.merges:
        w.add_token_merges(v.merges)
    for key, value in v.flags.items():
        getattr(w, f"add_{key}")(value)
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=len(v.tokens))
    if add_bos is not None:                  # what zhlora's own tokenizer does, measured
        special.add_special_token["bos"] = add_bos
        special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(w, quiet=True)
    if eot_ids:
        w.add_eot_token_id(eot_ids[0])
    return special.chat_template is not None


def _tokenizer_json(model_dir: Path) -> dict | None:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZhloraError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _char_vocab(model_dir: Path, _pre: str) -> Vocab | None:
    import gguf

    tj = _tokenizer_json(model_dir)
    if not tj or (tj.get("model") or {}).get("type") != "WordLevel":
        return None
    vocab = dict(tj["model"]["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for a in added.values():
        vocab.setdefault(a["content"], a["id"])
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ZhloraError(f"{model_dir}/tokenizer.json: token ids are not 0..{len(by_id) - 1} without gaps")
    if SPACE in vocab:
        raise ZhloraError(f"{model_dir}/tokenizer.json: the vocabulary holds U+2581 ('{SPACE}'), which "
                          "llama.cpp's unigram tokenizer uses for a space; it cannot be exported as is")
    unk = tj["model"].get("unk_token")
    tokens, types = [], []
    for i in range(len(by_id)):
        text, a = by_id[i], added.get(i)
        if a is not None:
            ttype = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        else:
            ttype = gguf.TokenType.NORMAL
            text = text.replace(" ", SPACE)
        if text == unk:
            ttype = gguf.TokenType.UNKNOWN
        tokens.append(text.encode("utf-8"))
        types.append(ttype)
    flags = {"add_space_prefix": False, "remove_extra_whitespaces": False}
    return Vocab("char (unigram, one piece per character)", "t5", tokens, [0.0] * len(tokens), types,
                 flags=flags)


def _sentencepiece_vocab(model_dir: Path, _pre: str) -> Vocab | None:
    import gguf
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        return None
    raw = path.read_bytes()
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(raw)
    except Exception:        # a tiktoken text file is not a protobuf  # noqa: BLE001
        return None
    if not proto.pieces:
        return None
    sp = SentencePieceProcessor(model_proto=raw)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        ttype = (gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
                 else gguf.TokenType.UNUSED if sp.is_unused(i) else gguf.TokenType.BYTE if sp.is_byte(i)
                 else gguf.TokenType.USER_DEFINED if proto.pieces[i].type == 4 else gguf.TokenType.NORMAL)
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(ttype)
    _extend_with_tokenizer(model_dir, tokens, scores, types)
    flags = {"add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix)}
    return Vocab("sentencepiece", "llama", tokens, scores, types, flags=flags)


def _extend_with_tokenizer(model_dir: Path, tokens, scores, types, same_head: bool = True) -> None:
    """Ids past the model file (added tokens, ChatGLM's specials) from zhlora's tokenizer.
    `same_head`: first check the tokenizer is built on these pieces (else add nothing)."""
    import gguf

    from zhlora.models.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    head = min(len(tokens), 64)
    if same_head and [t.encode("utf-8") for t in tok.convert_ids_to_tokens(list(range(head)))] != tokens[:head]:
        return
    by_id = {i: t for t, i in tok.get_vocab().items() if i >= len(tokens)}
    special = set(tok.all_special_tokens)
    for i in range(len(tokens), len(tokens) + len(by_id)):
        text = by_id.get(i)
        if text is None:
            break
        tokens.append(text.encode("utf-8"))
        scores.append(0.0)
        types.append(gguf.TokenType.CONTROL if text in special or _looks_special(text)
                     else gguf.TokenType.USER_DEFINED)


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")


def _tiktoken_vocab(model_dir: Path, _pre: str) -> Vocab | None:
    """GLM-4's `tokenizer.model`: lines `base64(token) rank`; specials from zhlora's tokenizer."""
    import gguf

    path = model_dir / "tokenizer.model"
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
        ranks = {base64.b64decode(t): int(r) for t, r in (ln.split() for ln in lines if ln)}
    except (UnicodeDecodeError, ValueError):
        return None
    enc = _byte_encoder()
    tokens = [b""] * len(ranks)
    merges = []
    for tok_bytes, rank in ranks.items():
        tokens[rank] = "".join(enc[b] for b in tok_bytes).encode("utf-8")
        if len(tok_bytes) > 1:
            parts = _bpe_split(ranks, tok_bytes, rank)
            if len(parts) == 2:
                merges.append((rank, " ".join("".join(enc[b] for b in p) for p in parts)))
    types = [gguf.TokenType.NORMAL] * len(tokens)
    scores = [0.0] * len(tokens)
    _extend_with_tokenizer(model_dir, tokens, scores, types, same_head=False)
    return Vocab("tiktoken (byte-level BPE)", "gpt2", tokens, scores, types, pre="chatglm-bpe",
                 merges=[m for _, m in sorted(merges)])


def _bpe_split(ranks: dict, token: bytes, max_rank: int) -> list[bytes]:
    """The two parts BPE with ranks below `max_rank` leaves of `token` (how tiktoken built it)."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def _byte_encoder() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_vocab(model_dir: Path, pre: str) -> Vocab | None:
    import gguf

    tj = _tokenizer_json(model_dir)
    if not tj or (tj.get("model") or {}).get("type") != "BPE":
        return None
    tried = []
    for cls in (gguf.LlamaHfVocab, gguf.BpeVocab):
        try:
            v = cls(model_dir)
        except (FileNotFoundError, TypeError, ValueError, KeyError, OSError) as e:
            tried.append(f"{cls.__name__}: {e}")
            continue
        tokens, scores, types = map(list, zip(*v.all_tokens()))
        merges = gguf.SpecialVocab(model_dir, load_merges=True).merges if v.tokenizer_model == "gpt2" else []
        return Vocab(v.name, v.tokenizer_model, tokens, scores, types,
                     pre=pre if v.tokenizer_model == "gpt2" else None, merges=merges)
    raise ZhloraError(f"{model_dir}/tokenizer.json: a BPE tokenizer the gguf package cannot read ({'; '.join(tried)})")


READERS = (_sentencepiece_vocab, _tiktoken_vocab, _char_vocab, _bpe_vocab)   # tokenizer.model first, as before
