"""A safetensors file written tensor by tensor.

The plan knows every tensor's name, dtype and shape before any data exists, so the header
(which safetensors puts first) is written up front and each tensor's bytes are appended as
soon as they are computed: nothing is buffered beyond the tensor being written.

Format: u64 little-endian header length, JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}` padded
with spaces to a multiple of 8 bytes, then the tensors' bytes back to back in header order.
"""
from __future__ import annotations

import json
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.merge.base import ST_NAMES


SYNC_EVERY = 64 << 20


class StreamingShardWriter:
    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 sync_pool: ThreadPoolExecutor | None = None):
        self.path, self.sync_pool = path, sync_pool
        self.unsynced = 0                       # bytes written since the last background sync
        self.syncing: Future | None = None
        self.expected = [name for name, _, _ in entries]
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        self.sizes = {}
        for name, dtype, shape in entries:
            n = dtype.itemsize
            for s in shape:
                n *= s
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.sizes[name] = n
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.done = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self.done >= len(self.expected) or name != self.expected[self.done]:
            raise ZhloraError(f"internal error: {self.path.name} expected tensor "
                              f"{self.expected[self.done] if self.done < len(self.expected) else 'none'}, got {name}")
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        if data.numel() != self.sizes[name]:
            raise ZhloraError(f"internal error: {name} has {data.numel()} bytes, planned {self.sizes[name]}")
        if data.numel():
            self.f.write(memoryview(data.numpy()))
        self.done += 1
        self.unsynced += data.numel()
        if self.sync_pool and self.unsynced >= SYNC_EVERY and (self.syncing is None or self.syncing.done()):
            self.f.flush()
            self.syncing, self.unsynced = self.sync_pool.submit(os.fdatasync, self.f.fileno()), 0

    def close(self) -> Future | None:
        """Check every tensor came and flush. The fsync and the close run on the sync pool
        (the returned future; the writing thread goes on with the next shard) or here."""
        try:
            self.f.flush()
            if self.done != len(self.expected):
                raise ZhloraError(f"internal error: {self.path.name} got {self.done} of {len(self.expected)} tensors")
        except BaseException:
            self.f.close()
            raise
        if self.sync_pool:
            return self.sync_pool.submit(self._fsync_close)
        self._fsync_close()
        return None

    def _fsync_close(self) -> None:
        try:
            os.fsync(self.f.fileno())
        finally:
            self.f.close()
