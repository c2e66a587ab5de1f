"""Read single tensors out of a safetensors file with plain reads, not a memory map.

`safe_open(...).get_tensor` hands out tensors backed by a map of the whole file: every page
they touch stays resident (and counts in the process's RSS) until the file is closed, so
merging a shard tensor by tensor through it still ends with the whole shard in memory. Here
each tensor is read (`os.pread`) into its own buffer and freed with it. Headers are parsed
from the file's own format: u64 header length, JSON {name: {dtype, shape, data_offsets}}.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.merge.dtypes import ST_DTYPES


class SafetensorsReader:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            self.header = json.loads(os.pread(self.fd, n, 8))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            os.close(self.fd)
            raise ZhloraError(f"{self.path}: not a safetensors file ({e})") from None
        self.header.pop("__metadata__", None)
        self.data_start = 8 + n

    def get_tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        begin, end = info["data_offsets"]
        buf = bytearray(end - begin)
        view, done = memoryview(buf), 0
        while done < len(buf):
            got = os.preadv(self.fd, [view[done:]], self.data_start + begin + done)
            if got <= 0:
                raise ZhloraError(f"{self.path}: file ends inside tensor {name}; the shard is truncated")
            done += got
        dtype = ST_DTYPES[info["dtype"]]
        if not buf:
            return torch.empty(info["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_header(path: Path):
    """`safe_open` for header/shape reads, with a damaged file reported as a ZhloraError."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise ZhloraError(f"{path}: not a readable safetensors file ({e}); the file is damaged or "
                          "incomplete: copy it again from the original model or adapter") from None
