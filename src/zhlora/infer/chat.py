"""Terminal chat: streamed answers, history, adapters switched in place.

Commands: `/adapter NAME` (`/adapter none` = the base), `/clear`, `/system TEXT`, `/help`,
`/exit`. With a non-interactive stdin (a pipe) every input line gets one answer and no
history is kept unless `keep_history` is set.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from zhlora.conversation import Conversation, Message
from zhlora.errors import ZhloraError
from zhlora.infer.engine import Engine

HELP = "commands: /adapter NAME|none, /clear, /system TEXT, /help, /exit"


@dataclass
class ChatState:
    adapter: str | None
    overrides: dict                      # generation options given on the command line
    keep_history: bool
    system: str = ""
    history: list[Message] = field(default_factory=list)


def run_chat(engine: Engine, state: ChatState, stdin: TextIO, stdout: TextIO, interactive: bool) -> int:
    if interactive:
        print(f"zhlora chat — adapters: {', '.join(engine.adapter_names) or 'none'}; "
              f"active: {state.adapter or 'base'}. {HELP}", file=stdout)
    while True:
        line = _read_line(stdin, stdout, state, interactive)
        if line is None:
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if _command(engine, state, line, stdout) == "exit":
                return 0
            continue
        _answer(engine, state, line, stdout, interactive)


def _read_line(stdin, stdout, state: ChatState, interactive: bool) -> str | None:
    if interactive:
        try:
            return input(f"[{state.adapter or 'base'}] 用户> ")
        except EOFError:
            print(file=stdout)
            return None
    line = stdin.readline()
    return line if line else None


def _command(engine: Engine, state: ChatState, line: str, stdout) -> str | None:
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit"):
        return "exit"
    if cmd == "/clear":
        state.history.clear()
        print("(history cleared)", file=stdout)
    elif cmd == "/system":
        state.system = arg
        print(f"(system prompt {'set' if arg else 'cleared'})", file=stdout)
    elif cmd == "/adapter":
        name = None if arg.lower() in ("", "none", "base") else arg
        try:
            engine.template_for(name)
        except ZhloraError as e:
            print(f"error: {e}", file=stdout)
            return None
        state.adapter = name
        print(f"(adapter: {name or 'base'})", file=stdout)
    else:
        print(HELP, file=stdout)
    stdout.flush()
    return None


def _answer(engine: Engine, state: ChatState, text: str, stdout, interactive: bool) -> None:
    conv = Conversation(state.history + [Message("user", text)], system=state.system)
    opts = engine.default_options(state.adapter).replace(**state.overrides)
    if interactive:
        stdout.write("助手> ")
    pieces = []
    for piece in engine.stream(conv, state.adapter, opts):
        pieces.append(piece)
        stdout.write(piece)
        stdout.flush()
    stdout.write("\n")
    stdout.flush()
    if state.keep_history:
        state.history += [Message("user", text), Message("assistant", "".join(pieces))]


def chat_main(engine: Engine, adapter: str | None, overrides: dict, history_in_pipe: bool) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing for input())
        except ImportError:
            pass
    state = ChatState(adapter, overrides, keep_history=interactive or history_in_pipe)
    engine.template_for(adapter)  # an unknown adapter fails before the first prompt
    return run_chat(engine, state, sys.stdin, sys.stdout, interactive)
