"""Loaders for the public CGEC formats, and writers for ours.

Every loader returns `list[Example]`, `Example = (id, source, targets)`; `targets` may be
empty when a file has no gold corrections (a test set). Problems are collected for the
whole file and raised as one `DataError` of `file:line: reason` lines.

    para / mucgec  `id<TAB>source<TAB>target1<TAB>target2...` (MuCGEC, NaCGEC, ChERRANT)
    sighan         `source<TAB>target` (pycorrector's sighan2015_test.tsv); `#` lines skipped
    m2             M2 blocks (`S` line of tokens, `A start end|||type|||corr|||...|||annotator`);
                   one target per annotator, rebuilt from its edits
    nlpcc18        the NLPCC 2018 gold M2 (word level) or its training file
                   `sid<TAB>n<TAB>source<TAB>n corrections...` (n = 0: already correct)
    fcgec          FCGEC JSON `{id: {"sentence", "error_flag", "operation", ...}}`
    cged           CGED XML `<DOC><TEXT id=..>wrong</TEXT><CORRECTION>right</CORRECTION>...`
    jsonl          JSON lines with a source (`source|src|input`) and target(s)
                   (`target|tgt|output|targets|correction`), e.g. `gec synth` output

Ours: para (as above) and alpaca JSONL with the GEC prompt (`prompt.gec_record`).
MuCGEC's special targets are kept as written: `没有错误` (no error: target = source) and
`无法标注` (cannot be annotated: skipped by the scorer, left out of training data).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zhlora.errors import ZhloraError, require_file
from zhlora.gec.formats.base import NO_ERROR, UNANNOTATABLE, Example, read_lines, resolved_targets
from zhlora.gec.formats.cged import load_cged
from zhlora.gec.formats.fcgec import apply_fcgec_operations, load_fcgec
from zhlora.gec.formats.jsonl import load_jsonl
from zhlora.gec.formats.lines import load_nlpcc18, load_para, load_sighan
from zhlora.gec.formats.m2 import join_tokens, load_m2

FORMATS = ("para", "mucgec", "sighan", "m2", "nlpcc18", "fcgec", "cged", "jsonl")
__all__ = ["Example", "FORMATS", "NO_ERROR", "UNANNOTATABLE", "alpaca_text", "apply_fcgec_operations",
           "detect_format", "join_tokens", "load", "para_text", "read_lines", "resolved_targets"]


LOADERS = {"para": load_para, "mucgec": load_para, "sighan": load_sighan, "m2": load_m2,
           "nlpcc18": load_nlpcc18, "fcgec": load_fcgec, "cged": load_cged, "jsonl": load_jsonl}


def detect_format(path: str | Path) -> str:
    """Guess a file's format from its name and first lines."""
    path = require_file(path, "input file")
    with open(path, "rb") as f:
        head = f.read(8192).removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
    first = next((ln for ln in head.splitlines() if ln.strip() and not ln.startswith("#")), "")
    stripped = head.lstrip()
    if first.startswith("S ") or path.suffix.lower() == ".m2" or ".m2" in path.name.lower():
        return "m2"
    if stripped.startswith("<DOC") or "<TEXT " in head or path.suffix.lower() == ".xml":
        return "cged"
    if stripped.startswith("{") and (path.suffix.lower() == ".json" or '"sentence"' in head[:2000]):
        return "fcgec" if '"sentence"' in head else "jsonl"
    if stripped.startswith(("{", "[")):
        return "jsonl"
    fields = first.split("\t")
    if len(fields) >= 3 and fields[1].strip().isdigit() and not _has_han(fields[0]):
        return "nlpcc18"
    if len(fields) == 2 and _has_han(fields[0]):
        return "sighan"
    if len(fields) >= 2:
        return "para"
    raise ZhloraError(f"{path}: cannot tell the format from its first line {first[:60]!r}; pass "
                      f"--format ({'|'.join(FORMATS)})")


def _has_han(s: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in s)


def load(path: str | Path, fmt: str = "auto") -> tuple[list[Example], str]:
    """-> (examples, the format used)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in LOADERS:
        raise ZhloraError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    return LOADERS[fmt](path), fmt


def para_text(examples: list[Example]) -> str:
    """`id<TAB>source<TAB>targets...` lines (tabs/newlines inside text become spaces)."""
    clean = lambda t: re.sub(r"[\t\r\n]+", " ", t)  # noqa: E731
    return "".join("\t".join([clean(e.id), clean(e.source), *map(clean, e.targets)]) + "\n"
                   for e in examples)


def alpaca_text(examples: list[Example]) -> tuple[str, int]:
    """Alpaca JSONL with the GEC prompt, one record per example (its first usable target).
    -> (text, examples left out because they have no usable target)."""
    from zhlora.gec.prompt import gec_record

    lines, skipped = [], 0
    for e in examples:
        targets = resolved_targets(e)
        if not targets:
            skipped += 1
            continue
        lines.append(json.dumps(gec_record(e.source, targets[0]), ensure_ascii=False))
    return "".join(x + "\n" for x in lines), skipped
