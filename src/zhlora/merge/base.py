"""The base checkpoint as a list of tensors read one shard, one tensor at a time.

Only shapes and dtypes are read up front (safetensors headers); tensor data is read when the
merge reaches it, so the memory held is one tensor, not the model.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from zhlora.errors import ZhloraError
from zhlora.families import read_config
from zhlora.models.loading import check_weights_allowed, weight_files

from zhlora.merge.dtypes import FLOATS, ST_DTYPES, ST_NAMES  # noqa: F401
# tensor names that only exist in quantized checkpoints (GPTQ/AWQ, bitsandbytes)
_QUANT_SUFFIXES = (".qweight", ".qzeros", ".g_idx", ".scales", ".SCB", ".weight_format", ".absmax",
                   ".quant_map", ".quant_state", ".nested_absmax")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class BaseCheckpoint:
    folder: Path
    config: dict
    kind: str                      # "safetensors" | "bin"
    files: list[Path]
    tensors: dict[str, TensorInfo]  # in file order, then key order

    def float_dtype(self) -> torch.dtype:
        """The dtype the base is stored in: config `dtype`/`torch_dtype`, else the most bytes."""
        for key in ("dtype", "torch_dtype"):
            name = self.config.get(key)
            if isinstance(name, str) and getattr(torch, name, None) in FLOATS:
                return getattr(torch, name)
        sizes: dict[torch.dtype, int] = {}
        for t in self.tensors.values():
            if t.dtype in FLOATS:
                sizes[t.dtype] = sizes.get(t.dtype, 0) + _numel(t.shape) * t.dtype.itemsize
        return max(sizes, key=sizes.get) if sizes else torch.float32

    @contextlib.contextmanager
    def open_file(self, path: Path) -> Iterator:
        """-> get(name) for the tensors of one shard."""
        if self.kind == "safetensors":
            from zhlora.merge.reader import SafetensorsReader

            with SafetensorsReader(path) as f:
                yield f.get_tensor
        else:
            sd = _load_bin(path)
            yield sd.__getitem__
            del sd


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _load_bin(path: Path) -> dict:
    # mmap=True: tensors stay on disk until touched, like safetensors
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def open_base(folder: str | Path, allow_bin: bool = False) -> BaseCheckpoint:
    """Read the base folder's config and tensor headers; refuse quantized checkpoints."""
    folder = Path(folder)
    config = read_config(folder)
    check_weights_allowed(folder, allow_bin)
    kind, files = weight_files(folder)
    files = _indexed_files(folder, kind) or files
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, shape, dtype in _headers(f, kind):
            tensors[name] = TensorInfo(name, f, shape, dtype)
    base = BaseCheckpoint(folder, config, kind, files, tensors)
    check_not_quantized(base)
    return base


def _indexed_files(folder: Path, kind: str) -> list[Path] | None:
    """The shards an index names (a folder may hold stale extra files)."""
    idx = folder / ("model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json")
    if not idx.is_file():
        return None
    try:
        names = json.loads(idx.read_text(encoding="utf-8"))["weight_map"].values()
    except (json.JSONDecodeError, KeyError) as e:
        raise ZhloraError(f"{idx}: not a valid weight index ({e})") from None
    files = sorted({folder / n for n in names})
    for f in files:
        if not f.is_file():
            raise ZhloraError(f"{idx} names shard {f.name}, which is missing from {folder}")
    return files


def _headers(path: Path, kind: str) -> Iterator[tuple[str, tuple[int, ...], torch.dtype]]:
    if kind == "safetensors":
        from zhlora.merge.reader import open_header

        with open_header(path) as f:
            for k in f.keys():
                sl = f.get_slice(k)
                dt = sl.get_dtype()
                if dt not in ST_DTYPES:
                    raise ZhloraError(f"{path}: tensor {k} has dtype {dt}; quantized or fp8 bases "
                                      "cannot be merged exactly. Merge into the full-precision base")
                yield k, tuple(sl.get_shape()), ST_DTYPES[dt]
    else:
        for k, v in _load_bin(path).items():
            if isinstance(v, torch.Tensor):
                yield k, tuple(v.shape), v.dtype


def check_not_quantized(base: BaseCheckpoint) -> None:
    cfg = base.config
    if cfg.get("quantization_config") or (cfg.get("quantization_bit") or 0) > 0:
        raise ZhloraError(f"{base.folder}/config.json: the base is quantized "
                          f"({cfg.get('quantization_config') or 'quantization_bit=' + str(cfg['quantization_bit'])}); "
                          "a LoRA delta cannot be added exactly to quantized weights. Merge into the "
                          "full-precision (fp16/bf16/fp32) base model instead")
    for t in base.tensors.values():
        if t.name.endswith(_QUANT_SUFFIXES) or (t.name.endswith(".weight") and t.dtype in (torch.int8, torch.uint8)):
            raise ZhloraError(f"{t.file.name}: tensor {t.name} ({t.dtype}, shape {list(t.shape)}) belongs to "
                              "a quantized checkpoint; merge into the full-precision base model instead")
