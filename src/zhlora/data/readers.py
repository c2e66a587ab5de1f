"""Readers for the instruction formats Chinese practitioners use -> `Conversation`.

Formats (JSON list or JSONL; `format="auto"` picks one per file from the records' keys):

    alpaca    instruction, input, output [, system, history]   alpaca, alpaca-zh, BELLE 0.5M/1M/2M, Guanaco
    sharegpt  conversations: [{"from": "human"|"gpt"|..., "value"}]   ShareGPT, BELLE multi-turn
    firefly   kind, input, target  |  conversation: [{"human", "assistant"}]
    openai    messages: [{"role": "system"|"user"|"assistant", "content"}]
    zhlora    {"system", "messages", "meta"?}   what `zhlora data convert` writes

Every bad record becomes a `file:line: reason` problem; nothing here raises on bad content
except `read_conversations`, which raises one `DataError` listing them (unless `skip_bad`).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice

from zhlora.conversation import ROLES, Conversation, Message
from zhlora.data.sources import RawRecord, iter_records
from zhlora.errors import DataError, ZhloraError

FORMATS = {
    "alpaca": "instruction, output (+ input, system, history)",
    "sharegpt": "conversations: [{from, value}]",
    "firefly": "input, target (+ kind) or conversation: [{human, assistant}]",
    "openai": "messages: [{role, content}]",
    "zhlora": "system, messages: [{role, content}]",
}
ALIASES = {"alpaca-zh": "alpaca", "belle": "alpaca", "guanaco": "alpaca",
           "belle-multiturn": "sharegpt", "messages": "openai"}
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bot", "model"}
DETECT_RECORDS = 20  # auto-detection votes over this many first records


class RecordError(Exception):
    """A bad record; the message is the reason (the caller adds `file:line:`)."""


class MissingKey(RecordError):
    pass


Turn = tuple[str, object, str]  # (role, content, where it is in the record)


# -- field helpers -------------------------------------------------------------------
def _text(rec: dict, key: str, where: str = "", required: bool = True) -> str:
    name = f"{where}.{key}" if where else repr(key)
    if rec.get(key) is None:
        if required:
            raise MissingKey(f"missing key {name}")
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise RecordError(f"{name} is {_kind(value)}, expected text")
    return value


def _list(rec: dict, key: str) -> list:
    if rec.get(key) is None:
        raise MissingKey(f"missing key {key!r}")
    value = rec[key]
    if not isinstance(value, list):
        raise RecordError(f"{key!r} is {_kind(value)}, expected a list")
    if not value:
        raise RecordError(f"{key!r} is an empty list")
    return value


def _obj(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{where} is {_kind(value)}, expected an object")
    return value


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _content(msg: dict, key: str, where: str) -> str:
    """Message text; OpenAI-style content parts [{"type": "text", "text": ...}] are joined."""
    value = msg.get(key)
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        value = "".join(str(p.get("text", "")) for p in value)
    if value is None:
        raise MissingKey(f"missing key {where}.{key}")
    if not isinstance(value, str):
        raise RecordError(f"{where}.{key} is {_kind(value)}, expected text")
    return value


# -- building a conversation -----------------------------------------------------------
def build(turns: list[Turn], system: str = "") -> Conversation:
    """Turns (role in system/user/assistant) -> a valid Conversation, or RecordError."""
    msgs: list[Message] = []
    for role, text, where in turns:
        if role == "system":
            if msgs:
                raise RecordError(f"{where}: a system message is only allowed before the first turn")
            system = text
            continue
        want = ROLES[len(msgs) % 2]
        if role != want:
            article = {"user": "a user", "assistant": "an assistant"}
            raise RecordError(f"{where}: expected {article[want]} turn here, found {article[role]} turn "
                              "(turns must alternate user, assistant, user, ...)")
        if not text.strip():
            raise RecordError(f"{where} is empty" + (" (an empty reply)" if role == "assistant" else ""))
        msgs.append(Message(role, text))
    if not msgs:
        raise RecordError("no user/assistant turns")
    if msgs[-1].role != "assistant":
        raise RecordError(f"{turns[-1][2]} is a user turn with no reply after it")
    conv = Conversation(msgs, system=system)
    bad = conv.problems()
    if bad:
        raise RecordError(bad[0])
    return conv


def _role(raw, where: str) -> str:
    if not isinstance(raw, str):
        raise RecordError(f"{where} role is {_kind(raw)}, expected text")
    r = raw.strip().lower()
    if r in USER_ROLES:
        return "user"
    if r in ASSISTANT_ROLES:
        return "assistant"
    if r == "system":
        return "system"
    raise RecordError(f"{where} has unknown role {raw!r}; expected human/user, gpt/assistant "
                      "or system (tool/function turns are not supported)")


# -- the formats -------------------------------------------------------------------------
def _alpaca(rec: dict) -> Conversation:
    instruction = _text(rec, "instruction")
    inp = _text(rec, "input", required=False)
    output = _text(rec, "output")
    if not instruction.strip():
        prompt = inp  # some alpaca-zh records put the whole task in `input`
    else:
        prompt = f"{instruction}\n{inp}" if inp.strip() else instruction
    turns = _history(rec) + [("user", prompt, "'instruction'"), ("assistant", output, "'output'")]
    return build(turns, _text(rec, "system", required=False))


def _history(rec: dict) -> list[Turn]:
    """LLaMA-Factory's `history`: [[question, answer], ...] before the instruction."""
    if rec.get("history") is None:
        return []
    hist = rec["history"]
    if not isinstance(hist, list):
        raise RecordError(f"'history' is {_kind(hist)}, expected a list of [question, answer] pairs")
    turns: list[Turn] = []
    for i, pair in enumerate(hist):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise RecordError(f"history[{i}] must be a [question, answer] pair of texts")
        turns += [("user", pair[0], f"history[{i}][0]"), ("assistant", pair[1], f"history[{i}][1]")]
    return turns


def _sharegpt(rec: dict) -> Conversation:
    turns: list[Turn] = []
    for i, m in enumerate(_list(rec, "conversations")):
        where = f"conversations[{i}]"
        m = _obj(m, where)
        role_key, text_key = ("from", "value") if "from" in m or "value" in m else ("role", "content")
        if m.get(role_key) is None:
            raise MissingKey(f"missing key {where}.{role_key}")
        role = _role(m[role_key], where)
        turns.append((role, _content(m, text_key, where), f"{where} ({m[role_key]})"))
    return build(turns, _text(rec, "system", required=False))


def _firefly(rec: dict) -> Conversation:
    system = _text(rec, "system", required=False)
    if rec.get("conversation") is None:
        return build([("user", _text(rec, "input"), "'input'"),
                      ("assistant", _text(rec, "target"), "'target'")], system)
    turns: list[Turn] = []
    for i, t in enumerate(_list(rec, "conversation")):
        where = f"conversation[{i}]"
        t = _obj(t, where)
        turns += [("user", _text(t, "human", where), f"{where}.human"),
                  ("assistant", _text(t, "assistant", where), f"{where}.assistant")]
    return build(turns, system)


def _messages(rec: dict) -> Conversation:
    turns: list[Turn] = []
    for i, m in enumerate(_list(rec, "messages")):
        where = f"messages[{i}]"
        m = _obj(m, where)
        if m.get("role") is None:
            raise MissingKey(f"missing key {where}.role")
        turns.append((_role(m["role"], where), _content(m, "content", where), f"{where} ({m['role']})"))
    conv = build(turns, _text(rec, "system", required=False))
    if isinstance(rec.get("meta"), dict):
        conv.meta = dict(rec["meta"])
    return conv


CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "firefly": _firefly,
              "openai": _messages, "zhlora": _messages}


def classify(rec) -> str | None:
    """The format a single record looks like, from its keys; None when unclear."""
    if not isinstance(rec, dict):
        return None
    if "conversations" in rec:
        return "sharegpt"
    if "conversation" in rec or ("target" in rec and ("input" in rec or "kind" in rec)):
        return "firefly"
    if "messages" in rec:
        return "zhlora" if "system" in rec else "openai"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    return None


def detect_format(records: list) -> str | None:
    """Majority vote of `classify` over the given records (ties: the first seen wins)."""
    votes = Counter(f for f in map(classify, records) if f)
    return votes.most_common(1)[0][0] if votes else None


def normalize_format(name: str) -> str:
    name = (name or "auto").strip().lower()
    name = ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        known = ", ".join(["auto", *FORMATS, *ALIASES])
        raise ZhloraError(f"unknown data format {name!r}; use one of: {known}")
    return name


# -- reading files -------------------------------------------------------------------------
@dataclass
class FileResult:
    path: str
    format: str                      # the format used ("unknown" when detection failed)
    detected: bool                   # True when chosen by format="auto"
    conversations: list[Conversation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    records: int = 0                 # records seen, good and bad
    skipped: int = 0                 # records dropped because of a problem


@dataclass
class ReadResult:
    conversations: list[Conversation]
    formats: dict[str, str]          # {file: format}
    problems: list[str]              # "file:line: reason"
    skipped: int = 0
    records: int = 0

    def summary(self) -> str:
        files = "; ".join(f"{p}: {f}" for p, f in self.formats.items())
        s = f"read {len(self.conversations)} conversation(s) from {len(self.formats)} file(s) ({files})"
        return s + (f"; skipped {self.skipped} bad record(s)" if self.skipped else "")


def read_file(path: str | os.PathLike, format: str = "auto", progress: bool | None = None) -> FileResult:
    """All conversations and all problems of one file; never raises on bad content."""
    fmt = normalize_format(format)
    raws = iter_records(path, progress)
    result = FileResult(str(path), fmt, detected=fmt == "auto")
    if fmt == "auto":
        head = list(islice(raws, DETECT_RECORDS))
        raws = chain(head, raws)
        result.format = fmt = detect_format([r.value for r in head]) or "unknown"
        if fmt == "unknown" and any(isinstance(r.value, dict) for r in head):
            return _undetected(result, head, raws)
    for raw in raws:
        result.records += 1
        reason = raw.problem or _convert(raw, fmt, result)
        if reason:
            result.problems.append(f"{path}:{raw.line}: {reason}")
            result.skipped += 1
    if result.records == 0:
        result.problems.append(f"{path}:1: empty file: no records")
    return result


def _convert(raw: RawRecord, fmt: str, result: FileResult) -> str:
    """Convert one parsed record into `result`; returns the problem or ''."""
    if not isinstance(raw.value, dict):
        return f"record is {_kind(raw.value)}, expected a JSON object"
    if fmt == "unknown":
        return "cannot tell the data format"
    try:
        conv = CONVERTERS[fmt](raw.value)
    except MissingKey as e:
        return f"{e} ({fmt} records have {FORMATS[fmt]})"
    except RecordError as e:
        return str(e)
    conv.origin = f"{result.path}:{raw.line}"
    result.conversations.append(conv)
    return ""


def _undetected(result: FileResult, head: list[RawRecord], raws) -> FileResult:
    first = next(r for r in head if isinstance(r.value, dict))
    keys = ", ".join(repr(k) for k in list(first.value)[:8]) or "none"
    wanted = "; ".join(f"{n}: {k}" for n, k in FORMATS.items())
    result.problems.append(f"{result.path}:{first.line}: cannot tell the data format from the record "
                           f"keys ({keys}); expected {wanted}. Rename the keys or pass --format")
    result.records = result.skipped = sum(1 for _ in raws)
    return result


def read_conversations(paths, format: str = "auto", skip_bad: bool = False,
                       progress: bool | None = None) -> ReadResult:
    """Read instruction files into `Conversation`s (`origin` = "file:line").

    paths: one path or a list. format: "auto" (per file) or a name in FORMATS/ALIASES.
    Raises `DataError` listing every problem unless `skip_bad`, which drops bad records
    (counted in `skipped`). Raises as well when no usable conversation is left.
    progress: None shows a tqdm bar for big files (>= 8 MiB) on a terminal; True/False force it.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ZhloraError("no data files given")
    out = ReadResult([], {}, [])
    for p in paths:
        fr = read_file(p, format, progress)
        out.conversations += fr.conversations
        out.formats[fr.path] = fr.format
        out.problems += fr.problems
        out.skipped += fr.skipped
        out.records += fr.records
    if out.problems and not skip_bad:
        raise DataError(out.problems, hint=f"{out.skipped} of {out.records} record(s) are bad: fix them, "
                                           "or pass skip_bad=true (--skip-bad) to drop them")
    if not out.conversations:
        raise DataError(out.problems or [f"{', '.join(map(str, paths))}: no records"],
                        hint="no usable conversation left; fix the data files")
    return out

