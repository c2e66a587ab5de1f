"""Lexical resources behind ChERRANT's char-level substitution cost, loaded once per process.

ChERRANT prices substituting character `a` by `b` (a != b) as

    semantic(a, b) / 6.0  +  spelling(a, b)  +  punct(a, b)

- semantic: from Tongyici Cilin codes (high, mid, low = code[0], code[1], code[2:4]):
  4 if either char is not in Cilin, 0 if the classes are equal, else 2 * (3 - shared levels).
- spelling: 0.5 unless both chars are CJK (U+4E00..U+9FFF); for two CJK chars 0.0 if they
  share a pinyin reading (pypinyin, all heteronyms) or one is in the other's confusion set,
  else 0.5.
- punct: 0.0 if both are punctuation, 0.25 if neither is, 0.499 if exactly one is.

The sum is evaluated in exactly that order with Python floats, because ties between
alignments are decided by float equality and must come out as in ChERRANT.
"""
from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from pathlib import Path

from zhlora.errors import ZhloraError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# ChERRANT's alignment-cost punctuation (modules/alignment.py): Chinese + ASCII.
ALIGN_PUNCT = ("！？｡＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗"
               "〘〙〚〛〜〝〞〟〰〾〿–—‘'‛“”„‟…‧﹏") + string.punctuation
# ChERRANT's merger punctuation (modules/merger.py): a slightly different set. Membership
# is a substring test on this string, as in ChERRANT.
MERGE_PUNCT = string.punctuation + ("！？｡＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》"
                                    "「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟–—‘'‛“”„‟…‧.")


@dataclass(frozen=True)
class CharInfo:
    """What the substitution cost needs to know about one token."""
    cilin: tuple[str, str, str] | None  # (high, mid, low) semantic class, None if unknown
    cjk: bool                           # every char in U+4E00..U+9FFF
    punct: bool                         # substring of ALIGN_PUNCT
    pinyin: frozenset[str]              # readings (only filled for CJK tokens)
    confusion: frozenset[str]           # confusion set (only filled for CJK tokens)


def _read_data(name: str, encoding: str) -> str:
    path = DATA_DIR / name
    try:
        return path.read_text(encoding=encoding)
    except OSError as e:
        raise ZhloraError(f"cannot read the scorer data file {path}: {e}; reinstall zhlora "
                          "(the file ships in src/zhlora/gec/data/)") from e


@functools.lru_cache(maxsize=1)
def cilin_classes() -> dict[str, tuple[str, str, str]]:
    """Single-character entries of Cilin -> (high, mid, low); a later line wins, as in ChERRANT."""
    out: dict[str, tuple[str, str, str]] = {}
    for line in _read_data("cilin.txt", "gbk").strip().split("\n"):
        code, *words = line.split(" ")
        for word in words:
            if len(word) == 1:
                out[word] = (code[0], code[1], code[2:4])
    return out


@functools.lru_cache(maxsize=1)
def confusion_sets() -> dict[str, frozenset[str]]:
    """char -> chars it is confused with (confusion_dict.txt; a later line wins)."""
    out: dict[str, frozenset[str]] = {}
    for line in _read_data("confusion_dict.txt", "utf-8").split("\n"):
        if line:
            head, *rest = line.split(" ")
            out[head] = frozenset(rest)
    return out


def is_cjk(token: str) -> bool:
    return all("\u4e00" <= ch <= "\u9fff" for ch in token)


@functools.lru_cache(maxsize=None)
def char_info(token: str) -> CharInfo:
    cjk = is_cjk(token)
    readings: frozenset[str] = frozenset()
    confusion: frozenset[str] = frozenset()
    if cjk:
        readings = frozenset(_pinyin(token))
        confusion = confusion_sets().get(token, frozenset())
    return CharInfo(cilin_classes().get(token), cjk, token in ALIGN_PUNCT, readings, confusion)


def _pinyin(token: str) -> list[str]:
    # ChERRANT: pinyin(char, style=Style.NORMAL, heteronym=True)[0]
    from pypinyin import Style, pinyin

    return pinyin(token, style=Style.NORMAL, heteronym=True)[0]


def _semantic_cost(ca: tuple[str, str, str] | None, cb: tuple[str, str, str] | None) -> int:
    if ca is None or cb is None:
        return 4
    if ca == cb:
        return 0
    return 2 * (3 - ((ca[0] == cb[0]) + (ca[1] == cb[1]) + (ca[2] == cb[2])))


def _similar_spelling(a: str, b: str, ia: CharInfo, ib: CharInfo) -> bool:
    """Two CJK chars share a reading or one is in the other's confusion set."""
    return not ia.pinyin.isdisjoint(ib.pinyin) or a in ib.confusion or b in ia.confusion


# All values the cost can take, each computed as ChERRANT does: sem / 6.0 + spell + punct.
_COST_TABLE = {(sem, spell, punct): sem / 6.0 + spell + punct
               for sem in (0, 2, 4, 6) for spell in (0.0, 0.5) for punct in (0.0, 0.25, 0.499)}


def _compute_sub_cost(a: str, b: str) -> float:
    ia, ib = char_info(a), char_info(b)
    spell = 0.0 if ia.cjk and ib.cjk and _similar_spelling(a, b, ia, ib) else 0.5
    punct = 0.0 if ia.punct and ib.punct else 0.25 if not (ia.punct or ib.punct) else 0.499
    return _COST_TABLE[_semantic_cost(ia.cilin, ib.cilin), spell, punct]


_SUB_CACHE: dict[str, dict[str, float]] = {}


def sub_costs_from(a: str) -> dict[str, float]:
    """The (growing) cache of sub_cost(a, b) for all b seen so far; fill misses with sub_cost."""
    row = _SUB_CACHE.get(a)
    if row is None:
        row = _SUB_CACHE[a] = {a: 0}
    return row


def sub_cost(a: str, b: str) -> float:
    """Cost of substituting token `a` by token `b` (0 when equal, else in [0.25, 1.999])."""
    row = sub_costs_from(a)
    c = row.get(b)
    if c is None:
        c = row[b] = _compute_sub_cost(a, b)
    return c
