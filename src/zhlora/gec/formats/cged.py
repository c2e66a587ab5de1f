"""CGED XML: `<DOC><TEXT id=..>wrong</TEXT><CORRECTION>right</CORRECTION>...</DOC>`."""
from __future__ import annotations

import html
import re
from pathlib import Path

from zhlora.gec.formats.base import Example, finish, read_lines

_DOC = re.compile(r"<DOC>(.*?)</DOC>", re.S)
_TEXT = re.compile(r"<TEXT\b([^>]*)>(.*?)</TEXT>", re.S)
_CORR = re.compile(r"<CORRECTION>(.*?)</CORRECTION>", re.S)
_ID = re.compile(r"""id\s*=\s*["']([^"']*)["']""")


def load_cged(path) -> list[Example]:
    path = Path(path)
    text = "\n".join(t for _, t in read_lines(path))
    examples, problems = [], []
    for m in _DOC.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        body = m.group(1)
        tm = _TEXT.search(body)
        if not tm or not tm.group(2).strip():
            problems.append(f"{path}:{line}: <DOC> without a <TEXT id=...>...</TEXT>")
            continue
        idm = _ID.search(tm.group(1))
        source = html.unescape(tm.group(2).strip())
        targets = [html.unescape(c.strip()) for c in _CORR.findall(body)]
        examples.append(Example(idm.group(1) if idm else str(len(examples) + 1), source, targets))
    if not examples and not problems and "<DOC" in text:
        problems.append(f"{path}: found '<DOC' but no complete <DOC>...</DOC> block")
    return finish(path, examples, problems, "cged")
