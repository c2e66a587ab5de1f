"""Files in, scores out: para/M2 reading, parallel conversion over worker processes, and the
repairs that keep a bad hypothesis file from crashing the scorer."""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Sequence, Union

from zhlora.errors import DataError, ZhloraError
from zhlora.gec.scoring.compare import Score, score_blocks
from zhlora.gec.scoring.m2 import para_line_to_m2, remove_whitespace
from zhlora.gec.scoring.resources import char_info, cilin_classes, confusion_sets
from zhlora.outputs import atomic_write_text, check_output_free

PathOrLines = Union[str, os.PathLike, Sequence[str]]
_CHUNK = 8  # lines per task: sentences vary a lot in cost, small chunks balance the workers


def _load(source: PathOrLines, what: str) -> tuple[str, str | None]:
    """(text, origin) for a path, or (joined lines, None) for a list of lines."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ZhloraError(f"cannot read the {what} file {path}: {e}; pass an existing "
                              "UTF-8 file (or a list of lines)") from e
    return "\n".join(line.rstrip("\n") for line in source), None


def read_para(source: PathOrLines, what: str = "para") -> list[str]:
    """Para lines `id<TAB>source[<TAB>target...]` (trailing empty lines dropped). Every line
    needs at least id and source; a line without a target means "no edits"."""
    text, origin = _load(source, what)
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    where = origin or f"<{what} lines>"
    problems = [f"{where}:{n}: expected id<TAB>source<TAB>target, found no TAB"
                for n, line in enumerate(lines, 1) if "\t" not in line]
    if problems:
        raise DataError(problems, hint="A para file has one sentence per line: "
                        "id<TAB>source<TAB>target1[<TAB>target2...] (a hypothesis has one target).")
    return lines


def read_m2(source: PathOrLines, what: str = "M2") -> list[str]:
    """M2 blocks, split as ChERRANT does (whole text stripped, then split on blank lines)."""
    text, _ = _load(source, what)
    text = text.strip()
    return text.split("\n\n") if text else []


def m2_text(blocks: Sequence[str]) -> str:
    """The M2 file ChERRANT writes: each block followed by one empty line."""
    return "".join(block + "\n\n" for block in blocks)


def _warm_up() -> None:
    """Load the lexicons before forking so the workers share them."""
    cilin_classes()
    confusion_sets()
    char_info("中")


def _pool_context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def convert_lines(lines: Sequence[str], workers: int = 1, simplify: bool = True) -> list[str]:
    """para_line_to_m2 over checked lines, in order, on `workers` processes."""
    _warm_up()
    if workers <= 1 or len(lines) < 4 * _CHUNK:
        return [para_line_to_m2(line, simplify) for line in lines]
    with _pool_context().Pool(workers) as pool:
        return list(pool.imap(para_line_to_m2, lines, chunksize=_CHUNK))


def align_blocks(hyp: list[str], ref: list[str]) -> tuple[list[str], list[str]]:
    """Pad a short hypothesis with empty ("no edits") blocks, drop extra ones; say so."""
    notes = []
    if len(hyp) < len(ref):
        notes.append(f"hypothesis has {len(hyp)} sentences, reference {len(ref)}: the "
                     f"missing {len(ref) - len(hyp)} are scored as 'no edits'")
        hyp = hyp + [""] * (len(ref) - len(hyp))
    elif len(hyp) > len(ref):
        notes.append(f"hypothesis has {len(hyp)} sentences, reference {len(ref)}: the extra "
                     f"{len(hyp) - len(ref)} are ignored")
        hyp = hyp[:len(ref)]
    return hyp, notes


def source_mismatches(hyp_lines: Sequence[str], ref_lines: Sequence[str]) -> list[str]:
    """A note when hypothesis and reference sources differ (whitespace ignored)."""
    bad = [n for n, (h, r) in enumerate(zip(hyp_lines, ref_lines), 1)
           if remove_whitespace(h.split("\t")[1]) != remove_whitespace(r.split("\t")[1])]
    if not bad:
        return []
    shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
    return [f"{len(bad)} line(s) have a hypothesis source that differs from the reference "
            f"source (lines {shown}); their edits are scored against the reference as they are"]


def write_m2(blocks: Sequence[str], path: str | os.PathLike, overwrite: bool = False) -> Path:
    out = check_output_free(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, m2_text(blocks))
    return out
