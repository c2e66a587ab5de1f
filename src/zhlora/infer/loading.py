"""Load one base model and plug every adapter into it (PEFT multi-adapter).

P-Tuning v2 checkpoints (ChatGLM family, detected from the folder) are plug-ins too: their
prefix encoders are loaded next to the model (`EngineParts.prefixes`, name -> encoder) and
the engine puts one in the model per batch (zhlora.models.chatglm.ptuning.prefix_active).

The base folder, template and tokenizer come from the adapters' metadata when the user
does not give them: an adapter folder describes itself (`zhlora_adapter.json`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.infer.adapters import AdapterRecord, BaseModel, base_record, read_adapter
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.runinfo import adapter_has_tokenizer


@dataclass
class EngineParts:
    model: object
    tokenizer: object
    base: BaseModel
    base_record: AdapterRecord
    adapters: list[AdapterRecord] = field(default_factory=list)
    prefixes: dict[str, object] = field(default_factory=dict)  # P-Tuning name -> PrefixEncoder


def load_engine_parts(model_dir, adapters: dict, template: str | None = None, dtype="auto", device=None,
                      allow_bin=False, max_loras: int | None = None, quantization=None) -> EngineParts:
    """`adapters`: name -> folder. Every adapter is checked against the base; the first
    `max_loras` (all when None) are loaded now."""
    unbound = [read_adapter(name, p) for name, p in adapters.items()]
    base = BaseModel.read(_resolve_base(model_dir, unbound))
    records = [r.bound_to(base, template) for r in unbound]
    tokenizer = load_tokenizer(_tokenizer_folder(base.folder, records))
    model = load_model(base.folder, dtype=dtype, device=device, allow_bin=allow_bin, quantization=quantization)
    _resize_for_adapters(model, records)
    # load_model placed the base (models.device.decide); PEFT puts each LoRA layer on its base layer's device
    lora = [r for r in records if not r.is_ptuning]
    model = _plug_adapters(model, lora[:max_loras] if max_loras else lora)
    prefixes = load_prefixes(model, records, allow_bin)
    return EngineParts(model, tokenizer, base, base_record(base, template), records, prefixes)


def load_prefixes(model, records: list[AdapterRecord], allow_bin: bool = False) -> dict:
    """name -> the P-Tuning v2 prefix encoder of each P-Tuning folder among `records`, built
    for `model` (on its device, fp32); LoRA adapters are skipped."""
    wanted = [r for r in records if r.is_ptuning]
    if not wanted:
        return {}
    from zhlora.models.chatglm.ptuning import load_prefix_encoder

    return {r.name: load_prefix_encoder(model, r.path, allow_bin) for r in wanted}


def _resolve_base(model_dir, records: list[AdapterRecord]) -> Path:
    if model_dir:
        return Path(model_dir)
    for r in records:
        if r.meta.get("base_model"):
            base = Path(r.meta["base_model"])
            if not (base / "config.json").is_file():
                raise ZhloraError(f"{r.path}/zhlora_adapter.json: base_model {base} is not a model "
                                  "folder here; pass --model with the base model's folder")
            return base
    raise ZhloraError("no base model: pass --model DIR (no adapter names its base_model)")


def _tokenizer_folder(base: Path, records: list[AdapterRecord]) -> Path:
    """An adapter that extended the vocabulary carries its tokenizer; all must agree."""
    own = [r for r in records if adapter_has_tokenizer(r.path)]
    if not own:
        return base
    sizes = {len(load_tokenizer(r.path)) for r in own}
    if len(sizes) > 1 or len(own) < len(records):
        raise ZhloraError(f"adapters {', '.join(r.name for r in own)} carry their own (extended) tokenizer "
                          "and the others do not match it; serve them from separate processes")
    return own[0].path


def _resize_for_adapters(model, records: list[AdapterRecord]) -> None:
    sizes = {(r.meta.get("resized_vocab") or {}).get("to") for r in records} - {None}
    if len(sizes) > 1:
        raise ZhloraError(f"adapters need different vocabulary sizes {sorted(sizes)}; "
                          "serve them from separate processes")
    if sizes:
        model.resize_token_embeddings(sizes.pop())


def _plug_adapters(model, records: list[AdapterRecord]):
    """Wrap the base with PEFT: the first adapter creates the PeftModel, the others join it."""
    peft_model = None
    for r in records:
        peft_model = load_adapter_weights(peft_model, model, r)
    return peft_model or model


def load_adapter_weights(peft_model, base, rec: AdapterRecord):
    """Plug `rec` into `peft_model` (or wrap `base` when there is none yet) -> the PeftModel."""
    from peft import PeftModel

    from zhlora.infer.decoding import route_rows

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT calls deprecated HF names
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, str(rec.path), adapter_name=rec.name, is_trainable=False)
            else:
                peft_model.load_adapter(str(rec.path), adapter_name=rec.name, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ZhloraError(f"adapter {rec.name!r} at {rec.path} does not fit the base model: {e}. "
                          "Check that --model is the base it was trained on") from None
    route_rows(peft_model)   # layers the adapter wraps anew get the scheduler's per-row routing
    return peft_model
