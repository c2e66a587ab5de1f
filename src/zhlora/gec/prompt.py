"""The GEC prompt: one instruction, used by training data and by evaluation alike.

A training record is alpaca JSONL (`instruction`, `input` = the sentence to correct,
`output` = the corrected sentence). The alpaca reader turns it into one user turn
`instruction + "\\n" + input`; `gec_user_text` builds exactly that text, so a model is
evaluated with the prompt it was trained on.
"""
from __future__ import annotations

from zhlora.conversation import Conversation, Message

GEC_INSTRUCTION = ("请改正下面句子中的错别字和语法错误，只输出改正后的句子；"
                   "如果句子没有错误，请原样输出。")


def gec_record(source: str, target: str, instruction: str = GEC_INSTRUCTION) -> dict:
    """One alpaca training record: correct `source` into `target`."""
    return {"instruction": instruction, "input": source, "output": target}


def gec_user_text(source: str, instruction: str = GEC_INSTRUCTION) -> str:
    """The user turn the alpaca reader builds from `gec_record(source, ...)`."""
    return f"{instruction}\n{source}" if source.strip() else instruction


def gec_conversation(source: str, instruction: str = GEC_INSTRUCTION, origin: str = "") -> Conversation:
    """A generation prompt (one user turn) asking to correct `source`."""
    return Conversation([Message("user", gec_user_text(source, instruction))], origin=origin)
