"""Prompt files for `zhlora predict`: JSONL records or plain text, one prompt per line.

JSONL record forms (first match wins; optional `id` and `system` on any of them):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
        a trailing assistant message is the reference answer, not part of the prompt
    {"instruction": "...", "input": "..."}      Alpaca style; prompt = instruction + "\\n" + input
    {"prompt": "..."}  or  {"text": "..."}
Plain text: every non-empty line is one prompt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zhlora.conversation import Conversation, Message
from zhlora.errors import ZhloraError


@dataclass
class PromptRecord:
    line: int             # 1-based line number in the input file
    id: object            # the record's `id`, else the line number
    conv: Conversation    # ends with a user message
    shown: str            # the prompt text written as `input` in the output
    reference: str | None = None


def read_prompts(path: str | Path, fmt: str = "auto") -> tuple[list[PromptRecord], list[str]]:
    """-> (records, problems as `file:line: reason`). Bad lines are reported, not fatal."""
    p = Path(path)
    if not p.is_file():
        raise ZhloraError(f"input file {p} does not exist")
    lines = p.read_text(encoding="utf-8-sig").splitlines()
    kind = _detect(p, lines) if fmt == "auto" else fmt
    if kind not in ("jsonl", "text"):
        raise ZhloraError(f"unknown input format {fmt!r}; use auto, jsonl or text")
    records, problems = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(_parse_line(line, n, kind, p))
        except ValueError as e:
            problems.append(f"{p}:{n}: {e}")
    return records, problems


def _detect(p: Path, lines: list[str]) -> str:
    if p.suffix in (".jsonl", ".json"):
        return "jsonl"
    if p.suffix == ".txt":
        return "text"
    first = next((ln for ln in lines if ln.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "text"


def _parse_line(line: str, n: int, kind: str, p: Path) -> PromptRecord:
    if kind == "text":
        text = line.strip()
        return PromptRecord(n, n, Conversation([Message("user", text)], origin=f"{p}:{n}"), text)
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    conv, shown, ref = record_to_conversation(rec)
    conv.origin = f"{p}:{n}"
    return PromptRecord(n, rec.get("id", n), conv, shown, ref)


def record_to_conversation(rec: dict) -> tuple[Conversation, str, str | None]:
    """One record -> (conversation ending with a user turn, prompt text, reference or None)."""
    system = _text(rec, "system", required=False)
    if "messages" in rec:
        return _from_messages(rec["messages"], system)
    if "instruction" in rec:
        inst, extra = _text(rec, "instruction"), _text(rec, "input", required=False)
        prompt = f"{inst}\n{extra}" if extra else inst
        ref = rec.get("output") if isinstance(rec.get("output"), str) else None
    elif "prompt" in rec or "text" in rec:
        prompt, ref = _text(rec, "prompt" if "prompt" in rec else "text"), None
    else:
        raise ValueError(f"no prompt: expected `messages`, `instruction`, `prompt` or `text`; "
                         f"keys are {sorted(rec)}")
    if not prompt.strip():
        raise ValueError("empty prompt")
    return Conversation([Message("user", prompt)], system=system), prompt, ref


def _text(rec: dict, key: str, required: bool = True) -> str:
    v = rec.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"`{key}` must be a string, got {type(v).__name__}")
    return v


def _from_messages(msgs, system: str) -> tuple[Conversation, str, str | None]:
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("`messages` must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with a string `content`")
        if m.get("role") == "system" and not out:
            system = m["content"]
        elif m.get("role") in ("user", "assistant"):
            out.append(Message(m["role"], m["content"]))
        else:
            raise ValueError(f"messages[{i}] has role {m.get('role')!r}; use system (first), user, assistant")
    ref = out.pop().content if out and out[-1].role == "assistant" else None
    conv = Conversation(out, system=system)
    for i, m in enumerate(out):
        if m.role != ("user", "assistant")[i % 2]:
            raise ValueError(f"message {i} has role {m.role!r}; turns must alternate user, assistant, ...")
    if not out:
        raise ValueError("no user message to answer")
    return conv, out[-1].content, ref
