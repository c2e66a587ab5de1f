"""`zhlora verify`: the merged model must give the logits of base + adapters run by PEFT.

Reference: the base in fp32, each adapter loaded with PEFT; all but the last are merged by
PEFT's own `merge_and_unload` (sequential application, as in `zhlora merge`), the last one is
left unmerged so its LoRA runs as PEFT computes it at inference, x + s*B(A x) (DoRA: the
magnitude over the norm of the unmerged W + s*B@A, PEFT's DoRA forward). Both models
read the same fixed Chinese prompts, tokenized by the merged model's tokenizer.
"""
from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from zhlora.families import read_config
from zhlora.merge.adapters import load_adapter
from zhlora.merge.keymap import INPUT_EMBEDDINGS
from zhlora.models.loading import load_model, load_tokenizer

PROMPTS = ["今天天气很好，我们去公园散步。", "请把这句话翻译成英文：我爱北京天安门。",
           "他的错误在于没有仔细检查。", "人工智能正在改变世界。", "你好！请介绍一下你自己。"]
# float32: exact up to summation order. Half precision: the merged weights are rounded once,
# so logits move by a fraction of their size; the tolerance scales with max(1, max |logit|).
DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}


@dataclass
class VerifyReport:
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top1_agreement: float
    dtype: str
    prompts: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAIL"
        return (f"{verdict}: max |logit difference| {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}, "
                f"merged dtype {self.dtype}); max |logit| {self.max_abs_logit:.3g}; top-1 agreement "
                f"{self.top1_agreement:.1%} over {self.prompts} prompts")


def verify_merge(base_dir, adapter_dirs, merged_dir, tolerance: float | None = None,
                 allow_bin: bool = False, prompts: list[str] = PROMPTS, device: str = "auto") -> VerifyReport:
    """Both sides in float32 on `device` (zhlora.models.device.decide: auto = CUDA when available)."""
    tok = load_tokenizer(merged_dir)
    batches = [tok(p, return_tensors="pt")["input_ids"] for p in prompts]
    ref = reference_logits(base_dir, adapter_dirs, batches, allow_bin, device)
    merged = load_model(merged_dir, dtype=torch.float32, device=device, allow_bin=allow_bin)
    got = _logits(merged, batches)
    dtype = str(read_config(merged_dir).get("dtype") or read_config(merged_dir).get("torch_dtype") or "float32")
    diff = max(float((r - g).abs().max()) for r, g in zip(ref, got))
    biggest = max(float(r.abs().max()) for r in ref)
    agree = torch.cat([(r.argmax(-1) == g.argmax(-1)).flatten() for r, g in zip(ref, got)]).float().mean()
    if tolerance is None:
        tol = DEFAULT_TOLERANCE.get(dtype, 1e-2)
        tolerance = tol if dtype == "float32" else tol * max(1.0, biggest)
    return VerifyReport(diff, biggest, tolerance, float(agree), dtype, len(prompts))


def reference_logits(base_dir, adapter_dirs, batches, allow_bin: bool = False,
                     device: str = "auto") -> list[torch.Tensor]:
    from peft import PeftModel

    model = load_model(base_dir, dtype=torch.float32, device=device, allow_bin=allow_bin)
    for i, folder in enumerate(adapter_dirs):
        rows = _adapter_vocab_rows(folder, allow_bin)
        if rows and rows != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows, mean_resizing=False)  # rows come from the adapter
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing")
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        if i < len(adapter_dirs) - 1:
            model = model.merge_and_unload()
    out = _logits(model, batches)
    del model
    gc.collect()
    return out


def _adapter_vocab_rows(folder, allow_bin: bool) -> int | None:
    """Rows of the embedding the adapter was trained with, when it saved the embedding."""
    ad = load_adapter(Path(folder), allow_bin)
    for target, key in ad.replaced.items():
        parts = target.split(".")
        if len(parts) >= 2 and parts[-2] in INPUT_EMBEDDINGS:
            return ad.shapes[key][0]
    return None


@torch.no_grad()
def _logits(model, batches) -> list[torch.Tensor]:
    model.eval()
    dev = next(model.parameters()).device
    return [model(input_ids=ids.to(dev)).logits[0].float().cpu() for ids in batches]
