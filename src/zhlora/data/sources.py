"""Raw records from instruction files: a JSON list or JSONL, each with its line number.

`iter_records(path)` yields one `RawRecord` per record. A piece that cannot be parsed
(malformed JSON, bytes that are not UTF-8) becomes a `RawRecord` carrying a `problem`
instead of a value, so a reader can report every bad line instead of stopping at the
first one. Only a missing or unreadable file raises.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from zhlora.errors import ZhloraError, require_file

_WS = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"
_BAR_MIN_BYTES = 8 << 20  # files smaller than this read in well under a second: no bar


@dataclass
class RawRecord:
    line: int            # 1-based line where the record starts
    value: object = None
    problem: str = ""    # set when the record could not be parsed


def iter_records(path: str | Path, progress: bool | None = None) -> Iterator[RawRecord]:
    """Records of a JSON-list file (first non-blank byte `[`) or of a JSONL file."""
    path = require_file(path, "data file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise ZhloraError(f"{path}: cannot read the file ({e.strerror})") from None
    if head.removeprefix(_BOM).lstrip()[:1] == b"[":
        yield from _json_list(path, progress)
    else:
        yield from _jsonl(path, progress)


def _bar(path: Path, total: int, progress: bool | None, unit: str):
    """A tqdm bar; `progress=None` shows it only for big files on a terminal."""
    from tqdm import tqdm

    if progress is None:
        disable = None if total >= _BAR_MIN_BYTES else True  # None: off when not a TTY
    else:
        disable = not progress
    return tqdm(total=total, unit=unit, unit_scale=True, desc=f"reading {path.name}",
                disable=disable, leave=False)


def _jsonl(path: Path, progress: bool | None) -> Iterator[RawRecord]:
    first = True
    with open(path, "rb") as f, _bar(path, path.stat().st_size, progress, "B") as bar:
        for lineno, raw in enumerate(f, 1):
            bar.update(len(raw))
            if lineno == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            rec = _parse_line(raw, lineno)
            if first and rec.problem.startswith("malformed JSON"):
                whole = _whole_object(path)  # a pretty-printed object fails on its first line
                if whole:
                    yield RawRecord(lineno, problem=whole)
                    return
            first = False
            yield rec


def _parse_line(raw: bytes, lineno: int) -> RawRecord:
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")  # so error columns stay on this line
    except UnicodeDecodeError as e:
        return RawRecord(lineno, problem=_utf8_problem(raw, e.start, f"at byte {e.start + 1} of the line"))
    try:
        return RawRecord(lineno, json.loads(text))
    except RecursionError:
        return RawRecord(lineno, problem="JSON nested too deeply to read")
    except json.JSONDecodeError as e:
        return RawRecord(lineno, problem=f"malformed JSON: {e.msg} (column {e.colno}); "
                                         "each JSONL line must hold one complete record")


def _whole_object(path: Path) -> str | None:
    """If a file that failed as JSONL is one pretty-printed JSON object, say so."""
    if path.stat().st_size > 64 << 20:
        return None
    try:
        value = json.loads(path.read_bytes().removeprefix(_BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    keys = ", ".join(repr(k) for k in list(value)[:6])
    return (f"the file is one JSON object (keys {keys}), not a list of records; write the "
            "records as a JSON list [{...}, {...}] or one record per line (JSONL)")


def _utf8_problem(raw: bytes, start: int, where: str) -> str:
    msg = f"not valid UTF-8 (byte 0x{raw[start]:02x} {where})"
    try:
        raw.decode("gb18030")
        return msg + ("; the text looks GBK/GB18030-encoded: convert the file with "
                      "`iconv -f GB18030 -t UTF-8 IN > OUT`")
    except UnicodeDecodeError:
        return msg + "; re-save the file as UTF-8"


def _json_list(path: Path, progress: bool | None) -> Iterator[RawRecord]:
    """Walk a top-level JSON list element by element, tracking each element's line."""
    raw = path.read_bytes().removeprefix(_BOM)
    try:
        text, bad_bytes = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        # keep going: undecodable bytes become lone surrogates, flagged per record below
        text, bad_bytes = raw.decode("utf-8", errors="surrogateescape"), True
    dec = json.JSONDecoder()
    pos = _WS.match(text, 0).end() + 1  # just after "["
    line, counted = 1, 0
    with _bar(path, len(text), progress, "char") as bar:
        first = True
        while True:
            pos = _WS.match(text, pos).end()
            if first and text.startswith("]", pos):
                pos += 1
                break
            try:
                value, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                yield RawRecord(e.lineno, problem=f"malformed JSON: {e.msg} (column {e.colno}); "
                                                  "the records after this point were not read")
                return
            except RecursionError:
                yield RawRecord(text.count("\n", 0, pos) + 1, problem="JSON nested too deeply to "
                                "read; the records after this point were not read")
                return
            line += text.count("\n", counted, pos)
            counted = pos
            bar.update(end - pos)
            if bad_bytes and _has_surrogate(value):
                b, start = _record_bytes(text, pos, end)
                yield RawRecord(line, problem=_utf8_problem(b, start, "in this record"))
            else:
                yield RawRecord(line, value)
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos, first = pos + 1, False
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            where = text.count("\n", 0, pos) + 1
            what = "the file ends" if pos >= len(text) else f"found {text[pos]!r}"
            yield RawRecord(where, problem=f"malformed JSON: expected ',' or ']' after a record "
                                           f"but {what}; the records after this point were not read")
            return
    rest = _WS.match(text, pos).end()
    if rest < len(text):
        yield RawRecord(text.count("\n", 0, rest) + 1,
                        problem="malformed JSON: extra text after the closing ']' of the list")


def _has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _record_bytes(text: str, start: int, end: int) -> tuple[bytes, int]:
    """The original bytes of a record and the offset of its first undecodable byte."""
    b = text[start:end].encode("utf-8", errors="surrogateescape")
    try:
        b.decode("utf-8")
        return b, 0
    except UnicodeDecodeError as e:
        return b, e.start
