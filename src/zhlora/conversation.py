"""The one internal conversation type every reader produces and every template consumes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ROLES = ("user", "assistant")


@dataclass
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass
class Conversation:
    """An optional system prompt, then messages that alternate user, assistant, user, ...

    A training conversation ends with an assistant message; a prompt for generation ends
    with a user message. `origin` is `file:line` of the record it came from.
    """

    messages: list[Message]
    system: str = ""
    origin: str = ""
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSONL form `zhlora data convert` writes (it reads back as format `zhlora`)."""
        d = {"system": self.system,
             "messages": [dataclasses.asdict(m) for m in self.messages]}
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], system: str = "", origin: str = ""):
        msgs: list[Message] = []
        for q, a in pairs:
            msgs.append(Message("user", q))
            if a is not None:
                msgs.append(Message("assistant", a))
        return cls(msgs, system=system, origin=origin)

    def problems(self) -> list[str]:
        """Structural problems (without the `file:line:` prefix); empty when valid."""
        if not self.messages:
            return ["no messages"]
        out = []
        for i, m in enumerate(self.messages):
            want = ROLES[i % 2]
            if m.role != want:
                out.append(f"message {i} has role {m.role!r}, expected {want!r} "
                           "(turns must alternate user, assistant, ...)")
                break
            if not isinstance(m.content, str):
                out.append(f"message {i} content is {type(m.content).__name__}, expected text")
                break
        if not out and self.messages[-1].role != "assistant":
            out.append("conversation does not end with an assistant reply")
        if not out:
            for i, m in enumerate(self.messages):
                if m.role == "assistant" and not m.content.strip():
                    out.append(f"message {i} (assistant) is empty")
                    break
        return out
