"""LoRA through PEFT (thin wrappers: PEFT's API churn hits only this file)."""
from __future__ import annotations

from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.families import Family
from zhlora.train.config import LoraSettings


def resize_for_tokenizer(model, tokenizer) -> dict | None:
    """Grow the embeddings when the tokenizer is larger than the model (Chinese-LLaMA's
    49953/49954-token vocabularies over a 32000-token base). Returns {"from", "to"} or None."""
    old = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 partitions it to 0 rows
    new = len(tokenizer)
    if new <= old:
        return None
    model.resize_token_embeddings(new, mean_resizing=True)
    model.config.vocab_size = new
    return {"from": old, "to": new}


def lora_config(family: Family, model, settings: LoraSettings, modules_to_save=()):
    """PEFT's LoraConfig for `model`: the family's preset (or the listed modules), checked to
    exist in the model, plus `modules_to_save` (the settings' and any added here)."""
    import torch

    targets = family.lora_targets(settings.target)
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ZhloraError(
            f"lora_target {missing} not found in the {family.name} model; its linear layers are "
            f"{', '.join(sorted(linear))}; presets: "
            + ", ".join(f"{k} = {','.join(v)}" for k, v in family.lora_presets.items()))
    return peft_config(settings, targets, modules_to_save)


def peft_config(settings: LoraSettings, targets, modules_to_save=()):
    """The one place a `peft.LoraConfig` is built (causal LM, no bias). `use_dora` adds PEFT's
    DoRA magnitude vector (one value per output row of each target Linear/Embedding)."""
    from peft import LoraConfig, TaskType

    save = list(dict.fromkeys([*settings.modules_to_save, *modules_to_save]))
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings.r, lora_alpha=settings.alpha,
                      lora_dropout=settings.dropout, target_modules=list(targets),
                      modules_to_save=save or None, use_rslora=settings.use_rslora,
                      use_dora=settings.use_dora, bias="none")


def apply_lora(model, config, gradient_checkpointing: bool = False, kbit: bool = False, checkpoint_every: int = 1,
               checkpoint_final: bool = False):
    """PEFT's LoRA on `model`; `kbit`: the base is quantized (bitsandbytes), prepared first by PEFT's
    `prepare_model_for_kbit_training` (norms and head in fp32, frozen base). Checkpointing is
    zhlora.train.checkpointing's (every `checkpoint_every`-th layer, the final one if `checkpoint_final`)."""
    import warnings

    from peft import get_peft_model, prepare_model_for_kbit_training

    from zhlora.train.checkpointing import enable_checkpointing

    if kbit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_checkpointing(model, checkpoint_every, checkpoint_final)
    with warnings.catch_warnings():  # PEFT calls transformers' deprecated checkpointing names
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing")
        return get_peft_model(model, config)


def trainable_summary(model) -> str:
    def numel(p):  # ZeRO-3 partitions a parameter to 0 elements and keeps its size in ds_numel
        return getattr(p, "ds_numel", p.numel())

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    return f"trainable params {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"


def make_tiny_adapter(base: str | Path, out: str | Path, seed: int = 0, r: int = 4, alpha: float = 8,
                      targets=("q_proj", "v_proj"), b_std: float = 0.5, template: str = "alpaca",
                      generation: dict | None = None) -> Path:
    """A standard PEFT LoRA adapter on `base` with random lora_B (std `b_std`), so it visibly
    changes the output without training, plus zhlora's metadata. For tests and benchmarks."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from zhlora.families import family_of, fingerprint
    from zhlora.runinfo import write_adapter_meta

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(model, peft_config(LoraSettings(r=r, alpha=alpha, dropout=0.0), targets))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=b_std)
    peft.save_pretrained(str(out))
    meta = {"base_model": str(base), "base_fingerprint": fingerprint(base), "family": family_of(base).name,
            "template": template}
    if generation:
        meta["generation"] = generation
    write_adapter_meta(out, meta)
    return Path(out)
