"""Turn one char-level alignment into ChERRANT's span edits, and name their M2 types.

Steps (ChERRANT modules/merger.py + classifier.py, char granularity):
1. Split the alignment into runs: each run of matches, each transposition on its own, and
   each run of S/D/I. A run of only D (only I) becomes one D (I); a run mixing only D and I
   stays as it is; any other run of several ops becomes one S.
2. Word-order patterns become one transposition spanning three edits:
   "S M S" when the outer pieces are swapped (exactly, if one piece is a single char; else
   each pair within Levenshtein distance 1), and "D M I" / "I M D" (the middle may also be a
   transposition) when the moved pieces are not punctuation, differ in length by at most 1
   and are equal (single char), within distance 1, or rotations of each other.
   Matches are dropped.
3. Edits whose source and target text are equal are dropped; an S edit whose target starts
   or ends with the same chars as its source is shrunk to the differing middle (and becomes
   I or D if one side is left empty).
4. Types: transposition -> W, D -> R (correction -NONE-), I -> M, S -> S.
"""
from __future__ import annotations

from itertools import groupby

from zhlora.gec.scoring.align import AlignOp
from zhlora.gec.scoring.resources import MERGE_PUNCT

M2Edit = tuple[int, int, str, str]  # (start, end, type, correction with tokens space-joined)


def levenshtein(a: str, b: str) -> int:
    """Plain unit-cost edit distance (what python-Levenshtein's distance() returns)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _span(group: list[AlignOp], tag: str) -> AlignOp:
    return (tag, group[0][1], group[-1][2], group[0][3], group[-1][4])


def _process_run(run: list[AlignOp]) -> list[AlignOp]:
    if len(run) <= 1:
        return run
    kinds = {op[0] for op in run}
    if kinds == {"D"} or kinds == {"I"} or kinds == {"M"}:
        return [_span(run, kinds.pop())]
    if kinds == {"D", "I"}:
        return run
    return [_span(run, "S")]


def _runs(alignment: list[AlignOp]) -> list[AlignOp]:
    edits: list[AlignOp] = []
    for key, group in groupby(alignment, lambda x: x[0][0] if x[0][0] in ("M", "T") else ""):
        group = list(group)
        edits.extend(group if key == "T" else _process_run(group))
    return edits


def _swapped(e1: AlignOp, e3: AlignOp, src: list[str], tgt: list[str]) -> bool:
    """The "S M S" test: the first source piece reappears as the last target piece."""
    w1, w2 = "".join(src[e1[1]:e1[2]]), "".join(tgt[e1[3]:e1[4]])
    w3, w4 = "".join(src[e3[1]:e3[2]]), "".join(tgt[e3[3]:e3[4]])
    if min(len(w1), len(w2), len(w3), len(w4)) == 1:
        return w1 == w4 and w2 == w3
    return levenshtein(w1, w4) <= 1 and levenshtein(w2, w3) <= 1


def _moved(e1: AlignOp, e3: AlignOp, src: list[str], tgt: list[str]) -> bool:
    """The "D M I" / "I M D" test: the deleted piece is (almost) the inserted one."""
    dele, ins = (e1, e3) if e1[0] == "D" else (e3, e1)
    a, b = "".join(src[dele[1]:dele[2]]), "".join(tgt[ins[3]:ins[4]])
    if len(a) < len(b):
        a, b = b, a
    if a in MERGE_PUNCT or b in MERGE_PUNCT or len(a) - len(b) > 1:
        return False
    if len(b) == 1:
        return a == b
    return levenshtein(a, b) <= 1 or (len(a) == len(b) and b in a + a)


def _word_order(edits: list[AlignOp], src: list[str], tgt: list[str]) -> list[AlignOp]:
    out: list[AlignOp] = []
    i = 0
    while i < len(edits):
        k1 = edits[i][0][0]
        if i < len(edits) - 2:
            k2, k3 = edits[i + 1][0][0], edits[i + 2][0][0]
            e1, e3 = edits[i], edits[i + 2]
            if k1 == "S" and k2 == "M" and k3 == "S":
                hit = _swapped(e1, e3, src, tgt)
            elif (k1, k3) in (("D", "I"), ("I", "D")) and k2 in ("M", "T"):
                hit = _moved(e1, e3, src, tgt)
            else:
                hit = None
            if hit:
                out.append(_span(edits[i:i + 3], "T" + str(e3[2] - e1[1])))
                i += 3
                continue
            if hit is False:  # pattern seen but not merged: keep the first edit as it is
                out.append(edits[i])
                i += 1
                continue
        if k1 != "M":
            out.append(edits[i])
        i += 1
    return out


def _shrink(edit: AlignOp, src: list[str], tgt: list[str]) -> AlignOp:
    """Trim the common head and tail of an S edit (ChERRANT's second filter)."""
    _, s1, e1, s2, e2 = edit
    span2 = "".join(tgt[s2:e2])
    changed = False
    new_s1, new_s2 = s1, s2
    common, cut1 = "", s1
    for i in range(s1, e1):
        if not span2.startswith(common + src[i]):
            break
        common += src[i]
        cut1 = i + 1
    if common:
        acc = ""
        for i in range(s2, e2):
            acc += tgt[i]
            if acc == common:
                new_s1, new_s2, changed = cut1, i + 1, True
                break
            if len(acc) > len(common):
                break
    new_e1, new_e2 = e1, e2
    common, cut1 = "", e1
    for i in reversed(range(new_s1, e1)):
        if not span2.endswith(src[i] + common):
            break
        common = src[i] + common
        cut1 = i
    if common:
        acc = ""
        for i in reversed(range(new_s2, e2)):
            acc = tgt[i] + acc
            if acc == common:
                new_e1, new_e2, changed = cut1, i, True
                break
            if len(acc) > len(common):
                break
    if not changed:
        return edit
    kind = "I" if new_s1 == new_e1 else "D" if new_s2 == new_e2 else "S"
    return (kind, new_s1, new_e1, new_s2, new_e2)


def merge_alignment(alignment: list[AlignOp], src: list[str], tgt: list[str]) -> list[AlignOp]:
    """ChERRANT's Merger for char granularity: alignment ops -> span edits (op, s1, e1, s2, e2)."""
    out = []
    for edit in _word_order(_runs(alignment), src, tgt):
        if "".join(src[edit[1]:edit[2]]) == "".join(tgt[edit[3]:edit[4]]):
            continue
        out.append(_shrink(edit, src, tgt) if edit[0] == "S" else edit)
    return out


def classify(edits: list[AlignOp], tgt: list[str]) -> list[M2Edit]:
    """Char-level types: T* -> W, D -> R, I -> M, S -> S; correction = target tokens joined by
    spaces (-NONE- for deletions)."""
    names = {"T": "W", "D": "R", "I": "M", "S": "S"}
    out = []
    for op, s1, e1, s2, e2 in edits:
        kind = names[op[0]]
        cor = "-NONE-" if kind == "R" else " ".join(tgt[s2:e2])
        out.append((s1, e1, kind, cor))
    return out
