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
import struct
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.merge.base import ST_NAMES


class StreamingShardWriter:
    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        self.path = path
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

    def close(self) -> None:
        self.f.close()
        if self.done != len(self.expected):
            raise ZhloraError(f"internal error: {self.path.name} got {self.done} of {len(self.expected)} tensors")
