"""The one device and dtype decision of every command that runs a model.

    from zhlora.models.device import decide
    device, dtype = decide("auto", "auto")    # -> (torch.device("cuda:0"), torch.bfloat16) on an A100

train, chat, predict, serve, webui, gec eval, verify and demo all ask `decide`:

- device `auto` (the default): CUDA when torch sees a GPU (`cuda:$LOCAL_RANK` under torchrun),
  else the CPU; `cpu`, `cuda`, `cuda:N` as asked, and a message when that GPU is not there.
- dtype `auto`: bf16 on a GPU that computes it natively (compute capability 8.0+: A100, RTX 30xx
  and later), fp16 on an older GPU (V100, T4, RTX 20xx), fp32 on the CPU, where a bf16 matmul is
  ~200x slower than fp32. bf16/fp16 asked for on the CPU run, with a warning that it is slow.

`cuda_capabilities` is the only place that asks torch about GPUs; tests fake it to check that
each command goes through here.
"""
from __future__ import annotations

import os
import sys

import torch

from zhlora.errors import ZhloraError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_warned: set[str] = set()


def cuda_capabilities() -> list[tuple[int, int]]:
    """(major, minor) compute capability of each GPU torch can use; [] without CUDA."""
    if not torch.cuda.is_available():
        return []
    return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """`bf16`/`bfloat16`/... -> torch dtype (a storage dtype, no device decision)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ZhloraError(f"unknown dtype {name!r}; use auto or one of {', '.join(DTYPES)}") from None


def decide(device: str | torch.device | None = "auto",
           dtype: str | torch.dtype | None = "auto") -> tuple[torch.device, torch.dtype]:
    """-> (torch.device, torch.dtype) to run a model with; None means auto for both."""
    gpus = cuda_capabilities()
    dev = _pick_device(device, gpus)
    if dtype in (None, "auto"):
        if dev.type != "cuda":
            return dev, torch.float32
        return dev, torch.bfloat16 if _native_bf16(gpus[dev.index]) else torch.float16
    td = parse_dtype(dtype)
    if dev.type == "cpu" and td != torch.float32:
        _warn_once(f"warning: dtype {str(td).removeprefix('torch.')} on the CPU runs, but slowly (a "
                   "half-precision matmul is ~200x slower than float32 there); dtype auto uses float32 on CPU")
    elif dev.type == "cuda" and td == torch.bfloat16 and not _native_bf16(gpus[dev.index]):
        major, minor = gpus[dev.index]
        _warn_once(f"warning: {dev} (compute capability {major}.{minor}) has no native bfloat16; it is "
                   "emulated and slow. dtype auto picks float16 on this GPU")
    return dev, td


def _pick_device(device, gpus: list[tuple[int, int]]) -> torch.device:
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        if not gpus:
            return torch.device("cpu")
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", rank if rank < len(gpus) else 0)
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ZhloraError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N")
    if not gpus:
        raise ZhloraError(f"--device {device}: no CUDA GPU is visible to torch (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda or 'none'}; check the driver and "
                          "CUDA_VISIBLE_DEVICES, install a CUDA build of torch, or use --device cpu)")
    i = int(index or 0)
    if i >= len(gpus):
        raise ZhloraError(f"--device {device}: torch sees {len(gpus)} GPU(s), cuda:0 to cuda:{len(gpus) - 1}; "
                          "pick one of those (CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return torch.device("cuda", i)


def _native_bf16(capability: tuple[int, int]) -> bool:
    """Ampere (8.0) and later compute bf16 natively; ROCm GPUs report their gfx version here."""
    return tuple(capability) >= (8, 0)


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr, flush=True)
