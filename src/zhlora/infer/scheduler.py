"""One scheduler for every generation: continuous batching across adapters.

A request (prompt ids, adapter or None for the base, options, stop rules) waits in a queue;
at each token boundary the scheduler thread admits waiting requests up to `max_batch`
and prefills their prompts together in one forward pass (first token; at most
`prefill_tokens` prompt tokens a pass), then runs one decoding step for every running
sequence in one forward pass (PEFT routes each row to its adapter, `decoding.py` keeps the numbers batch
independent). A sequence leaves as soon as it ends (stop token or string, max_new_tokens,
the position limit) or is cancelled (client gone), which frees its slot for the next one.

Each request has its own sampling state (temperature, top_p, repetition penalty through
transformers' logits processors, and its own torch.Generator seeded by `seed`), so a seeded
sample does not depend on the batch either.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field

import torch

from zhlora.errors import ZhloraError
from zhlora.infer.decoding import RowsBackend, SeqCache, SoloBackend
from zhlora.infer.options import GenerationOptions
from zhlora.infer.streaming import StopRules


@dataclass(eq=False)
class Sequence:
    """One request in flight; `generated` holds the tokens fed back (stop token excluded)."""

    prompt: list[int]
    adapter: str | None
    options: GenerationOptions
    rules: StopRules
    sink: object = None                       # a TokenStream for streaming requests
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    generated: list[int] = field(default_factory=list)
    cache: SeqCache = field(default_factory=SeqCache)
    hf_cache: object = None
    generator: torch.Generator | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)

    @property
    def last_token(self) -> int:
        return self.generated[-1]


class Scheduler:
    """Owns the decoding loop of one engine (a daemon thread started on first use)."""

    def __init__(self, engine, max_batch: int = 8, metrics=None):
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.metrics = metrics
        self.steps = 0               # decoding steps run (for /health)
        self.widest = 0              # most sequences in one step
        self.mixed_steps = 0         # steps whose batch held more than one adapter (or the base)
        self.prefill_forwards = 0    # forward passes that prefilled prompts
        self.prefilled = 0           # prompts prefilled (prefilled / prefill_forwards: prompts a pass)
        self.prefill_tokens = 8192   # most prompt tokens in one prefill pass (memory bound)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._backend = None

    # -- client side ---------------------------------------------------------------
    def submit(self, seq: Sequence) -> Sequence:
        seq.options.validated()
        if seq.options.temperature > 0:
            seq.generator = torch.Generator(device="cpu")
            seq.generator.manual_seed(seq.options.seed if seq.options.seed is not None
                                      else int(torch.randint(0, 2**62, (1,)).item()))
        with self._wake:
            self._waiting.append(seq)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="zhlora-scheduler")
                self._thread.start()
            self._wake.notify()
        return seq

    def in_use(self, adapter: str) -> int:
        """Requests waiting for or running with `adapter`."""
        with self._wake:
            return sum(s.adapter == adapter for s in [*self._waiting, *self._running])

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the loop ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._running:
                    self._wake.wait()
            try:
                with self.engine.lock, torch.inference_mode():
                    self._admit()
                    self._decode()
            except BaseException as e:  # every request in flight gets the error, the loop goes on
                self._fail_all(e)

    def backend(self):
        if self._backend is None:
            # P-Tuning prefixes are per model, not per row: their sequences step alone
            ok = RowsBackend.supports(self.engine.model) and not self.engine.prefixes
            self._backend = (RowsBackend if ok else SoloBackend)(self.engine)
        return self._backend

    def _admit(self) -> None:
        """Admit waiting requests up to max_batch; prefill them together -> first tokens."""
        admitted = []
        while len(self._running) + len(admitted) < self.max_batch:
            with self._wake:
                seq = self._next_admissible()
                if seq is None:
                    break
            if seq.cancel.is_set():
                self._finish(seq, cancelled=True)
                continue
            seq.started_at = time.perf_counter()
            if seq.sink is not None:
                seq.sink.put(torch.tensor(seq.prompt))  # a streamer's first call is the prompt
            admitted.append(seq)
        for group in _token_groups(admitted, self.prefill_tokens):
            for seq, logits in self._prefill(group):
                end = self._take(seq, logits)
                if end:
                    self._finish(seq, stop_token=end.stop_token)
                else:
                    self._running.append(seq)

    def _prefill(self, seqs: list[Sequence]) -> list[tuple[Sequence, torch.Tensor]]:
        """-> [(sequence, logits (V,))] for the prompts of `seqs`, one forward for all; if it
        fails, each is retried alone and a request that fails alone fails (not the others)."""
        backend = self.backend()
        before, prefilled = backend.forwards, self.prefilled
        try:
            out = list(zip(seqs, backend.prefill(seqs)))
            self.prefilled += len(seqs)
        except Exception:
            out = []
            for seq in seqs:
                seq.cache.release()                      # whatever the failed pass left
                seq.hf_cache = None
                try:
                    out.append((seq, backend.prefill([seq])[0]))
                    self.prefilled += 1
                except Exception as e:
                    self._fail(seq, e)
        self.prefill_forwards += backend.forwards - before
        if self.metrics is not None:
            self.metrics.record_prefill(self.prefilled - prefilled, backend.forwards - before)
        return out

    def _next_admissible(self) -> Sequence | None:
        """The oldest waiting request whose adapter can be in memory now (LRU, --max-loras)."""
        for seq in list(self._waiting):
            if seq.adapter is not None and seq.adapter not in self.engine.adapters.records:
                self._waiting.remove(seq)   # unloaded after it was queued
                self._fail(seq, ZhloraError(f"adapter {seq.adapter!r} was unloaded"))
            elif seq.cancel.is_set() or self.engine.adapters.make_resident(seq.adapter, self.busy_adapters()):
                self._waiting.remove(seq)
                return seq
        return None

    def busy_adapters(self) -> set:
        """Adapters of the running sequences (they must stay in memory)."""
        return {s.adapter for s in self._running}

    def _decode(self) -> None:
        for seq in [s for s in self._running if s.cancel.is_set()]:
            self._running.remove(seq)
            self._finish(seq, cancelled=True)
        if not self._running:
            return
        logits = self.backend().decode(self._running)   # (n, V)
        self.steps += 1
        self.widest = max(self.widest, len(self._running))
        self.mixed_steps += len({s.adapter for s in self._running}) > 1
        ended = [(s, end) for s, row in zip(self._running, logits) if (end := self._take(s, row))]
        for seq, _ in ended:  # out of the batch first: a finished request's slot is free when it hears
            self._running.remove(seq)
        for seq, end in ended:
            self._finish(seq, stop_token=end.stop_token)

    def _take(self, seq: Sequence, logits: torch.Tensor) -> "_End | None":
        """Choose the next token of `seq`; -> an `_End` when the sequence has ended."""
        token = choose_token(seq, logits)
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        rules, limit = seq.rules, self.engine.max_positions
        ended = token in rules.stop_ids
        if not ended:
            seq.generated.append(token)
            if seq.sink is not None:
                seq.sink.put(torch.tensor([token]))
            ended = (len(seq.generated) >= seq.options.max_new_tokens or bool(limit and seq.length >= limit)
                     or (rules.stop_strings and rules.cut_at_stop_string(rules.decode(seq.generated))[1]))
        return _End(token if token in rules.stop_ids else None) if ended else None

    def _finish(self, seq: Sequence, cancelled: bool = False, stop_token: int | None = None) -> None:
        seq.cache.release()    # its slot in the KV pool is free for the next one
        ids = seq.generated + ([stop_token] if stop_token is not None else [])
        done = seq.rules.finish(ids, len(seq.prompt), seq.options.max_new_tokens, cancelled)
        if self.metrics is not None:
            self.metrics.record(seq, done)
        if seq.sink is not None:
            seq.sink.finish(done)
        if not seq.future.done():
            seq.future.set_result(done)

    def _fail_all(self, error: BaseException) -> None:
        seqs, self._running = self._running, []
        for seq in seqs:
            self._fail(seq, error)

    @staticmethod
    def _fail(seq: Sequence, error: BaseException) -> None:
        seq.cache.release()
        if seq.sink is not None:
            seq.sink.fail(error)
        if not seq.future.done():
            seq.future.set_exception(error)


def _token_groups(seqs: list[Sequence], budget: int) -> list[list[Sequence]]:
    """`seqs` in order, cut into groups of at most `budget` prompt tokens (a longer prompt
    is a group alone)."""
    groups: list[list[Sequence]] = []
    used = budget
    for seq in seqs:
        if used + len(seq.prompt) > budget:
            groups.append([])
            used = 0
        groups[-1].append(seq)
        used += len(seq.prompt)
    return groups


@dataclass
class _End:
    stop_token: int | None  # the end-of-turn token that ended it, if any


def choose_token(seq: Sequence, logits: torch.Tensor) -> int:
    """Greedy (temperature 0) or sampled next token from logits (V,), after the request's
    repetition penalty, temperature and top_p (transformers' logits processors)."""
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

    opts = seq.options
    if opts.temperature <= 0 and opts.repetition_penalty == 1.0:
        return int(logits.argmax())
    scores = logits[None]                                               # (1, V)
    seen = torch.tensor([seq.prompt + seq.generated], device=logits.device)
    if opts.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(opts.repetition_penalty)(seen, scores)
    if opts.temperature <= 0:
        return int(scores[0].argmax())
    scores = TemperatureLogitsWarper(opts.temperature)(seen, scores)
    if opts.top_p < 1.0:
        scores = TopPLogitsWarper(opts.top_p)(seen, scores)
    probs = torch.softmax(scores[0], dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=seq.generator))
