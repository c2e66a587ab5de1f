"""Streaming LoRA merge: base shard by shard, tensor by tensor, adapters in the given order.

For each base tensor W (out, in), every adapter that touches it is applied in order, in fp32:

    W = saved_copy                       if the adapter trained the module whole (modules_to_save)
    W += scale * B @ A                   LoRA on a Linear; (B @ A).T for fan_in_fan_out / Embedding
    scale = lora_alpha / r               (lora_alpha / sqrt(r) with use_rslora)
    W = m / ||W||_row * W                DoRA, right after its W += scale * B @ A (see apply_dora)

fp32 because on CPU fp16/bf16 matmuls are slow and each rounding of an intermediate would
add error; the result is rounded once to the output dtype. Memory held: the tensor being
merged, one reused fp32 work buffer and the small factors, the next base tensor being read
and the results waiting to be written (background threads, about ShardOutputs.MAX_QUEUED
bytes) -- never the whole model.
"""
from __future__ import annotations

import json
import math
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from zhlora.errors import ZhloraError
from zhlora.families import fingerprint
from zhlora.merge.adapters import Adapter, load_adapter
from zhlora.merge.base import open_base
from zhlora.merge.plan import MergePlan, OutTensor, make_plan
from zhlora.merge.writer import StreamingShardWriter
from zhlora.outputs import atomic_output_dir
from zhlora.runinfo import set_tokenizer_chat_template

MERGE_META = "zhlora_merged.json"
TOKENIZER_FILES = ("tokenizer.model", "ice_text.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "vocab.txt", "chat_template.jinja", "chat_template.json", "qwen.tiktoken")


@dataclass
class MergeResult:
    output: Path
    shards: int
    tensors: int
    merged_tensors: int
    dtype: torch.dtype
    vocab_rows: int | None


def merge_adapters(base_dir, adapter_dirs, output, dtype: torch.dtype | None = None,
                   max_shard_bytes: int = 2 * 10**9, overwrite: bool = False, allow_bin: bool = False,
                   check_fingerprint: bool = True, progress: bool = True) -> MergeResult:
    """Merge LoRA adapters (applied in order) into the base; write a Hugging Face folder.

    Everything is checked before writing; a failure (or NaN/Inf in a merged tensor) leaves no
    output folder behind.
    """
    base = open_base(base_dir, allow_bin)
    adapters = [load_adapter(a, allow_bin) for a in adapter_dirs]
    plan = make_plan(base, adapters, dtype, max_shard_bytes, check_fingerprint)
    with atomic_output_dir(output, overwrite) as tmp:
        write_weights(plan, tmp, progress)
        write_side_files(plan, tmp)
    merged = sum(1 for t in plan.tensors if t.ops)
    return MergeResult(Path(output), len(plan.shards), len(plan.tensors), merged, plan.dtype, plan.vocab_rows)


def write_weights(plan: MergePlan, out: Path, progress: bool = True) -> None:
    """Read each base shard once, merge its tensors, append them to the output shards."""
    from tqdm.auto import tqdm

    by_file: dict[Path, list[OutTensor]] = {}
    for t in plan.tensors:
        by_file.setdefault(t.src.file, []).append(t)
    shards = ShardOutputs(plan, out)
    reader = ThreadPoolExecutor(1, thread_name_prefix="zhlora-merge-read")
    scratch, owned = Scratch(), plan.base.kind == "safetensors"   # our reader's buffers are private
    bar = tqdm(total=len(plan.tensors), unit="tensor", desc="merge", disable=not progress)
    try:
        for file, tensors in by_file.items():
            bar.set_postfix_str(file.name)
            with plan.base.open_file(file) as get:
                for t, w in zip(tensors, read_ahead(get, [t.name for t in tensors], reader)):
                    shards.put(t.name, merge_tensor(w, t, plan.adapters, scratch, owned))
                    bar.update(1)
        shards.finish()
    finally:
        bar.close()
        reader.shutdown(wait=True)
        shards.close()


def read_ahead(get, names: list[str], pool: ThreadPoolExecutor) -> Iterator[torch.Tensor]:
    """get(name) for each name in order, the next one read in the background while the caller
    merges the current one (the read releases the GIL): at most one tensor is read ahead."""
    nxt = pool.submit(get, names[0]) if names else None
    for i in range(len(names)):
        cur = nxt.result()
        nxt = pool.submit(get, names[i + 1]) if i + 1 < len(names) else None
        yield cur
        del cur


class ShardOutputs:
    """Routes each merged tensor to its planned shard file. Writing runs in a background
    thread, so merging goes on while up to `MAX_QUEUED` bytes wait to be written; a second
    thread pushes written bytes to disk (fdatasync while a shard grows, fsync when it ends)."""

    MAX_QUEUED = 64 << 20

    def __init__(self, plan: MergePlan, out: Path):
        self.plan, self.out, self.names = plan, out, plan.shard_names
        self.where = {t.name: i for i, shard in enumerate(plan.shards) for t in shard}
        self.writers: list[StreamingShardWriter] = []
        self.current = -1
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="zhlora-merge-write")
        self.sync_pool = ThreadPoolExecutor(1, thread_name_prefix="zhlora-merge-sync")
        self.queued: deque = deque()      # (future of a write, bytes)
        self.closing: list = []           # futures of writer.close (each -> future of its fsync)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if self.where[name] != self.current:
            if self.writers:
                self.closing.append(self.pool.submit(self.writers[-1].close))
            self.current = self.where[name]
            self.writers.append(StreamingShardWriter(
                self.out / self.names[self.current],
                [(x.name, x.dtype, x.shape) for x in self.plan.shards[self.current]], self.sync_pool))
        self.queued.append((self.pool.submit(self.writers[-1].write, name, tensor), tensor.nbytes))
        while len(self.queued) > 1 and sum(n for _, n in self.queued) > self.MAX_QUEUED:
            self.queued.popleft()[0].result()

    def finish(self) -> None:
        while self.queued:
            self.queued.popleft()[0].result()
        if self.writers:
            self.closing.append(self.pool.submit(self.writers[-1].close))
        for job in self.closing:
            synced = job.result()
            if synced is not None:
                synced.result()
        if len(self.names) > 1:
            total = sum(t.nbytes for t in self.plan.tensors)
            index = {"metadata": {"total_size": total},
                     "weight_map": {n: self.names[i] for n, i in self.where.items()}}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    def close(self) -> None:
        """Release the threads and files, also after an error (the folder is then discarded)."""
        self.pool.shutdown(wait=True)
        self.sync_pool.shutdown(wait=True)
        for w in self.writers:
            if not w.f.closed:
                w.f.close()


class Scratch:
    """One fp32 work buffer reused for every merged tensor: a fresh multi-megabyte buffer per
    tensor costs more in page faults than the conversions themselves."""

    def __init__(self):
        self.flat = torch.empty(0, dtype=torch.float32)

    def view(self, shape) -> torch.Tensor:
        n = math.prod(shape)
        if self.flat.numel() < n:
            self.flat = torch.empty(n, dtype=torch.float32)
        return self.flat[:n].view(shape)


def merge_tensor(w: torch.Tensor, t: OutTensor, adapters: list[Adapter], scratch: Scratch | None = None,
                 reuse_input: bool = False) -> torch.Tensor:
    """Apply t.ops to the base tensor w (fp32 math, rounded once); check the result is finite.

    reuse_input: w is a private buffer (read for this merge) that may receive the result."""
    if not t.ops:
        return _checked(w.to(t.dtype), t, adapters)
    scratch = scratch or Scratch()
    acc = scratch.view(w.shape)
    acc.copy_(w)
    replaced = False
    for op in t.ops:
        ad = adapters[op.adapter]
        if op.replace_key:
            saved = ad.tensor(op.replace_key)
            acc = scratch.view(saved.shape)
            acc.copy_(saved)
            replaced = True
            continue
        p = op.pair
        a = ad.tensor(p.a_key).to(torch.float32)  # (r, in)
        b = ad.tensor(p.b_key).to(torch.float32)  # (out, r)
        if p.transposed:
            acc.addmm_(a.T, b.T, alpha=p.scale)     # (B @ A).T = A.T @ B.T
        else:
            acc.addmm_(b, a, alpha=p.scale)
        if p.magnitude_key:
            apply_dora(acc, ad.tensor(p.magnitude_key), p.transposed)
    if reuse_input and not replaced and w.dtype == t.dtype:
        out = w.copy_(acc)
    else:     # a new buffer: the scratch is overwritten by the next tensor while this one waits
        out = torch.empty(acc.shape, dtype=t.dtype).copy_(acc)
    return _checked(out, t, adapters)


def apply_dora(acc: torch.Tensor, magnitude: torch.Tensor, transposed: bool) -> None:
    """DoRA, in place: acc = V = W + s*B@A  ->  m * V / ||V||, one norm per output row.

    PEFT (tuners/lora/dora.py, get_weight_norm) takes the L2 norm of V in (out, in) layout over
    dim 1, i.e. per output feature, and m (`lora_magnitude_vector`, shape (out,)) was initialised
    to the norms of the base weight. A tensor stored (in, out) -- an Embedding's (vocab, dim)
    (PEFT's DoraEmbeddingLayer uses fan_in_fan_out=True) or a fan_in_fan_out Linear -- is normed
    over dim 0 and its columns are scaled. V is the weight this adapter sees: with stacked
    adapters it already holds the earlier ones, as when PEFT merges them one after the other.

    Numerics: V is the fp32 accumulator, never rounded before the norm (PEFT on a half-precision
    model takes the norm of a half-precision V). The sum of squares of a row runs in fp32 (torch
    reduces in blocks, so its relative error stays near fp32 precision for rows of 10^4 terms,
    not 10^4 times it); squares of the weights' magnitudes (~1e-2..1e1) cannot overflow or
    underflow fp32. m is cast to fp32 and m / ||V|| is one division per row, so each merged
    row is V times a single factor: one more rounding per element, then the one to the output
    dtype. A zero row gives inf/NaN, which the finiteness check after the merge reports.
    """
    dim = 0 if transposed else 1
    factor = magnitude.to(torch.float32) / torch.linalg.vector_norm(acc, dim=dim)   # (out,)
    acc.mul_(factor.view(1, -1) if transposed else factor.view(-1, 1))


def _checked(out: torch.Tensor, t: OutTensor, adapters: list[Adapter]) -> torch.Tensor:
    changed = bool(t.ops) or out.dtype != t.src.dtype   # untouched base tensors are the base's business
    if changed and out.is_floating_point() and not all_finite(out):
        src = ", ".join(str(adapters[op.adapter].folder) for op in t.ops) or "the base itself"
        bad = int((~torch.isfinite(out)).sum())
        raise ZhloraError(f"merged tensor {t.name} {list(t.shape)} has {bad} NaN/Inf value(s) in {t.dtype} "
                          f"(from {src}); nothing was written. Check the adapter for diverged training, "
                          "or merge to --dtype float32/bfloat16 if float16 overflowed")
    return out


def all_finite(t: torch.Tensor) -> bool:
    """One reduction pass, no temporaries: aminmax propagates NaN, and +-Inf shows in min/max
    (10x faster than isfinite().all() on fp16 CPU tensors)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo.isfinite()) and bool(hi.isfinite())


def write_side_files(plan: MergePlan, out: Path) -> None:
    """config.json, generation_config.json, tokenizer files and the merge record."""
    cfg = dict(plan.base.config)
    if plan.vocab_changed and plan.vocab_rows:
        for key in ("vocab_size", "padded_vocab_size"):
            if key in cfg or key == "vocab_size":
                cfg[key] = plan.vocab_rows
    dtype_name = str(plan.dtype).removeprefix("torch.")
    cfg["dtype"] = cfg["torch_dtype"] = dtype_name
    (out / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    gen = plan.base.folder / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out / gen.name)
    for name in TOKENIZER_FILES:     # never *.py: no remote code travels with the model
        if (plan.tokenizer_dir / name).is_file():
            shutil.copy2(plan.tokenizer_dir / name, out / name)
    template = _merge_record(plan)["template"]
    if template:  # the runtime's chat_template = the prompt the adapters were trained on
        set_tokenizer_chat_template(out, template)
    (out / MERGE_META).write_text(json.dumps(_merge_record(plan), indent=2, ensure_ascii=False, default=str),
                                  encoding="utf-8")


def _merge_record(plan: MergePlan) -> dict:
    last = next((a.meta for a in reversed(plan.adapters) if a.meta), {})
    return {"base_model": str(plan.base.folder.resolve()), "base_fingerprint": fingerprint(plan.base.folder),
            "adapters": [{"path": str(a.folder.resolve()), "base_fingerprint": a.meta.get("base_fingerprint")}
                         for a in plan.adapters],
            "dtype": str(plan.dtype).removeprefix("torch."), "tokenizer_from": str(plan.tokenizer_dir),
            "family": last.get("family"), "template": last.get("template"),
            "generation": last.get("generation")}


def parse_size(text: str | int) -> int:
    """'2GB' -> 2e9, '500MiB' -> 500*2**20, '1000' -> 1000 bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    try:
        return int(s)
    except ValueError:
        raise ZhloraError(f"--max-shard-size {text!r}: use a size like 2GB, 500MB or 1GiB") from None
