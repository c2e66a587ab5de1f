"""Confusion-constrained greedy decoding for spelling correction (`gec eval --decoding confusion`).

The answer has exactly one character per source character. At position i the model may
only write the source character s_i or one of its confusion candidates (same / similar
pinyin, similar shape: `zhlora.gec.confusion`), and it keeps s_i unless a candidate c beats
it by a margin in log-probability:

    write c  iff  log p(c | prompt, answer so far) - log p(s_i | ...) > margin

A larger margin trades recall for precision (GEC is scored with F0.5). Only substitutions
can be made, so insertions, deletions and word order errors are never corrected; this suits
spelling sets such as SIGHAN. It needs one token per Chinese character (a character-level
vocabulary such as the embedded tiny model's); a source character without its own token is
always kept. Adapter and merged models decode through the same function, so their answers
can be compared exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zhlora.errors import ZhloraError

DEFAULT_MARGIN = 1.0


@dataclass
class Choices:
    """Per source: the token id to keep at each position and the allowed alternatives."""
    keep: list[list[int]]          # (N, len(source_i)); -1: no token of its own, keep the char
    alts: list[list[list[int]]]    # (N, len(source_i), k_i)


def require_char_vocab(tok, decoding: str, sources: list[str]) -> None:
    """Confusion-set decoders write one token per source character: refuse a tokenizer that
    cannot (no unknown/end ids, or most Chinese characters of the data not single tokens, as
    in byte-level BPE vocabularies), instead of silently keeping every character."""
    missing = [name for name, i in (("unknown", tok.unk_token_id), ("end-of-text", tok.eos_token_id)) if i is None]
    if missing:
        raise ZhloraError(f"--decoding {decoding} needs a character-level vocabulary, but the tokenizer has no "
                          f"{' or '.join(missing)} token id; use --decoding free for this model")
    vocab = tok.get_vocab()
    han = [ch for s in sources for ch in s if "\u4e00" <= ch <= "\u9fff"]
    covered = sum(ch in vocab for ch in han) / len(han) if han else 1.0
    if covered < 0.5:
        raise ZhloraError(f"--decoding {decoding} writes one token per character, but only {covered:.0%} of the "
                          "Chinese characters in the data are single tokens of this model's vocabulary (it is not "
                          "character-level); use --decoding free for this model")


def candidate_table(tokenizer, confusion) -> dict[str, list[int]]:
    """char -> token ids of its confusion candidates that are single tokens of the vocabulary."""
    vocab = tokenizer.get_vocab()
    table: dict[str, list[int]] = {}
    for tab in (confusion.same_tone, confusion.other_tone, confusion.glyph):
        for ch, cands in tab.items():
            if ch in vocab:
                ids = table.setdefault(ch, [])
                ids += [vocab[c] for c in cands if c in vocab and vocab[c] not in ids]
    return table


def build_choices(sources: list[str], tokenizer, table: dict[str, list[int]]) -> Choices:
    vocab = tokenizer.get_vocab()
    keep = [[vocab.get(c, -1) for c in s] for s in sources]
    alts = [[table.get(c, []) if vocab.get(c, -1) >= 0 else [] for c in s] for s in sources]
    return Choices(keep, alts)


class ConfusionProcessor:
    """A transformers LogitsProcessor: rows are the batch, `width` the padded prompt length."""

    def __init__(self, choices: Choices, rows: list[int], width: int, eos_id: int, unk_id: int,
                 margin: float):
        self.c, self.rows, self.width, self.eos, self.unk, self.margin = (
            choices, rows, width, eos_id, unk_id, margin)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        logp = torch.log_softmax(scores.float(), dim=-1)    # (B, V)
        out = torch.full_like(scores, float("-inf"))
        for b, n in enumerate(self.rows):
            keep = self.c.keep[n]
            if step >= len(keep):
                out[b, self.eos] = 0.0
                continue
            k = keep[step] if keep[step] >= 0 else self.unk
            out[b, k] = logp[b, k] + self.margin if keep[step] >= 0 else 0.0
            alts = self.c.alts[n][step]
            if alts:
                out[b, alts] = logp[b, alts]
        return out


def correct(engine, sources: list[str], adapter: str | None = None, margin: float = DEFAULT_MARGIN,
            batch_size: int = 16, confusion=None, progress: bool = False) -> list[str]:
    """Corrected sentences (same length as their sources), in input order."""
    from transformers import GenerationConfig, LogitsProcessorList

    from zhlora.gec.confusion import load_confusion
    from zhlora.gec.prompt import gec_conversation
    from zhlora.infer.batching import pad_id, pad_rows
    from zhlora.progress import progress_bar

    tok = engine.tokenizer
    require_char_vocab(tok, "confusion", sources)
    confusion = confusion or load_confusion("".join(tok.get_vocab()), prefer="auto")
    choices = build_choices(sources, tok, candidate_table(tok, confusion))
    prompts = [engine.encode(gec_conversation(s), adapter) for s in sources]
    pad = pad_id(tok)
    order = sorted(range(len(sources)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(sources)
    bar = progress_bar(len(sources), progress, unit="sent")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_rows([prompts[i] for i in rows], pad, engine.device)
        proc = ConfusionProcessor(choices, rows, ids.shape[1], tok.eos_token_id, tok.unk_token_id, margin)
        cfg = GenerationConfig(max_new_tokens=max(len(sources[i]) for i in rows) + 1, do_sample=False,
                               pad_token_id=pad, eos_token_id=tok.eos_token_id, use_cache=True)
        with engine.using(adapter) as model:
            seqs = model.generate(input_ids=ids, attention_mask=mask,
                                         generation_config=cfg, logits_processor=LogitsProcessorList([proc]))
        for b, n in enumerate(rows):
            out[n] = _to_text(sources[n], seqs[b, ids.shape[1]:].tolist(), choices.keep[n], tok)
        bar.update(len(rows))
    bar.close()
    return out


def _to_text(source: str, new: list[int], keep: list[int], tok) -> str:
    chars = []
    for i, ch in enumerate(source):
        t = new[i] if i < len(new) else keep[i]
        chars.append(ch if keep[i] < 0 or t == keep[i] else tok.convert_ids_to_tokens(t))
    return "".join(chars)

