"""Gradient checkpointing variants side by side: step time and what autograd keeps.

    OMP_NUM_THREADS=1 .venv/bin/python bench/checkpointing.py [--model DIR] [--repeats 7]

One packed batch (8 rows x 512 tokens, samples of 30-200 tokens, a third of each prompt),
LoRA r8 on all 7 linear layers, fp32, the label-only loss; one step = forward + loss +
backward. Variants, each its own model with the same weights and LoRA draw, interleaved
step by step, `--repeats` rounds after one warm-up (median and min reported):
  none          no checkpointing
  transformers  transformers' own (every layer, input-embedding gradient hook): zhlora before
  zhlora        gradient_checkpointing=true now (no hook, final layer not checkpointed)
  every2        + checkpoint_every=2
"Step peak" = the highest live heap (glibc mallinfo2, sampled after every aten op of forward
and backward by a TorchDispatchMode) above the heap before the step: activations, recomputed
activations, logits chunks and gradients, without what malloc keeps after a free (which the
resident set would count).
Default model: the peers harness's tiny-llama if present (`../shared/peers`), else a random
LLaMA of the same shape (hidden 256, 4 layers, vocabulary 8000).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VARIANTS = ("none", "transformers", "zhlora", "every2")


def batch(vocab: int, seed: int = 0, flatten: bool = False) -> dict:
    from zhlora.train.dataset import Collator

    rng = random.Random(seed)
    feats = []
    for _ in range(8):
        ids, labels, lens = [], [], []
        while True:
            n = rng.randint(30, 200)
            if sum(lens) + n > 512:
                break
            p = n // 3
            ids += [rng.randrange(3, vocab) for _ in range(n)]
            labels += [-100] * p + [rng.randrange(3, vocab) for _ in range(n - p)]
            lens.append(n)
        feats.append({"input_ids": ids, "labels": labels, "lengths": lens})
    return Collator(0, packed=True, block_mask=False, flatten=flatten)(feats)


def build(path: Path, variant: str):
    from zhlora.families import family_for_config, read_config
    from zhlora.models.loading import load_model
    from zhlora.train.config import LoraSettings
    from zhlora.train.lora import apply_lora, lora_config

    family = family_for_config(read_config(path), path)
    model = load_model(path, dtype="float32")
    torch.manual_seed(0)
    lcfg = lora_config(family, model, LoraSettings(r=8, alpha=16, dropout=0.0, target="all"))
    if variant == "transformers":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False
        return apply_lora(model, lcfg).train()
    return apply_lora(model, lcfg, gradient_checkpointing=variant != "none",
                      checkpoint_every=2 if variant == "every2" else 1).train()


def step(model, b: dict) -> float:
    from zhlora.train.loss import capture_head_input, label_only_loss, output_head

    model.zero_grad()
    head = output_head(model)
    with capture_head_input(head) as seen:
        model(**{k: v for k, v in b.items() if k != "labels"})
    loss = label_only_loss(seen[-1], b["labels"], head)
    loss.backward()
    return loss.item()


class _Mallinfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not taken back (mallinfo2: heap + mmapped)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo


class PeakHeap(TorchDispatchMode):
    """Samples heap_in_use() after every aten op (forward and backward); `peak` - `start` is
    the step's peak of live memory above what existed before it (tensors freed back to
    malloc are not counted, unlike the process's resident set)."""

    def __enter__(self):
        self.start = self.peak = heap_in_use()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


def peak_bytes(model, b: dict) -> int:
    """Peak live heap of one step above its start (gradients zeroed to None first)."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    with PeakHeap() as mode:
        step(model, b)
    return mode.peak - mode.start


def default_model() -> Path:
    peers = Path("/work/peerswork/tiny-llama")
    if (peers / "config.json").exists():
        return peers
    from zhlora.models.tiny import make_tiny_model

    out = Path(tempfile.mkdtemp(prefix="ckpt_bench_")) / "llama"
    return make_tiny_model(out, "llama", texts=["你好世界"], hidden=256, layers=4, heads=4, kv_heads=4)


def main() -> None:
    from zhlora.train.packed_attention import segment_attention

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    path = args.model or default_model()
    models = {v: build(path, v) for v in VARIANTS}
    b = batch(models["none"].get_input_embeddings().num_embeddings)
    times: dict = {v: [] for v in VARIANTS}
    losses, kept = {}, {}
    for v, m in models.items():
        with segment_attention(m):
            losses[v] = step(m, b)                       # warm-up
            kept[v] = peak_bytes(m, b)
    for _ in range(args.repeats):
        for v, m in models.items():
            with segment_attention(m):
                t = time.perf_counter()
                step(m, b)
                times[v].append(time.perf_counter() - t)
    base = statistics.median(times["none"])
    print(f"model {path}, {b['input_ids'].numel()} tokens/step, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} interleaved rounds")
    print("| variant | step s median (min) | vs none | vs transformers | step peak MiB | loss |")
    print("|---|---:|---:|---:|---:|---:|")
    tr = statistics.median(times["transformers"])
    for v in VARIANTS:
        med = statistics.median(times[v])
        print(f"| {v} | {med:.3f} ({min(times[v]):.3f}) | {med / base:.2f} | {med / tr:.2f} | "
              f"{kept[v] / 2 ** 20:.1f} | {losses[v]:.6f} |")


if __name__ == "__main__":
    main()
