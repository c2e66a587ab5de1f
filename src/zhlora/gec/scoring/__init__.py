"""ChERRANT-compatible CGEC scoring (char level), reimplemented to give ChERRANT's numbers.

Reference: ChERRANT in github.com/HillZhang1999/MuCGEC @ 3922193, `parallel_to_m2.py -g char`
(default `-s all`) and `compare_m2_for_evaluation.py` (span-based correction, beta 0.5).
Checked against ChERRANT's own output on MuCGEC dev (1084/1635/3003, F0.5 0.3622), its demo
files and 31 edge cases (tests/test_gec_score*.py). Needs pypinyin==0.55.0 and OpenCC t2s
(opencc-python-reimplemented==0.1.7 gives the same conversions as OpenCC 1.4.2 on the data).

Formats
- para line: `id<TAB>source<TAB>target1[<TAB>target2...]`; a hypothesis line is
  `id<TAB>source<TAB>prediction`. Targets `没有错误` (or equal to the source) mean "no error",
  `无法标注` means "skip this sentence". Whitespace is removed, targets go through t2s.
- M2 block: `S <source chars>` then, per target k, `T{k}-A{n} <target chars>` and its
  `A start end|||type|||correction|||REQUIRED|||-NONE-|||k` lines (types M/R/S/W; noop, NA).
  Blocks are strings without the blank separator line; files separate them by a blank line.

API (all counts are ints; P/R/F are ChERRANT's values rounded to 4 places):
- `parallel_to_m2(lines, workers=1, simplify=True) -> list[str]` para lines -> M2 blocks.
- `score(hyp_m2_blocks, ref_m2_blocks, beta=0.5) -> Score` compare aligned block lists.
- `score_para(hyp, ref, fmt="para", hyp_fmt="para", m2_out=None, ref_m2_out=None,
  workers=2, overwrite=False, beta=0.5) -> Score` the whole pipeline from files or lines.
- `Score`: tp, fp, fn, p, r, f (== f05 for beta 0.5), beta, sentences (list of
  `SentenceScore(n, tp, fp, fn, hyp_annotator, ref_annotator, skipped)`, n 1-based, the
  counts ChERRANT kept for that sentence), notes (repairs made), as_dict().
- `read_para`, `read_m2`, `write_m2`, `m2_text`, `f_score` helpers.

Robustness (where ChERRANT crashes): an empty prediction, or a hypothesis with fewer
sentences than the reference, is scored as "no edits" (and noted in Score.notes); extra
hypothesis sentences are ignored (noted). A line without any TAB raises DataError.
"""
from __future__ import annotations

import os
from typing import Sequence

from zhlora.errors import ZhloraError
from zhlora.gec.scoring.compare import Score, SentenceScore, f_score, score_blocks
from zhlora.gec.scoring.pipeline import (PathOrLines, align_blocks, convert_lines, m2_text,
                                         read_m2, read_para, source_mismatches, write_m2)

__all__ = ["Score", "SentenceScore", "f_score", "m2_text", "parallel_to_m2", "read_m2",
           "read_para", "score", "score_para", "write_m2"]


def parallel_to_m2(lines: Sequence[str], workers: int = 1, simplify: bool = True) -> list[str]:
    """Para lines (`id\\tsource\\ttarget1[\\ttarget2...]`, no newline needed) -> one M2 block
    per line, identical to ChERRANT's `parallel_to_m2.py -g char` output for that line.

    workers > 1 converts in that many processes (order kept). simplify=False skips t2s
    (ChERRANT's --no_simplified). Raises DataError for a line without a TAB.
    """
    return convert_lines(read_para(list(lines), "para"), workers, simplify)


def score(hyp_m2_blocks: Sequence[str], ref_m2_blocks: Sequence[str], beta: float = 0.5) -> Score:
    """Corpus P/R/F_beta of hypothesis M2 blocks against reference M2 blocks, sentence by
    sentence in order (ChERRANT's compare_m2_for_evaluation.py). Missing hypothesis blocks
    and empty blocks count as "no edits"; extra hypothesis blocks are ignored."""
    hyp, notes = align_blocks(list(hyp_m2_blocks), list(ref_m2_blocks))
    return score_blocks(hyp, list(ref_m2_blocks), beta, notes)


def score_para(hyp: PathOrLines, ref: PathOrLines, fmt: str = "para", hyp_fmt: str = "para",
               m2_out: str | os.PathLike | None = None,
               ref_m2_out: str | os.PathLike | None = None, workers: int = 2,
               overwrite: bool = False, beta: float = 0.5) -> Score:
    """Score a hypothesis against references, from files (str/PathLike = path) or lists of lines.

    hyp: para (`id\\tsource\\tprediction`, hyp_fmt="para") or M2 blocks (hyp_fmt="m2").
    ref: para with one or more targets (fmt="para") or ChERRANT M2 (fmt="m2").
    Para inputs are converted with `parallel_to_m2` on `workers` processes (hypothesis and
    reference lines share one pool). m2_out / ref_m2_out: where to write the converted
    hypothesis / reference M2 (refused if the file exists unless overwrite=True).
    Returns the Score; Score.notes lists repairs (short hypothesis, differing sources).
    """
    for name, value in (("fmt", fmt), ("hyp_fmt", hyp_fmt)):
        if value not in ("para", "m2"):
            raise ZhloraError(f"score_para: {name}={value!r} is not a format; use 'para' or 'm2'")
    hyp_lines = read_para(hyp, "hypothesis para") if hyp_fmt == "para" else None
    ref_lines = read_para(ref, "reference para") if fmt == "para" else None
    todo = (hyp_lines or []) + (ref_lines or [])
    blocks = convert_lines(todo, workers) if todo else []
    n_hyp = len(hyp_lines or [])
    hyp_blocks = blocks[:n_hyp] if hyp_lines is not None else read_m2(hyp, "hypothesis M2")
    ref_blocks = blocks[n_hyp:] if ref_lines is not None else read_m2(ref, "reference M2")
    if m2_out is not None and hyp_lines is not None:
        write_m2(hyp_blocks, m2_out, overwrite)
    if ref_m2_out is not None and ref_lines is not None:
        write_m2(ref_blocks, ref_m2_out, overwrite)
    result = score(hyp_blocks, ref_blocks, beta)
    if hyp_lines is not None and ref_lines is not None:
        result.notes.extend(source_mismatches(hyp_lines, ref_lines))
    return result
