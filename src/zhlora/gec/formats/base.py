"""What every CGEC loader shares: the `Example` record, reading a UTF-8 file by lines, and
collecting a whole file's problems into one `DataError`."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from zhlora.errors import DataError, ZhloraError, require_file

NO_ERROR, UNANNOTATABLE = "没有错误", "无法标注"


class Example(NamedTuple):
    id: str
    source: str
    targets: list[str]


def resolved_targets(ex: Example) -> list[str]:
    """Targets as plain sentences: `没有错误` -> the source; `无法标注` dropped."""
    return [ex.source if t == NO_ERROR else t for t in ex.targets if t != UNANNOTATABLE]


def read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, text without the newline) for every line of a UTF-8 file."""
    path = require_file(path, "input file")
    out, problems = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                out.append((n, raw.decode("utf-8").rstrip("\r\n")))
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{n}: not valid UTF-8 (byte {e.start + 1} of the line); "
                                "convert the file with `iconv -f GB18030 -t UTF-8`")
    if problems:
        raise DataError(problems)
    return out


def finish(path, examples: list[Example], problems: list[str], fmt: str) -> list[Example]:
    """A loader's result: its examples, or all of the file's problems as one DataError."""
    if problems:
        raise DataError(problems, hint=f"(read as format {fmt!r}; pass --format to choose another)")
    if not examples:
        raise ZhloraError(f"{path}: no records found when read as format {fmt!r}; check the file "
                          "and the --format option")
    return examples
