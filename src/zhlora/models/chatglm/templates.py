"""Chat templates of the ChatGLM family, registered in zhlora's template registry.

- `chatglm` (ChatGLM-6B): history rendered as text, exactly like THUDM's `chat()`:
  `[Round 0]\\n问：q0\\n答：a0\\n[Round 1]\\n问：q1\\n答：` -> `X [gMASK] <sop> Y <eop>`, and a
  question without history as the bare query;
  only `Y <eop>` is trained (not `<sop>`), so a multi-turn conversation trains its last answer.
- `chatglm2` (ChatGLM2-6B): `[gMASK] sop X Y </s>` with X = `[Round 1]\\n\\n问：q\\n\\n答：` (history
  as text, rounds from 1, as `tokenizer.build_prompt`); only `Y </s>` is trained.
- `chatglm3` (ChatGLM3-6B): role tokens, `[gMASK] sop <|user|>\\n q <|assistant|>\\n a <|user|>...`;
  the end of an answer is the next `<|user|>` (as the `glm4` template does). Each message is
  encoded on its own, as THUDM's `build_chat_input` does (its Jinja's space after `\\n` only
  approximates this).
The prompt text X is encoded in one piece (SentencePiece puts a word-start mark at the start
of every separately encoded string, so splitting it would change the ids).
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

from zhlora.conversation import Conversation
from zhlora.errors import ZhloraError
from zhlora.templates import IGNORE_INDEX, ChatTemplate, Encoded, Tok, get_template, register_template


@dataclass(frozen=True)
class RoundTextTemplate(ChatTemplate):
    """History as text; one trained answer. `before`/`after` = special tokens around X."""

    history: str = ""           # one past round: {idx} {query} {answer}
    current: str = ""           # the asked round: {idx} {query}
    single: str = ""            # a conversation with no history, when it differs from `current`
    before: tuple = ()          # tokens before the prompt text
    after: tuple = ()           # tokens between the prompt text and the answer

    def _prompt_text(self, conv: Conversation, drop: int = 0) -> str:
        msgs = conv.messages
        pairs = [(msgs[i].content, msgs[i + 1].content) for i in range(0, len(msgs) - 1, 2)]
        query = msgs[-1].content if msgs[-1].role == "user" else msgs[-2].content
        past = pairs if msgs[-1].role == "user" else pairs[:-1]
        text = (conv.system or self.default_system)
        text = text + "\n" if text else ""
        for i, (q, a) in enumerate(past[drop:], start=drop):
            text += self.history.format(idx=i + self.round_start, query=q, answer=a)
        current = self.single if self.single and not past[drop:] else self.current
        return text + current.format(idx=len(past) + self.round_start, query=query)

    def _ids(self, parts: tuple, tokenizer) -> list[int]:
        return [self._token_id(p, tokenizer) for p in parts]

    def encode(self, conv: Conversation, tokenizer, cutoff_len: int | None = None,
               train_on: str = "all") -> Encoded:
        """-> ids `before + X + after + Y + end`, labels -100 except `Y + end`."""
        if not conv.messages or conv.messages[-1].role != "assistant":
            raise ZhloraError(f"{conv.origin or 'conversation'}: a training conversation must end "
                              "with an assistant reply")
        answer = list(tokenizer.encode(conv.messages[-1].content, add_special_tokens=False))
        answer += self._ids(self.assistant_end, tokenizer)
        head, tail = self._ids(self.before, tokenizer), self._ids(self.after, tokenizer)
        rounds = (len(conv.messages) - 2) // 2
        truncated = False
        for drop in range(rounds + 1):  # drop the oldest rounds first
            prompt = list(tokenizer.encode(self._prompt_text(conv, drop), add_special_tokens=False))
            if cutoff_len is None or len(head) + len(prompt) + len(tail) + len(answer) <= cutoff_len:
                break
            truncated = True
        if cutoff_len is not None and len(head) + len(prompt) + len(tail) + len(answer) > cutoff_len:
            prompt, answer = _shorten(prompt, answer, cutoff_len - len(head) - len(tail), self.name)
        ids = head + prompt + tail + answer
        labels = [IGNORE_INDEX] * (len(head) + len(prompt) + len(tail)) + answer
        return Encoded(ids, labels, truncated)

    def encode_prompt(self, conv: Conversation, tokenizer, max_len: int | None = None) -> list[int]:
        if not conv.messages or conv.messages[-1].role != "user":
            raise ZhloraError("a generation prompt must end with a user message")
        head, tail = self._ids(self.before, tokenizer), self._ids(self.after, tokenizer)
        rounds = (len(conv.messages) - 1) // 2
        for drop in range(rounds + 1):
            prompt = list(tokenizer.encode(self._prompt_text(conv, drop), add_special_tokens=False))
            if max_len is None or len(head) + len(prompt) + len(tail) <= max_len:
                break
        if max_len is not None and len(head) + len(prompt) + len(tail) > max_len:
            prompt = prompt[len(head) + len(prompt) + len(tail) - max_len:]
        return head + prompt + tail


def _shorten(prompt: list[int], answer: list[int], room: int, name: str):
    """Cut the prompt from the left (keeps the question's end) and the answer from the right,
    half the room each at most, keeping the answer's end token."""
    if room < 2:
        raise ZhloraError(f"cutoff_len is shorter than the {name} template's own special tokens; raise it")
    keep_answer = min(len(answer), max(room // 2, room - len(prompt)))
    keep_prompt = room - keep_answer
    answer = answer[:keep_answer - 1] + answer[-1:]
    return (prompt[len(prompt) - keep_prompt:] if keep_prompt else []), answer


register_template(RoundTextTemplate(
    name="chatglm",
    user=("{content}",),
    history="[Round {idx}]\n问：{query}\n答：{answer}\n",
    current="[Round {idx}]\n问：{query}\n答：",
    single="{query}",  # chat() with no history sends the bare query
    round_start=0,
    after=(Tok("[gMASK]"), Tok("<sop>")),
    assistant_end=(Tok("<eop>"),),
    stop=("<eop>",),
    description="ChatGLM-6B: [Round i]\\n问：q\\n答： [gMASK] <sop> a <eop> (history as text, last turn trained)"))

register_template(RoundTextTemplate(
    name="chatglm2",
    user=("{content}",),
    history="[Round {idx}]\n\n问：{query}\n\n答：{answer}\n\n",
    current="[Round {idx}]\n\n问：{query}\n\n答：",
    round_start=1,
    before=(Tok("[gMASK]"), Tok("sop")),
    assistant_end=(Tok("</s>"),),
    stop=("</s>",),
    description="ChatGLM2-6B: [gMASK] sop [Round 1]\\n\\n问：q\\n\\n答： a </s> (history as text, last turn trained)"))

register_template(dataclasses.replace(
    get_template("glm4"),  # same turn layout as GLM-4; the prefix token is spelled `sop`
    name="chatglm3",
    prefix=(Tok("[gMASK]"), Tok("sop")),
    description="ChatGLM3-6B: [gMASK]sop<|user|>\\n q<|assistant|>\\n a<|user|>..."))
