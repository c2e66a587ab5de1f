"""M2 blocks: an `S` line of tokens, then `A start end|||type|||corr|||...|||annotator` edits;
one target per annotator, rebuilt from its edits."""
from __future__ import annotations

import re

from zhlora.gec.formats.base import UNANNOTATABLE, Example, finish, read_lines


def join_tokens(tokens: list[str], words: bool = False) -> str:
    """Tokens -> text without spaces. `words` (word-level M2 such as NLPCC18): keep one space
    between two ASCII letters/digits (`I love NLP`); char-level M2 splits `MP3` into chars."""
    out = ""
    for t in tokens:
        if (words and out and t and out[-1].isascii() and out[-1].isalnum()
                and t[0].isascii() and t[0].isalnum()):
            out += " "
        out += t
    return out


def _apply_m2_edits(tokens: list[str], edits: list[tuple[int, int, str]], words: bool) -> str:
    """Apply (start, end, correction tokens) edits of one annotator; overlaps are skipped."""
    out, pos = [], 0
    for start, end, corr in sorted(set(edits), key=lambda e: (e[0], e[1])):
        if start < pos:
            continue  # overlaps an edit already applied (ChERRANT tie duplicates)
        out += tokens[pos:start]
        out += corr.split() if corr not in ("-NONE-", "") else []
        pos = end
    return join_tokens(out + tokens[pos:], words)


def load_m2(path, fmt: str = "m2") -> list[Example]:
    examples, problems = [], []
    block: list[tuple[int, str]] = []
    for n, line in read_lines(path) + [(0, "")]:
        if line.strip():
            block.append((n, line))
            continue
        if block:
            ex = _m2_block(path, block, len(examples) + 1, problems, fmt == "nlpcc18")
            if ex:
                examples.append(ex)
            block = []
    return finish(path, examples, problems, fmt)


def _m2_block(path, block, index: int, problems: list[str], words: bool) -> Example | None:
    n0, head = block[0]
    if not head.startswith("S "):
        problems.append(f"{path}:{n0}: an M2 block must start with 'S <tokens>'")
        return None
    tokens = head[2:].split()
    edits: dict[int, list[tuple[int, int, str]]] = {}
    special: dict[int, str] = {}
    skip = False  # ChERRANT writes `Tk-Aj` before each alignment; keep only alignment A0
    for n, line in block[1:]:
        if line.startswith("T"):
            m = re.match(r"T\d+-A(\d+)", line)
            skip = bool(m and m.group(1) != "0")
        if not line.startswith("A ") or skip:
            continue
        parts = line[2:].split("|||")
        try:
            start, end = (int(x) for x in parts[0].split())
            corr, ann = parts[2].strip(), int(parts[-1])
        except (ValueError, IndexError):
            problems.append(f"{path}:{n}: bad edit line; expected "
                            "'A start end|||type|||correction|||REQUIRED|||-NONE-|||annotator'")
            continue
        edits.setdefault(ann, [])
        if start < 0:
            special[ann] = UNANNOTATABLE if parts[1].strip() == "NA" else ""
        elif not 0 <= start <= end <= len(tokens):
            problems.append(f"{path}:{n}: edit span {start} {end} is outside the sentence "
                            f"({len(tokens)} tokens)")
        else:
            edits[ann].append((start, end, corr))
    source = join_tokens(tokens, words)
    targets = [special.get(a) or _apply_m2_edits(tokens, edits[a], words) for a in sorted(edits)]
    return Example(str(index), source, targets or [source])
