"""Padded batches of prompt ids (`pad_rows`, `pad_id`), and the server's request grouping.


Non-streaming requests that arrive while the engine is busy wait in a queue; the worker
takes the oldest one plus every other waiting request with the same adapter and the same
decoding options (up to `max_batch` prompts) and runs them as one left-padded batch.
Greedy answers are unchanged by batching (tested), so each client gets exactly the answer
its adapter gives alone, and 8 concurrent clients cost far less than 8 sequential calls.
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from zhlora.infer.options import GenerationOptions

if TYPE_CHECKING:
    from zhlora.infer.engine import Engine


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its end-of-text id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def pad_rows(rows: list[list[int]], pad: int, device, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, T) and attention_mask (B, T), padded on the left (generation) or the
    right (scoring: positions then run 0..len-1 in every row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


@dataclass
class _Job:
    prompts: list[list[int]]
    adapter: str | None
    options: GenerationOptions
    stop_ids: list[int] | None
    future: asyncio.Future

    def key(self) -> tuple:
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in asdict(self.options).items()}
        return self.adapter, tuple(sorted(opts.items())), tuple(self.stop_ids or ())


class RequestBatcher:
    def __init__(self, engine: "Engine", max_batch: int = 8):
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.batches_run = 0     # for /health and the benchmark
        self.prompts_run = 0
        self._pending: list[_Job] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, prompts: list[list[int]], adapter: str | None, options: GenerationOptions,
                     stop_ids: list[int] | None = None):
        """-> list[Completion] for `prompts`, generated together with compatible requests."""
        loop = asyncio.get_running_loop()
        job = _Job(prompts, adapter, options, stop_ids, loop.create_future())
        self._pending.append(job)
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work())
        self._wakeup.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """The oldest job and the waiting jobs that can share its batch."""
        first = self._pending[0]
        batch, size = [], 0
        for job in list(self._pending):
            if job.key() == first.key() and (not batch or size + len(job.prompts) <= self.max_batch):
                batch.append(job)
                size += len(job.prompts)
                self._pending.remove(job)
        return batch

    async def _work(self) -> None:
        from starlette.concurrency import run_in_threadpool

        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = [j for j in self._take() if not j.future.done()]  # skip clients gone
                if not batch:
                    continue
                j0, rows = batch[0], [p for j in batch for p in j.prompts]
                try:
                    done = await run_in_threadpool(self.engine.complete, rows, j0.adapter, j0.options,
                                                   len(rows), False, j0.stop_ids)
                except Exception as e:  # every waiting client gets the error
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(e)
                    continue
                self.batches_run += 1
                self.prompts_run += len(rows)
                for j in batch:
                    part, done = done[:len(j.prompts)], done[len(j.prompts):]
                    if not j.future.done():
                        j.future.set_result(part)
