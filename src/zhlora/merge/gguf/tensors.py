"""Tensors of a merged folder -> GGUF tensors: names, storage types, streamed data.

Types: `f32` keeps every tensor in float32; `f16` stores 2-D weights in float16; `q8_0` stores
2-D weights whose rows are a multiple of 32 values as llama.cpp's Q8_0 blocks (a float16 scale
and 32 int8 per block; other 2-D weights f16). 1-D tensors (norms, biases) stay float32 as
llama.cpp keeps them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from zhlora.errors import ZhloraError

QTYPES = ("f32", "f16", "q8_0")
_SKIP = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")


@dataclass(frozen=True)
class Item:
    src: str                 # name in the merged folder
    dst: str                 # llama.cpp name
    shape: tuple[int, ...]
    type: str                # "f32" | "f16" | "q8_0"


def tensor_plan(base, cfg: dict, arch, qtype: str) -> list[Item]:
    """Every tensor llama.cpp reads, in file order, with its GGUF name and type."""
    import gguf

    arch_enum = gguf.MODEL_ARCH[arch.name.upper()]
    layers = arch.hparams(cfg).layers
    tmap = gguf.get_tensor_name_map(arch_enum, layers)
    items, unknown = [], []
    for n, info in base.tensors.items():
        if n.endswith(_SKIP):
            continue
        dst = tmap.get_name(n.removeprefix(arch.strip_prefix), try_suffixes=(".weight", ".bias"))
        if dst is None:
            unknown.append(n)
        else:
            items.append(Item(n, dst, tuple(info.shape), storage_type(info.shape, qtype)))
    if unknown:
        raise ZhloraError(f"{base.folder}: tensors llama.cpp's `{arch.name}` has no name for: "
                          f"{', '.join(unknown[:8])}; is this a plain {arch.name} checkpoint?")
    if not any(i.dst == "output.weight" for i in items) and not cfg.get("tie_word_embeddings"):
        raise ZhloraError(f"{base.folder}: no output (lm_head) weight and tie_word_embeddings is false")
    return items


def storage_type(shape, qtype: str) -> str:
    if len(shape) == 1 or qtype == "f32":
        return "f32"
    if qtype == "q8_0" and shape[-1] % 32 == 0:
        return "q8_0"
    return "f16"


def declare(w, item: Item) -> None:
    """Add the tensor's info (name, shape, type, bytes) to GGUFWriter `w`."""
    import gguf

    shape, n = item.shape, int(np.prod(item.shape))
    if item.type == "q8_0":                       # 32 values -> 2-byte scale + 32 int8
        byte_shape = (*shape[:-1], shape[-1] // 32 * 34)
        w.add_tensor_info(item.dst, byte_shape, np.dtype(np.uint8), n // 32 * 34,
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        dt = np.dtype(np.float32 if item.type == "f32" else np.float16)
        w.add_tensor_info(item.dst, shape, dt, n * dt.itemsize)


def write_data(w, base, items: list[Item], arch, hp) -> None:
    """Stream the tensors one at a time, shard by shard, in the declared order."""
    import gguf

    by_file: dict = {}
    for item in items:
        by_file.setdefault(base.tensors[item.src].file, []).append(item)
    if [i for f in by_file.values() for i in f] != items:
        raise ZhloraError("internal error: GGUF tensors out of order")
    for file, group in by_file.items():
        with base.open_file(file) as get:
            for item in group:
                t = get(item.src).to(torch.float32)
                if arch.permute_qk and item.dst.endswith(("attn_q.weight", "attn_q.bias")):
                    t = permute_for_llama_cpp(t, hp.heads)
                elif arch.permute_qk and item.dst.endswith(("attn_k.weight", "attn_k.bias")):
                    t = permute_for_llama_cpp(t, hp.kv_heads)
                a = t.numpy()
                if item.type == "q8_0":
                    a = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
                else:
                    a = a.astype(np.float32 if item.type == "f32" else np.float16)
                w.write_tensor_data(a)


def permute_for_llama_cpp(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads*head_dim, ...): HF stores each head's rotary pairs as [first half | second half];
    llama.cpp's NORM rope wants them interleaved (x0, x_half, x1, x_half+1, ...)."""
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, out // n_heads // 2, *rest).transpose(1, 2).reshape(out, *rest)
