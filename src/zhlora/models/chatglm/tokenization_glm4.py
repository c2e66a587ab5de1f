"""GLM-4 tokenizer over THUDM's tiktoken-style `tokenizer.model` (the name their
tokenizer_config.json asks for: `ChatGLM4Tokenizer`), without remote code.

`tokenizer.model` holds one `base64(token bytes) rank` per line. The BPE runs in `tiktoken`
(`pip install zhlora[glm4]`); special tokens follow the ranks in this order: <|endoftext|>
[MASK] [gMASK] [sMASK] <sop> <eop> <|system|> <|user|> <|assistant|> <|observation|>
<|begin_of_image|> <|end_of_image|> <|begin_of_video|> <|end_of_video|>. Prompts start with
`[gMASK]<sop>`; eos and pad are <|endoftext|>; left padding. Inside zhlora a token string is
its bytes read as latin-1 (one char per byte), so any byte sequence round-trips.
"""
from __future__ import annotations

import base64
import os
import shutil

from transformers.tokenization_python import PreTrainedTokenizer

from zhlora.errors import ZhloraError

GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                 "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]
GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_ranks(path) -> dict[bytes, int]:
    """`base64 rank` lines -> {token bytes: rank}; ZhloraError with file:line on a bad line."""
    ranks = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
            except ValueError:
                raise ZhloraError(f"{path}:{lineno}: expected 'base64-token rank'; this is not GLM-4's "
                                  "tiktoken tokenizer.model (a SentencePiece file means ChatGLM2/3: "
                                  "set tokenizer_class to ChatGLMTokenizer)") from None
    return ranks


def _encoding(ranks: dict[bytes, int]):
    try:
        import tiktoken
    except ImportError:
        raise ZhloraError("GLM-4's tokenizer needs the tiktoken package: pip install 'zhlora[glm4]' "
                          "(or pip install tiktoken)") from None
    specials = {t: len(ranks) + i for i, t in enumerate(GLM4_SPECIALS)}
    return tiktoken.Encoding(name="glm4", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


class ChatGLM4Tokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, padding_side="left", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                 clean_up_tokenization_spaces=False, **kwargs):
        self.vocab_file = vocab_file
        ranks = read_ranks(vocab_file)
        self.enc = _encoding(ranks)
        self.encoder = {b.decode("latin-1"): r for b, r in ranks.items()}
        self.specials = {t: len(ranks) + i for i, t in enumerate(GLM4_SPECIALS)}
        self.decoder = {r: t for t, r in self.encoder.items()}
        self.decoder.update({r: t for t, r in self.specials.items()})
        for key in ("model_specific_special_tokens", "encode_special_tokens"):
            kwargs.pop(key, None)
        super().__init__(padding_side=padding_side, eos_token=eos_token, pad_token=pad_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder) + len(self.specials)

    def get_vocab(self):
        return {**self.encoder, **self.specials}

    def get_command(self, token: str) -> int:
        return self.specials[token]

    def _tokenize(self, text, **kwargs):
        # special-token strings inside the text are plain text here (THUDM's default)
        return [self.decoder[i] for i in self.enc.encode(text, disallowed_special=())]

    def _convert_token_to_id(self, token):
        if token in self.specials:
            return self.specials[token]
        return self.encoder.get(token, self.specials["<|endoftext|>"])

    def _convert_id_to_token(self, index):
        return self.decoder.get(index, "")

    def convert_tokens_to_string(self, tokens):
        data = b"".join(t.encode("utf-8") if t in self.specials else t.encode("latin-1") for t in tokens)
        return data.decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = [self.specials["[gMASK]"], self.specials["<sop>"]] + list(token_ids_0)
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_token_id]
        return ids

    def save_vocabulary(self, save_directory, filename_prefix=None):
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
