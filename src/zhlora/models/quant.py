"""Quantized base weights through bitsandbytes (QLoRA): the one place its config is built.

    quantization: 4bit   # NF4 with double quantization, computing in the recipe's dtype
    quantization: 8bit   # LLM.int8()

transformers replaces every `nn.Linear` of the model (the native ChatGLM classes included,
their `query_key_value`, `dense`, ... layers) by a bitsandbytes layer while loading, except
the output layer (`lm_head` / `output_layer`), which stays in the compute dtype. LoRA is then
trained in full precision on top (PEFT's k-bit preparation, in train/lora.py).

bitsandbytes >= 0.48 has a CPU backend: 4-bit and 8-bit loading, forward, generation and LoRA
training on top all run on a CPU (slowly); on a GPU they need a CUDA build of bitsandbytes.
"""
from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING

from zhlora.errors import ZhloraError

if TYPE_CHECKING:
    import torch

QUANTIZATIONS = ("none", "4bit", "8bit")
EXTRA = "qlora"


def normalize(kind: str | None) -> str | None:
    """`none`/None/'' -> None; `4bit`/`8bit` kept; anything else is refused with the choices."""
    if kind in (None, "", "none", False):
        return None
    k = str(kind).strip().lower()
    if k not in QUANTIZATIONS:
        raise ZhloraError(f"quantization {kind!r}: use one of {', '.join(QUANTIZATIONS)}")
    return None if k == "none" else k


def missing_bitsandbytes(kind: str | None) -> str | None:
    """What to do when `kind` needs bitsandbytes and it is not installed; None when all is well."""
    if normalize(kind) is None or _installed("bitsandbytes"):
        return None
    return (f"quantization {kind} needs bitsandbytes, which is not installed; install it with "
            f"pip install 'zhlora[{EXTRA}]', or use quantization none")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:      # sys.modules[module] is None: imports of it are blocked
        return False


def require_bitsandbytes(kind: str) -> None:
    """Quantized loading needs bitsandbytes; say which extra installs it."""
    msg = missing_bitsandbytes(kind)
    if msg:
        raise ZhloraError(msg)


def quantization_config(kind: str | None, compute_dtype: torch.dtype):
    """A transformers `BitsAndBytesConfig` for `kind` (4bit: NF4 + double quantization, matmuls in
    `compute_dtype`; 8bit: LLM.int8()), or None for an unquantized model."""
    kind = normalize(kind)
    if kind is None:
        return None
    require_bitsandbytes(kind)
    from transformers import BitsAndBytesConfig

    # on the CPU, 8-bit matmuls cast fp32 inputs to fp16 and say so on every call
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def describe(kind: str | None, compute_dtype: torch.dtype) -> dict | None:
    """What the adapter folder records about its quantized base (None: not quantized)."""
    kind = normalize(kind)
    if kind is None:
        return None
    import bitsandbytes

    info = {"method": "bitsandbytes", "bits": 4 if kind == "4bit" else 8,
            "bitsandbytes_version": bitsandbytes.__version__}
    if kind == "4bit":
        info.update(quant_type="nf4", double_quant=True,
                    compute_dtype=str(compute_dtype).removeprefix("torch."))
    else:
        info.update(quant_type="llm.int8")
    return info
