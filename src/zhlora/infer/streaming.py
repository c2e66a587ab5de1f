"""Where an answer ends, and how its text reaches a reader while it is generated.

`StopRules` holds the end-of-turn token ids and the stop strings; it turns generated ids
into a `Completion` (text cut before the first stop, token counts, finish reason).
`TokenStream` is a transformers streamer that hands text pieces to another thread; it
holds back text that could still become a stop string or an incomplete character.
"""
from __future__ import annotations

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


def generation_criteria(rules: StopRules, prompt_width: int, cancel: threading.Event | None):
    """Stopping criteria for `model.generate`: stop strings (per row) and cancellation."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # input_ids (B, T)
            rows = input_ids[:, prompt_width:].tolist()
            hit = [rules.cut_at_stop_string(rules.decode(rules.cut_at_stop_id(r)[0]))[1] for r in rows]
            return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stop = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    out = StoppingCriteriaList([_Cancelled()])
    if rules.stop_strings:
        out.append(_StopStrings())
    return out


class TokenStream:
    """A streamer for one prompt (batch of 1). Iterate it for text pieces; `completion` is
    set once the iteration ends. Closing the iterator early sets `cancel`, which stops the
    generation at the next token."""

    def __init__(self, rules: StopRules, prompt_tokens: int, cancel: threading.Event | None = None):
        self.rules = rules
        self.prompt_tokens = prompt_tokens
        self.cancel = cancel or threading.Event()
        self.completion: Completion | None = None
        self.on_finish = None  # optional callback(completion), run in the generation thread
        self._queue: queue.Queue = queue.Queue()
        self._ids: list[int] = []
        self._emitted = ""
        self._seen_prompt = False
        self._stopped = False

    # -- called by model.generate (generation thread) ------------------------------
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
