"""Where an answer ends, and how its text reaches a reader while it is generated.

`StopRules` holds the end-of-turn token ids and the stop strings; it turns generated ids
into a `Completion` (text cut before the first stop, token counts, finish reason).
`TokenStream` (a transformers-style streamer: `put(ids)`) hands text pieces to another
thread, `AsyncTokenStream` to an asyncio loop (the server: no thread per client); both hold
back text that could still become a stop string or an incomplete character.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass

import torch

_DONE = object()


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (stop token/string), "length" (max_new_tokens), "cancelled"


class StopRules:
    def __init__(self, tokenizer, stop_ids: list[int], stop_strings: list[str], ignore_eos: bool = False):
        self.tokenizer = tokenizer
        self.stop_ids = [] if ignore_eos else list(stop_ids)
        self.stop_strings = [s for s in stop_strings if s]
        self.holdback = max((len(s) for s in self.stop_strings), default=1) - 1

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def cut_at_stop_id(self, ids: list[int]) -> tuple[list[int], bool]:
        for k, t in enumerate(ids):
            if t in self.stop_ids:
                return ids[:k], True
        return ids, False

    def cut_at_stop_string(self, text: str) -> tuple[str, bool]:
        hits = [text.find(s) for s in self.stop_strings]
        hits = [h for h in hits if h >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def finish(self, new_ids: list[int], prompt_tokens: int, max_new_tokens: int,
               cancelled: bool = False) -> Completion:
        """Generated ids (padding after the end included) -> the answer."""
        ids, by_token = self.cut_at_stop_id(new_ids)
        text, by_string = self.cut_at_stop_string(self.decode(ids))
        if by_string:
            ids = ids[:self._tokens_until(ids, text)]
        elif not by_token:
            ids = _strip_padding(ids, self.tokenizer.pad_token_id)
        reason = "stop" if (by_token or by_string) else ("length" if len(new_ids) >= max_new_tokens
                                                       else ("cancelled" if cancelled else "stop"))
        return Completion(text, prompt_tokens, len(ids), reason)

    def _tokens_until(self, ids: list[int], text: str) -> int:
        """Fewest tokens whose text contains a stop string (the stop's own tokens count)."""
        for k in range(1, len(ids) + 1):
            if self.cut_at_stop_string(self.decode(ids[:k]))[1]:
                return k
        return len(ids)


def _strip_padding(ids: list[int], pad_id: int | None) -> list[int]:
    end = len(ids)
    while end and pad_id is not None and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end] if end < len(ids) else ids


class TokenStream:
    """A streamer for one prompt (batch of 1). Iterate it for text pieces; `completion` is
    set once the iteration ends. Closing the iterator early sets `cancel`, which stops the
    generation at the next token."""

    def __init__(self, rules: StopRules, prompt_tokens: int, cancel: threading.Event | None = None,
                 on_finish=None):
        self.rules = rules
        self.prompt_tokens = prompt_tokens
        self.cancel = cancel or threading.Event()
        self.completion: Completion | None = None
        self.on_finish = on_finish  # optional callback(completion), run in the generation thread
        self._queue: queue.Queue = queue.Queue()
        self._ids: list[int] = []
        self._emitted = ""
        self._seen_prompt = False
        self._stopped = False

    # -- called by the scheduler (generation thread) --------------------------------
    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # the first call carries the prompt
            self._seen_prompt = True
            return
        if self._stopped:
            return
        for t in value.reshape(-1).tolist():
            if t in self.rules.stop_ids:
                self._stopped = True
                break
            self._ids.append(t)
        self._emit_safe_text()

    def end(self) -> None:
        pass  # `finish` (after generate returns) flushes, so the completion is known first

    # -- called by the engine -------------------------------------------------------
    def finish(self, completion: Completion) -> None:
        self.completion = completion
        if self.on_finish is not None:
            self.on_finish(completion)
        if completion.text.startswith(self._emitted) and len(completion.text) > len(self._emitted):
            self._queue.put(completion.text[len(self._emitted):])
        self._queue.put(_DONE)

    def fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def _emit_safe_text(self) -> None:
        text, stopped = self.rules.cut_at_stop_string(self.rules.decode(self._ids))
        if stopped:
            self._stopped = True
        else:
            text = text[:len(text) - self.rules.holdback] if self.rules.holdback else text
            text = text.rstrip("\ufffd")  # an incomplete multi-byte character
        if len(text) > len(self._emitted) and text.startswith(self._emitted):
            self._queue.put(text[len(self._emitted):])
            self._emitted = text

    # -- reader side -----------------------------------------------------------------
    def __iter__(self):
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.completion is None:
                self.cancel.set()


class _LoopQueue:
    """`put` from any thread into an asyncio.Queue owned by `loop`."""

    def __init__(self, loop, q: asyncio.Queue):
        self.loop, self.q = loop, q

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.q.put_nowait, item)


class AsyncTokenStream(TokenStream):
    """A TokenStream read with `async for piece in stream.pieces()` (create it in the loop)."""

    def __init__(self, rules: StopRules, prompt_tokens: int, cancel: threading.Event | None = None,
                 on_finish=None):
        super().__init__(rules, prompt_tokens, cancel, on_finish)
        self._aqueue: asyncio.Queue = asyncio.Queue()
        self._queue = _LoopQueue(asyncio.get_running_loop(), self._aqueue)

    async def pieces(self):
        try:
            while True:
                item = await self._aqueue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.completion is None:
                self.cancel.set()
