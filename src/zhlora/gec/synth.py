"""Synthetic CGEC pairs: corrupt clean sentences the way CGEC papers do.

Each clean sentence is segmented with jieba into words; a corrupted sentence gets
`max(1, Binomial(n_han_chars, error_rate))` edits (at most `max_edits`), each drawn from
the error mix:

    char_pinyin      a character -> a homophone (same pinyin; same tone 60%, other tone 40%)
    char_glyph       a character -> a similar-looking character
    char_insert      an extra character (a doubled neighbour or a corpus character)
    char_delete      a character dropped from a word
    word_delete      a whole word dropped
    word_duplicate   a word written twice
    word_swap        two adjacent words swapped
    word_substitute  a word -> a homophone word or a word sharing a character (corpus vocabulary)
    punct            punctuation replaced, dropped, or a comma inserted

A character substitution picks the wrong character uniformly from the confusion set
(`substitute="uniform"`), or in proportion to its count in the input text plus one
(`substitute="frequent"`): writers who pick the wrong character mostly pick one they use often.

A share `keep_ratio` of sentences is left unchanged so the model learns to copy correct
text. Two edits never touch the same word. Everything is driven by one `random.Random(seed)`
and ordered lists (no set or hash order), so the same seed gives byte-identical output.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field

from zhlora.errors import ZhloraError
from zhlora.gec.confusion import ConfusionSet, is_han

ERROR_TYPES = ("char_pinyin", "char_glyph", "char_insert", "char_delete", "word_delete",
               "word_duplicate", "word_swap", "word_substitute", "punct")
DEFAULT_MIX = {"char_pinyin": 0.30, "char_glyph": 0.10, "char_insert": 0.08, "char_delete": 0.08,
               "word_delete": 0.08, "word_duplicate": 0.06, "word_swap": 0.08,
               "word_substitute": 0.10, "punct": 0.12}
PUNCT = "，。、；：！？"
SUBSTITUTE = ("uniform", "frequent")
_CHAR_POOL_MAX = 200_000


@dataclass
class SynthConfig:
    seed: int = 0
    error_rate: float = 0.03      # chance that a given Han character starts an edit
    keep_ratio: float = 0.3       # share of sentences emitted unchanged
    max_edits: int = 4            # per sentence
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    substitute: str = "uniform"   # uniform | frequent: how a substituted character is picked

    def check(self) -> None:
        if self.substitute not in SUBSTITUTE:
            raise ZhloraError(f"substitute {self.substitute!r}: use one of {', '.join(SUBSTITUTE)}")
        if not 0.0 <= self.keep_ratio <= 1.0:
            raise ZhloraError(f"keep ratio {self.keep_ratio} is outside [0, 1]; e.g. --keep-ratio 0.3")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ZhloraError(f"error rate {self.error_rate} is outside [0, 1]; e.g. --error-rate 0.03")
        if self.max_edits < 1:
            raise ZhloraError(f"max edits must be at least 1, got {self.max_edits}")
        check_mix(self.mix)


@dataclass
class Pair:
    source: str                  # the corrupted sentence (model input)
    target: str                  # the clean sentence (expected output)
    edits: list[str]             # error types applied, in order
    line: int = 0                # line of the clean sentence in the input file


@dataclass
class SynthStats:
    sentences: int = 0
    corrupted: int = 0
    kept: int = 0                # left unchanged by keep_ratio
    uncorruptible: int = 0       # no edit applied (too short, nothing eligible)
    edits: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"{self.sentences} sentences: {self.corrupted} corrupted, "
                 f"{self.kept + self.uncorruptible} unchanged ({self.kept} by keep ratio, "
                 f"{self.uncorruptible} with nothing to corrupt)",
                 f"{sum(self.edits.values())} edits:"]
        lines += [f"  {t:<16}{self.edits[t]:>8}" for t in ERROR_TYPES if self.edits[t]]
        return "\n".join(lines)


def parse_mix(text: str) -> dict[str, float]:
    """`char_pinyin=3,punct=1` -> weights; types not named get weight 0."""
    mix = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise ZhloraError(f"--mix item {item!r} is not NAME=WEIGHT; "
                              "e.g. --mix char_pinyin=3,punct=1") from None
    return check_mix(mix)


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    unknown = [k for k in mix if k not in ERROR_TYPES]
    if unknown:
        raise ZhloraError(f"unknown error type(s) in the mix: {', '.join(unknown)}; "
                          f"known: {', '.join(ERROR_TYPES)}")
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ZhloraError(f"mix weights must be >= 0 with a positive sum, got {mix}")
    return mix


def segment(sentences: list[str], progress: bool = False) -> list[list[str]]:
    """jieba words of each sentence (jieba's own messages silenced)."""
    import jieba
    from tqdm import tqdm

    jieba.setLogLevel(logging.WARNING)
    return [jieba.lcut(s, HMM=True) for s in tqdm(sentences, desc="segmenting", unit="sent",
                                                   disable=not progress, leave=False)]


class Corruptor:
    """Applies edits to one sentence's words. `vocab` are corpus words (in first-seen order)."""

    def __init__(self, confusion: ConfusionSet, vocab: list[str], char_pool: list[str], cfg: SynthConfig):
        self.conf, self.vocab, self.char_pool, self.cfg = confusion, vocab, char_pool, cfg
        self._char_count = Counter(char_pool) if cfg.substitute == "frequent" else None
        self._homophones: dict[str, list[str]] | None = None
        self._shared: dict[tuple[int, int, str], list[str]] | None = None
        names = [t for t in ERROR_TYPES if cfg.mix.get(t, 0) > 0]
        self.types, self.weights = names, [cfg.mix[t] for t in names]

    def corrupt(self, words: list[str], rng: random.Random) -> tuple[str, list[str]]:
        """-> (corrupted sentence, error types applied)."""
        toks, locked = list(words), [False] * len(words)
        n_han = sum(is_han(c) for w in words for c in w)
        n = min(self.cfg.max_edits, max(1, sum(rng.random() < self.cfg.error_rate for _ in range(n_han))))
        done: list[str] = []
        for _ in range(n * 6):
            if len(done) == n:
                break
            kind = rng.choices(self.types, self.weights)[0]
            if getattr(self, f"_{kind}")(toks, locked, rng):
                done.append(kind)
        return "".join(toks), done

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def _free_words(toks, locked) -> list[int]:
        return [i for i, t in enumerate(toks) if not locked[i] and t and all(is_han(c) for c in t)]

    def _sub_char(self, toks, locked, rng, tables: list[dict[str, str]]) -> bool:
        spots = [(i, j) for i in self._free_words(toks, locked) for j, c in enumerate(toks[i])
                 if any(c in t for t in tables)]
        if not spots:
            return False
        i, j = rng.choice(spots)
        c = toks[i][j]
        table = rng.choice([t for t in tables if c in t])
        toks[i] = toks[i][:j] + self._pick(table[c], rng) + toks[i][j + 1:]
        locked[i] = True
        return True

    def _pick(self, options: str | list[str], rng: random.Random) -> str:
        if self._char_count is None:
            return rng.choice(options)
        return rng.choices(options, [self._char_count[o] + 1 for o in options])[0]

    # -- edits (each returns True when it changed the sentence) -------------------
    def _char_pinyin(self, toks, locked, rng) -> bool:
        first, second = self.conf.same_tone, self.conf.other_tone
        if rng.random() >= 0.6:
            first, second = second, first
        return (self._sub_char(toks, locked, rng, [first])
                or self._sub_char(toks, locked, rng, [second]))

    def _char_glyph(self, toks, locked, rng) -> bool:
        if self.conf.glyph:
            return self._sub_char(toks, locked, rng, [self.conf.glyph])
        return self._sub_char(toks, locked, rng, [self.conf.same_tone, self.conf.other_tone])

    def _char_insert(self, toks, locked, rng) -> bool:
        free = self._free_words(toks, locked)
        if not free:
            return False
        i = rng.choice(free)
        j = rng.randrange(len(toks[i]) + 1)
        if rng.random() < 0.5 or not self.char_pool:
            c = toks[i][min(j, len(toks[i]) - 1)]  # a doubled character
        else:
            c = rng.choice(self.char_pool)
        toks[i] = toks[i][:j] + c + toks[i][j:]
        locked[i] = True
        return True

    def _char_delete(self, toks, locked, rng) -> bool:
        free = [i for i in self._free_words(toks, locked) if len(toks[i]) >= 2]
        if not free:
            return False
        i = rng.choice(free)
        j = rng.randrange(len(toks[i]))
        toks[i] = toks[i][:j] + toks[i][j + 1:]
        locked[i] = True
        return True

    def _word_delete(self, toks, locked, rng) -> bool:
        free = self._free_words(toks, locked)
        if len(self._free_words(toks, [False] * len(toks))) < 3 or not free:
            return False  # keep at least two words of content
        i = rng.choice(free)
        del toks[i], locked[i]
        for k in (i - 1, i):
            if 0 <= k < len(locked):
                locked[k] = True
        return True

    def _word_duplicate(self, toks, locked, rng) -> bool:
        free = self._free_words(toks, locked)
        if not free:
            return False
        i = rng.choice(free)
        toks.insert(i + 1, toks[i])
        locked[i] = True
        locked.insert(i + 1, True)
        return True

    def _word_swap(self, toks, locked, rng) -> bool:
        free = set(self._free_words(toks, locked))
        pairs = [i for i in sorted(free) if i + 1 in free and toks[i] != toks[i + 1]]
        if not pairs:
            return False
        i = rng.choice(pairs)
        toks[i], toks[i + 1] = toks[i + 1], toks[i]
        locked[i] = locked[i + 1] = True
        return True

    def _word_substitute(self, toks, locked, rng) -> bool:
        free = [i for i in self._free_words(toks, locked) if len(toks[i]) >= 2]
        options = [(i, self._similar_words(toks[i])) for i in free]
        options = [(i, ws) for i, ws in options if ws]
        if not options:
            return False
        i, words = rng.choice(options)
        toks[i] = rng.choice(words)
        locked[i] = True
        return True

    def _punct(self, toks, locked, rng) -> bool:
        marks = [i for i, t in enumerate(toks) if not locked[i] and len(t) == 1 and t in PUNCT]
        gaps = [i for i in range(1, len(toks)) if not locked[i - 1] and not locked[i]
                and is_han(toks[i - 1][-1:] or "a") and is_han(toks[i][:1] or "a")]
        moves = (["replace", "drop"] if marks else []) + (["comma"] if gaps else [])
        if not moves:
            return False
        move = rng.choice(moves)
        if move == "comma":
            i = rng.choice(gaps)
            toks.insert(i, "，")
            locked.insert(i, True)
            return True
        i = rng.choice(marks)
        if move == "drop":
            toks[i] = ""
        else:
            toks[i] = rng.choice([p for p in PUNCT if p != toks[i]])
        locked[i] = True
        return True

    # -- word similarity (built on first use) ------------------------------------
    def _similar_words(self, word: str) -> list[str]:
        if self._homophones is None:
            self._build_word_index()
        from pypinyin import lazy_pinyin

        homo = [w for w in self._homophones.get("".join(lazy_pinyin(word)), []) if w != word]
        if homo:
            return homo
        seen, out = {word}, []
        for j, c in enumerate(word):
            for w in self._shared.get((len(word), j, c), []):
                if w not in seen:
                    seen.add(w)
                    out.append(w)
        return out

    def _build_word_index(self) -> None:
        from pypinyin import lazy_pinyin

        self._homophones, self._shared = {}, {}
        for w in self.vocab:
            if len(w) < 2 or not all(is_han(c) for c in w):
                continue
            self._homophones.setdefault("".join(lazy_pinyin(w)), []).append(w)
            for j, c in enumerate(w):
                self._shared.setdefault((len(w), j, c), []).append(w)


def corpus_vocab(segmented: list[list[str]]) -> tuple[list[str], list[str]]:
    """(distinct words in first-seen order, Han characters with repetition, capped)."""
    seen: dict[str, None] = {}
    pool: list[str] = []
    for words in segmented:
        for w in words:
            seen.setdefault(w, None)
            if len(pool) < _CHAR_POOL_MAX:
                pool.extend(c for c in w if is_han(c))
    return list(seen), pool[:_CHAR_POOL_MAX]


def synthesize(sentences: list[str], cfg: SynthConfig, confusion: ConfusionSet,
               lines: list[int] | None = None, progress: bool = False) -> tuple[list[Pair], SynthStats]:
    """Corrupt `sentences` (clean, one per item) -> (pairs in input order, stats)."""
    from tqdm import tqdm

    cfg.check()
    segmented = segment(sentences, progress)
    vocab, pool = corpus_vocab(segmented)
    corruptor = Corruptor(confusion, vocab, pool, cfg)
    rng = random.Random(cfg.seed)
    stats, pairs = SynthStats(), []
    lines = lines or list(range(1, len(sentences) + 1))
    for sent, words, line in tqdm(list(zip(sentences, segmented, lines)), desc="corrupting",
                                  unit="sent", disable=not progress, leave=False):
        stats.sentences += 1
        if rng.random() < cfg.keep_ratio:
            stats.kept += 1
            pairs.append(Pair(sent, sent, [], line))
            continue
        wrong, edits = corruptor.corrupt(words, rng)
        if wrong == sent:
            stats.uncorruptible += 1
            edits = []
        else:
            stats.corrupted += 1
            stats.edits.update(edits)
        pairs.append(Pair(wrong, sent, edits, line))
    return pairs, stats


def read_sentences(path) -> tuple[list[str], list[int]]:
    """Non-empty stripped lines of a UTF-8 file -> (sentences, their line numbers)."""
    from zhlora.gec.formats import read_lines

    sents, lines = [], []
    for n, text in read_lines(path):
        text = " ".join(text.split("\t")).strip()
        if text:
            sents.append(text)
            lines.append(n)
    if not sents:
        raise ZhloraError(f"{path}: no sentences (the file is empty); give one clean sentence per line")
    return sents, lines


def pairs_text(pairs: list[Pair], fmt: str) -> str:
    """alpaca JSONL (instruction/input/output) or para `line<TAB>wrong<TAB>correct`."""
    import json

    from zhlora.gec.prompt import gec_record

    if fmt == "para":
        return "".join(f"{p.line}\t{p.source}\t{p.target}\n" for p in pairs)
    if fmt == "alpaca":
        return "".join(json.dumps(gec_record(p.source, p.target), ensure_ascii=False) + "\n"
                       for p in pairs)
    raise ZhloraError(f"unknown output format {fmt!r}; use alpaca or para")


def run_synth(input_path, output_path, cfg: SynthConfig, fmt: str = "alpaca", confusion: str = "auto",
              overwrite: bool = False, progress: bool = False) -> tuple[SynthStats, ConfusionSet]:
    """Read clean sentences, corrupt them, write the pairs. -> (stats, confusion set used)."""
    from zhlora.gec.confusion import load_confusion
    from zhlora.outputs import atomic_write_text, check_output_free

    cfg.check()
    check_output_free(output_path, overwrite)
    sents, lines = read_sentences(input_path)
    conf = load_confusion("".join(sents), prefer=confusion)
    pairs, stats = synthesize(sents, cfg, conf, lines, progress=progress)
    atomic_write_text(output_path, pairs_text(pairs, fmt))
    return stats, conf
