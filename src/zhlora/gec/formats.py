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

import html
import json
import re
from pathlib import Path
from typing import NamedTuple

from zhlora.errors import DataError, ZhloraError, require_file

NO_ERROR, UNANNOTATABLE = "没有错误", "无法标注"
FORMATS = ("para", "mucgec", "sighan", "m2", "nlpcc18", "fcgec", "cged", "jsonl")
_SOURCE_KEYS = ("source", "src", "input", "text", "sentence")
_TARGET_KEYS = ("targets", "target", "tgt", "output", "correction", "correct")


class Example(NamedTuple):
    id: str
    source: str
    targets: list[str]


def resolved_targets(ex: Example) -> list[str]:
    """Targets as plain sentences: `没有错误` -> the source; `无法标注` dropped."""
    return [ex.source if t == NO_ERROR else t for t in ex.targets if t != UNANNOTATABLE]


# -- reading text ------------------------------------------------------------------
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


def _finish(path, examples: list[Example], problems: list[str], fmt: str) -> list[Example]:
    if problems:
        raise DataError(problems, hint=f"(read as format {fmt!r}; pass --format to choose another)")
    if not examples:
        raise ZhloraError(f"{path}: no records found when read as format {fmt!r}; check the file "
                          "and the --format option")
    return examples


# -- line formats --------------------------------------------------------------------
def load_para(path) -> list[Example]:
    examples, problems = [], []
    for n, line in read_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            problems.append(f"{path}:{n}: expected id<TAB>source[<TAB>target...], found "
                            f"{len(fields)} field(s)")
            continue
        examples.append(Example(fields[0].strip(), fields[1].strip(), [t.strip() for t in fields[2:]]))
    return _finish(path, examples, problems, "para")


def load_sighan(path) -> list[Example]:
    examples, problems = [], []
    for n, line in read_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            problems.append(f"{path}:{n}: expected source<TAB>target, found {len(fields)} field(s)")
            continue
        examples.append(Example(str(n), fields[0], [fields[1]]))
    return _finish(path, examples, problems, "sighan")


def load_nlpcc18(path) -> list[Example]:
    """NLPCC 2018: the gold M2 file, or the training file `sid<TAB>n<TAB>src<TAB>corrections`."""
    lines = read_lines(path)
    first = next((t for _, t in lines if t.strip()), "")
    if first.startswith("S "):
        return load_m2(path, fmt="nlpcc18")
    examples, problems = [], []
    for n, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3 or not fields[1].strip().isdigit():
            problems.append(f"{path}:{n}: expected sid<TAB>number of corrections<TAB>source"
                            "<TAB>corrections... (the NLPCC 2018 training file) or an M2 file")
            continue
        k = int(fields[1])
        targets = [t.strip() for t in fields[3:3 + k]] or [fields[2].strip()]
        if len(fields) - 3 < k:
            problems.append(f"{path}:{n}: says {k} correction(s) but has {len(fields) - 3}")
            continue
        examples.append(Example(fields[0].strip(), fields[2].strip(), targets))
    return _finish(path, examples, problems, "nlpcc18")


# -- M2 ---------------------------------------------------------------------------
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
    return _finish(path, examples, problems, fmt)


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


# -- FCGEC ------------------------------------------------------------------------
def load_fcgec(path) -> list[Example]:
    path = Path(path)
    text = "\n".join(t for _, t in read_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError([f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})"]) from None
    if not isinstance(data, dict):
        raise DataError([f"{path}:1: FCGEC is one JSON object {{id: {{sentence, error_flag, "
                         f"operation}}}}, found a {type(data).__name__}"])
    examples, problems = [], []
    for key, rec in data.items():
        where = f"{path}: record {key!r}"
        if not isinstance(rec, dict) or not isinstance(rec.get("sentence"), str):
            problems.append(f"{where}: missing the 'sentence' text")
            continue
        try:
            targets = _fcgec_targets(rec)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            problems.append(f"{where}: cannot apply its 'operation' ({e})")
            continue
        examples.append(Example(str(key), rec["sentence"], targets))
    return _finish(path, examples, problems, "fcgec")


def _fcgec_targets(rec: dict) -> list[str]:
    if "error_flag" not in rec and "operation" not in rec:
        return []  # the test set carries neither
    if int(rec.get("error_flag", 1)) == 0:
        return [rec["sentence"]]
    ops = rec.get("operation", "[]")
    ops = json.loads(ops) if isinstance(ops, str) else ops
    targets = apply_fcgec_operations(rec["sentence"], ops)
    return targets or [rec["sentence"]]


def apply_fcgec_operations(sentence: str, ops: list[dict]) -> list[str]:
    """Corrected sentences from FCGEC `operation` (one dict per reference).

    Within a reference, `Switch` (a permutation: new[i] = old[perm[i]]) applies first;
    `Delete`, `Insert` and `Modify` positions then refer to the switched sentence. Insert
    puts its label after the character at `pos`; Modify `MOD_k` replaces k characters from
    `pos`. A list of labels gives alternatives: variant j uses label j of each edit.
    """
    targets: list[str] = []
    for op in ops:
        for j in range(_n_variants(op)):
            t = _apply_fcgec_op(sentence, op, j)
            if t not in targets:
                targets.append(t)
    return targets


def _label(edit: dict, j: int) -> str:
    lab = edit["label"]
    if isinstance(lab, list):
        return lab[min(j, len(lab) - 1)] if lab else ""
    return str(lab)


def _n_variants(op: dict) -> int:
    labels = [e["label"] for k in ("Insert", "Modify") for e in op.get(k, [])]
    return max([len(x) for x in labels if isinstance(x, list)] + [1])


def _apply_fcgec_op(sentence: str, op: dict, j: int) -> str:
    chars = list(sentence)
    if "Switch" in op:
        perm = [int(k) for k in op["Switch"]]
        if sorted(perm) != list(range(len(chars))):
            raise ValueError(f"Switch lists {len(perm)} positions, not a permutation of the "
                             f"sentence's {len(chars)} characters")
        chars = [chars[k] for k in perm]
    deleted = {int(k) for k in op.get("Delete", [])}
    inserts = {int(e["pos"]): _label(e, j) for e in op.get("Insert", [])}
    modifies = {}
    for e in op.get("Modify", []):
        m = re.match(r"MOD_(\d+)", str(e.get("tag", "")))
        lab = _label(e, j)
        modifies[int(e["pos"])] = (int(m.group(1)) if m else len(lab), lab)
    if any(not -1 <= p < len(chars) for p in [*deleted, *inserts, *modifies]):
        raise ValueError(f"a position is outside the sentence ({len(chars)} characters)")
    out, i = [inserts.get(-1, "")], 0
    while i < len(chars):
        if i in modifies:
            k, lab = modifies[i]
            out.append(lab)
            i += max(k, 1)
            continue
        if i not in deleted or i in inserts:
            out.append(chars[i])
        out.append(inserts.get(i, ""))
        i += 1
    return "".join(out)


# -- CGED -------------------------------------------------------------------------
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
    return _finish(path, examples, problems, "cged")


# -- JSONL ------------------------------------------------------------------------
def load_jsonl(path) -> list[Example]:
    from zhlora.data.sources import iter_records

    examples, problems = [], []
    for rec in iter_records(path):
        where = f"{path}:{rec.line}"
        if rec.problem:
            problems.append(f"{where}: {rec.problem}")
            continue
        v = rec.value if isinstance(rec.value, dict) else {}
        src = next((v[k] for k in _SOURCE_KEYS if isinstance(v.get(k), str)), None)
        tgt = next((v[k] for k in _TARGET_KEYS if k in v), [])
        tgts = [tgt] if isinstance(tgt, str) else tgt
        if src is None or not isinstance(tgts, list) or not all(isinstance(t, str) for t in tgts):
            problems.append(f"{where}: expected an object with a source ({'/'.join(_SOURCE_KEYS)}) "
                            f"and text target(s) ({'/'.join(_TARGET_KEYS)})")
            continue
        examples.append(Example(str(v.get("id", rec.line)), src.strip(), [t.strip() for t in tgts]))
    return _finish(path, examples, problems, "jsonl")


# -- dispatch -----------------------------------------------------------------------
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


# -- writers ------------------------------------------------------------------------
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
