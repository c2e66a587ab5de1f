"""Builders shared by the merge tests: tiny bases, PEFT adapters with non-zero deltas, and
the independent reference (PEFT's own merge_and_unload, adapter after adapter)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

ZH = ["今天天气很好，我们去公园散步。", "人工智能正在改变世界。", "请把这句话翻译成英文：我爱北京天安门。"]
IDS = torch.tensor([[1, 5, 9, 20, 33, 40, 2, 17]])


def build_adapter(base: Path, out: Path, seed: int = 0, resize_to: int | None = None, tokenizer=None,
                  meta: bool = True, fingerprint_dir: Path | None = None, model=None, **lora) -> Path:
    """Train-free adapter: PEFT LoRA on `base` with random lora_B (and perturbed whole modules and
    DoRA magnitudes); `model`: build it on this model (e.g. base + an earlier adapter merged)."""
    from peft import LoraConfig, get_peft_model

    from zhlora.families import fingerprint
    from zhlora.models.loading import load_model
    from zhlora.runinfo import write_adapter_meta

    model = model if model is not None else load_model(base, dtype=torch.float32)
    if resize_to:
        model.resize_token_embeddings(resize_to, mean_resizing=False)
    lora.setdefault("r", 4)
    lora.setdefault("lora_alpha", 8)
    lora.setdefault("target_modules", ["q_proj", "v_proj"])
    pm = get_peft_model(model, LoraConfig(**lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in name:       # DoRA: a trained magnitude, not ||W||
                p.mul_(1 + torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if meta:
        write_adapter_meta(out, {"base_model": str(base), "base_fingerprint": fingerprint(fingerprint_dir or base),
                                 "family": "llama", "template": "alpaca",
                                 "resized_vocab": {"to": resize_to} if resize_to else None})
    return out


def peft_reference(base: Path, adapters: list[Path], ids: torch.Tensor = IDS) -> torch.Tensor:
    """Logits of base + adapters merged by PEFT, one after the other, in fp32."""
    from peft import PeftModel
    from safetensors import safe_open

    from zhlora.models.loading import load_model

    model = load_model(base, dtype=torch.float32)
    for a in adapters:
        with safe_open(str(a / "adapter_model.safetensors"), "pt") as f:
            rows = [f.get_slice(k).get_shape()[0] for k in f.keys() if "embed_tokens" in k
                    and "lora" not in k and "original_module" not in k]
        if rows and rows[0] != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows[0], mean_resizing=False)
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    with torch.no_grad():
        return model(input_ids=ids).logits


def merged_logits(folder: Path, ids: torch.Tensor = IDS) -> torch.Tensor:
    from zhlora.models.loading import load_model

    model = load_model(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


def run_cli(*argv: str) -> int:
    from zhlora.cli import main

    return main([str(a) for a in argv] + (["--no-progress"] if argv[0] == "merge" else []))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")
