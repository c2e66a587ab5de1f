"""Parallel sentences -> M2 blocks, as ChERRANT's `parallel_to_m2.py -g char` writes them.

A para line is `id<TAB>source<TAB>target1[<TAB>target2...]`. Per target k (annotator k):
- all Unicode whitespace is removed from source and target (Python `str.split()`);
- the target (never the source) goes through OpenCC t2s;
- target == source or target == "没有错误": `T{k} 没有错误` + a noop edit;
  target == "无法标注": `T{k} 无法标注` + an NA edit (the sentence is skipped in scoring);
- otherwise every minimal-cost alignment is merged into edits; each distinct edit list is
  written as `T{k}-A{n} <target chars>` followed by its `A` lines (all under annotator k).
A block is the `S` line and the lines of all targets, without the trailing empty line.
A line with no target (e.g. an empty prediction) gives a block with only the `S` line, which
scoring reads as "no edits" (ChERRANT itself crashes on it).
"""
from __future__ import annotations

import functools

from zhlora.gec.scoring.align import cheapest_alignments
from zhlora.gec.scoring.merge import classify, merge_alignment

NO_ERROR = "没有错误"
NOT_ANNOTATABLE = "无法标注"
_GAP = "[缺失成分]"  # ChERRANT keeps this marker as one token


def remove_whitespace(text: str) -> str:
    return "".join(text.split())


@functools.lru_cache(maxsize=1)
def _t2s_converter():
    from opencc import OpenCC  # opencc-python-reimplemented (or the OpenCC binding)

    return OpenCC("t2s")


def to_simplified(text: str) -> str:
    """OpenCC t2s (phrase-level), as ChERRANT applies it to targets."""
    return _t2s_converter().convert(text)


def tokenize(text: str) -> list[str]:
    """Characters, except that the marker [缺失成分] stays one token."""
    if _GAP not in text:
        return list(text)
    out: list[str] = []
    for n, piece in enumerate(text.split(_GAP)):
        if n:
            out.append(_GAP)
        out.extend(piece)
    return out


def _a_line(start: int, end: int, kind: str, cor: str, annotator: int) -> str:
    return f"A {start} {end}|||{kind}|||{cor}|||REQUIRED|||-NONE-|||{annotator}"


def annotate_target(src: list[str], target: str, annotator: int) -> list[str]:
    """The T and A lines for one (already normalised) target."""
    tgt = tokenize(target)
    if target == NO_ERROR or "".join(src) == "".join(tgt):
        return [f"T{annotator} {NO_ERROR}", _a_line(-1, -1, "noop", "-NONE-", annotator)]
    if target == NOT_ANNOTATABLE:
        return [f"T{annotator} {NOT_ANNOTATABLE}", _a_line(-1, -1, "NA", "-NONE-", annotator)]
    lines: list[str] = []
    seen: list[list] = []
    for alignment in cheapest_alignments(src, tgt):
        edits = merge_alignment(alignment, src, tgt)
        if edits in seen:
            continue
        seen.append(edits)
        lines.append(f"T{annotator}-A{len(seen) - 1} " + " ".join(tgt))
        lines.extend(_a_line(*e, annotator) for e in classify(edits, tgt))
    return lines


def para_line_to_m2(line: str, simplify: bool = True) -> str:
    """One para line (`id\\tsource\\ttarget...`, already checked to have a source) -> M2 block."""
    fields = line.split("\t")[1:]
    src = tokenize(remove_whitespace(fields[0]))
    lines = ["S " + " ".join(src)]
    for k, raw in enumerate(fields[1:]):
        target = remove_whitespace(raw)
        if simplify:
            target = to_simplified(target)
        if not target:  # empty prediction: no edits (ChERRANT crashes here)
            continue
        lines.extend(annotate_target(src, target, k))
    return "\n".join(lines)
