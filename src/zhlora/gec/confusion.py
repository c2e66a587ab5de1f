"""Character confusion sets for synthetic CGEC errors.

Two sources, in order of preference:

1. pycorrector's data files (`pycorrector/data/same_pinyin.txt`, `same_stroke.txt`,
   Apache-2.0), read straight from the installed package. pycorrector is never imported:
   its `__init__` pulls in torch and transformers, which takes seconds. The package folder
   is found with `importlib.util.find_spec`, which does not run the package.
   - `same_pinyin.txt`: `char<TAB>same pinyin, same tone<TAB>same pinyin, other tone`
   - `same_stroke.txt`: one group of similar-looking characters per line, TAB-separated.
2. A fallback built with `pypinyin` over a list of characters (the characters of the
   input corpus): characters that share a reading (with tone / without tone). It has no
   glyph similarity; similar-glyph substitutions then draw from the same-pinyin sets.

Every table maps a character to a string of candidates in a fixed order (file order or
sorted), so sampling with a seeded RNG is reproducible.
"""
from __future__ import annotations

import importlib.util
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.errors import ZhloraError

PYCORRECTOR_FILES = ("same_pinyin.txt", "same_stroke.txt")


@dataclass
class ConfusionSet:
    """char -> candidate characters (a string, no duplicates, never the char itself)."""

    same_tone: dict[str, str] = field(default_factory=dict)    # same pinyin, same tone
    other_tone: dict[str, str] = field(default_factory=dict)   # same pinyin, other tone
    glyph: dict[str, str] = field(default_factory=dict)        # similar shape
    source: str = ""                                           # where the tables came from

    def summary(self) -> str:
        return (f"{self.source}: {len(self.same_tone)} chars with same-tone homophones, "
                f"{len(self.other_tone)} with other-tone homophones, {len(self.glyph)} with "
                "similar glyphs")


def is_han(ch: str) -> bool:
    """True for a CJK unified ideograph (the characters GEC substitutes)."""
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def pycorrector_data_dir() -> Path | None:
    """pycorrector's `data/` folder if the package is installed, without importing it."""
    try:
        spec = importlib.util.find_spec("pycorrector")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if all((d / f).is_file() for f in PYCORRECTOR_FILES):
            return d
    return None


def _dedup(chars: str, exclude: str) -> str:
    seen, out = {exclude}, []
    for c in chars:
        if c not in seen and is_han(c):
            seen.add(c)
            out.append(c)
    return "".join(out)


def read_same_pinyin(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(same tone, other tone) tables from pycorrector's `same_pinyin.txt`."""
    same, other = {}, {}
    for line in _lines(path):
        parts = line.split("\t")
        ch = parts[0].strip()
        if len(ch) != 1 or line.startswith("#"):
            continue
        if len(parts) > 1 and (s := _dedup(parts[1].strip(), ch)):
            same[ch] = s
        if len(parts) > 2 and (o := _dedup(parts[2].strip(), ch)):
            other[ch] = o
    return same, other


def read_same_stroke(path: Path) -> dict[str, str]:
    """Similar-glyph table from pycorrector's `same_stroke.txt` (groups, one per line)."""
    groups: dict[str, list[str]] = {}
    for line in _lines(path):
        if line.startswith("#"):
            continue
        group = [c.strip() for c in line.split("\t") if len(c.strip()) == 1]
        for c in group:
            groups.setdefault(c, []).extend(group)
    return {c: s for c, members in groups.items() if (s := _dedup("".join(members), c))}


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ZhloraError(f"{path}: cannot read the confusion set ({e}); reinstall pycorrector "
                          "(`pip install pycorrector`) or uninstall it to use the pypinyin "
                          "fallback") from None


def from_pycorrector(data_dir: Path) -> ConfusionSet:
    same, other = read_same_pinyin(data_dir / "same_pinyin.txt")
    glyph = read_same_stroke(data_dir / "same_stroke.txt")
    return ConfusionSet(same, other, glyph, source=f"pycorrector ({data_dir})")


def from_pypinyin(chars: str) -> ConfusionSet:
    """Homophone tables over the Han characters in `chars` (no glyph table)."""
    try:
        from pypinyin import Style, lazy_pinyin
    except ImportError:
        raise ZhloraError("building a confusion set needs pypinyin or pycorrector; install "
                          "them with `pip install 'zhlora[gec]'`") from None
    han = sorted({unicodedata.normalize("NFC", c) for c in chars if is_han(c)})
    toned: dict[str, list[str]] = {}
    toneless: dict[str, list[str]] = {}
    reading = {}
    for c in han:
        t = lazy_pinyin(c, style=Style.TONE3, neutral_tone_with_five=True)[0]
        reading[c] = t
        toned.setdefault(t, []).append(c)
        toneless.setdefault(t.rstrip("012345"), []).append(c)
    same, other = {}, {}
    for c, t in reading.items():
        if s := _dedup("".join(toned[t]), c):
            same[c] = s
        if o := _dedup("".join(x for x in toneless[t.rstrip("012345")] if reading[x] != t), c):
            other[c] = o
    return ConfusionSet(same, other, {}, source=f"pypinyin over {len(han)} corpus characters")


def load_confusion(corpus_chars: str = "", prefer: str = "auto") -> ConfusionSet:
    """The confusion set to use. `prefer`: auto (pycorrector if installed) | pycorrector |
    pypinyin. The pypinyin fallback is built over `corpus_chars`."""
    if prefer not in ("auto", "pycorrector", "pypinyin"):
        raise ZhloraError(f"unknown confusion source {prefer!r}; use auto, pycorrector or pypinyin")
    if prefer != "pypinyin":
        d = pycorrector_data_dir()
        if d is not None:
            return from_pycorrector(d)
        if prefer == "pycorrector":
            raise ZhloraError("pycorrector's confusion files were not found; install them with "
                              "`pip install pycorrector` (or `pip install --no-deps pycorrector`) "
                              "or use --confusion pypinyin")
    return from_pypinyin(corpus_chars)
