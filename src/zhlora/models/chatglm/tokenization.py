"""Tokenizers compatible with THUDM's vocabulary files, without remote code.

THUDM's tokenizer_config.json names `ChatGLMTokenizer` for ChatGLM-6B, ChatGLM2-6B and
ChatGLM3-6B alike; `ChatGLMTokenizer.from_pretrained` picks by the file the folder holds:
- `ice_text.model` -> `ChatGLM6BTokenizer` (v1): `\\n` -> `<n>`, `\\t` -> `<|tab|>`, runs of 2..80
  spaces -> `<|blank_N|>` before SentencePiece; ids = piece ids + `num_image_tokens`
  (0 in the final release: [MASK] 130000, [gMASK] 130001, <sop> 130004, <eop> 130005; the old
  150k release used num_image_tokens 20000, which is honoured, shifting every id by 20000);
  `a + [gMASK, <sop>]` (+ `b + [<eop>]`).
- `tokenizer.model` -> `ChatGLM2Tokenizer` (v2/v3): SentencePiece ids, then `[MASK] [gMASK]
  [sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>` from the SentencePiece
  vocab size on; pad = `<unk>` (0), eos `</s>`; `[gMASK] sop + a` (+ `b + [</s>]`); left padding.
Both save in THUDM's layout (same file names, `tokenizer_class` "ChatGLMTokenizer").
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import sentencepiece as spm
from transformers.tokenization_python import PreTrainedTokenizer

from zhlora.errors import ZhloraError

V1_FILE, V2_FILE = "ice_text.model", "tokenizer.model"
V2_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop",
               "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
MAX_BLANK = 80


def _patch_saved_class(save_directory, files, name: str):
    cfg = Path(save_directory) / "tokenizer_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        data["tokenizer_class"] = name
        cfg.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return files


class ChatGLMTokenizer(PreTrainedTokenizer):
    """Entry point for the name THUDM's folders use; see the module docstring."""

    vocab_files_names = {"vocab_file": V2_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if cls is ChatGLMTokenizer:
            folder = Path(pretrained_model_name_or_path)
            if (folder / V1_FILE).is_file():
                return ChatGLM6BTokenizer.from_pretrained(folder, *args, **kwargs)
            if (folder / V2_FILE).is_file():
                return ChatGLM2Tokenizer.from_pretrained(folder, *args, **kwargs)
            raise ZhloraError(f"{folder}: a ChatGLM tokenizer needs {V1_FILE} (ChatGLM-6B) or {V2_FILE} "
                              "(ChatGLM2/3); copy it from the THUDM model folder")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        return _patch_saved_class(save_directory, files, "ChatGLMTokenizer")

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = self.vocab_files_names["vocab_file"]
        out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + name)
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)


class ChatGLM6BTokenizer(ChatGLMTokenizer):
    """ChatGLM-6B (v1) tokenizer over `ice_text.model`."""

    vocab_files_names = {"vocab_file": V1_FILE}

    def __init__(self, vocab_file, num_image_tokens: int = 0, bos_token="<sop>", eos_token="<eop>",
                 end_token="</s>", mask_token="[MASK]", gmask_token="[gMASK]", pad_token="<pad>",
                 unk_token="<unk>", padding_side="left", **kwargs):
        self.vocab_file = vocab_file
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file))
        self.num_image_tokens = int(num_image_tokens or 0)
        self.gmask_token, self.end_token = str(gmask_token), str(end_token)
        for piece in (gmask_token, bos_token, eos_token):
            if self.sp.piece_to_id(str(piece)) == self.sp.unk_id():
                raise ZhloraError(f"{vocab_file}: the SentencePiece model has no piece {piece!r}; "
                                  "this is not ChatGLM-6B's ice_text.model")
        kwargs.pop("model_specific_special_tokens", None)
        super().__init__(bos_token=bos_token, eos_token=eos_token, mask_token=mask_token, pad_token=pad_token,
                         unk_token=unk_token, padding_side=padding_side, num_image_tokens=num_image_tokens,
                         end_token=end_token, gmask_token=gmask_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + self.num_image_tokens

    @property
    def gmask_token_id(self) -> int:
        return self._convert_token_to_id(self.gmask_token)

    def get_vocab(self):
        return {self.sp.id_to_piece(i): i + self.num_image_tokens for i in range(self.sp.get_piece_size())}

    @staticmethod
    def preprocess(text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        return re.sub(r" {2,%d}" % MAX_BLANK, lambda m: f"<|blank_{len(m.group())}|>", text)

    @staticmethod
    def postprocess(text: str) -> str:
        text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
        return re.sub(r"<\|blank_(\d+)\|>", lambda m: " " * int(m.group(1)), text)

    def _tokenize(self, text, **kwargs):
        return self.sp.encode(self.preprocess(text), out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp.piece_to_id(str(token)) + self.num_image_tokens

    def _convert_id_to_token(self, index):
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        return self.sp.id_to_piece(index - self.num_image_tokens)

    def convert_tokens_to_string(self, tokens):
        return self.postprocess(self.sp.decode_pieces(list(tokens)))

    def _decode(self, token_ids, skip_special_tokens=False, **kwargs):
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        ids = [i for i in ids if i != self.pad_token_id]
        return super()._decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = list(token_ids_0) + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_token_id]
        return ids


class ChatGLM2Tokenizer(ChatGLMTokenizer):
    """ChatGLM2-6B / ChatGLM3-6B tokenizer over `tokenizer.model`."""

    vocab_files_names = {"vocab_file": V2_FILE}

    def __init__(self, vocab_file, padding_side="left", eos_token="</s>", unk_token="<unk>",
                 pad_token="<unk>", **kwargs):
        self.vocab_file = vocab_file
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file))
        self.n_words = self.sp.get_piece_size()
        self.specials = {t: self.n_words + i for i, t in enumerate(V2_SPECIALS)}
        self.special_ids = {i: t for t, i in self.specials.items()}
        for key in ("bos_token", "mask_token", "model_specific_special_tokens"):
            kwargs.pop(key, None)
        super().__init__(padding_side=padding_side, eos_token=eos_token, unk_token=unk_token,
                         pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.n_words + len(self.specials)

    def get_vocab(self):
        vocab = {self.sp.id_to_piece(i): i for i in range(self.n_words)}
        vocab.update(self.specials)
        return vocab

    def get_command(self, token: str) -> int:
        """Id of a special token (`[gMASK]`, `sop`, `<|user|>`...), as THUDM's tokenizer names it."""
        return self.specials[token]

    def _tokenize(self, text, **kwargs):
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        if token in self.specials:
            return self.specials[token]
        return self.sp.piece_to_id(token)

    def _convert_id_to_token(self, index):
        if index in self.special_ids:
            return self.special_ids[index]
        if index >= self.n_words:  # padding rows of the embedding
            return ""
        return self.sp.id_to_piece(index)

    def convert_tokens_to_string(self, tokens):
        out, run = [], []
        for tok in tokens:
            if tok in self.specials:
                out.append(self.sp.decode_pieces(run) + tok)
                run = []
            else:
                run.append(tok)
        out.append(self.sp.decode_pieces(run))
        return "".join(out)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = [self.specials["[gMASK]"], self.specials["sop"]] + list(token_ids_0)
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_token_id]
        return ids
