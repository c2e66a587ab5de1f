"""Self-describing run folders.

An adapter folder written by `zhlora train` holds a standard PEFT adapter
(`adapter_config.json`, `adapter_model.safetensors`) plus `zhlora_adapter.json`:

    {
      "zhlora_version": "0.1.0",
      "base_model": "/abs/path/to/base",           # the folder it was trained on
      "base_fingerprint": {"config_sha256": "...", "vocab_size": 32000, "model_type": "llama"},
      "family": "llama",
      "template": "alpaca",
      "train_on": "all",                            # or "last"
      "resized_vocab": null | {"from": 32000, "to": 49954},
      "quantization": null | {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4",
                       "double_quant": true, "compute_dtype": "bfloat16", "bitsandbytes_version": "..."},
      "train_args": {...every TrainConfig field...},
      "data_summary": {"files": [...], "formats": {...}, "records": N, "skipped": N, ...},
      "metrics": {"train_loss": ..., "eval_loss": ..., "steps": ..., "seconds": ...},
      "generation": {"max_new_tokens": 256, ...}
    }

When the vocabulary was extended, the adapter folder also holds the tokenizer files. Every
adapter folder (and every merged model) holds `chat_template.jinja`, the Jinja form of the
template it was trained with (`zhlora.chat_jinja`), so `tokenizer.apply_chat_template`, vLLM
and llama.cpp render the prompt zhlora trained on; a saved tokenizer carries it too.
merge / chat / predict / serve read this file so the user need not repeat flags.

A P-Tuning v2 folder (`method: ptuning`, ChatGLM family) holds THUDM's layout instead of the
PEFT files -- `config.json` with `pre_seq_len` / `prefix_projection` and `model.safetensors`
with the `transformer.prefix_encoder.*` tensors -- and the same zhlora_adapter.json, with
"method": "ptuning" and "ptuning": {"pre_seq_len": N, "prefix_projection": false}.
"""
from __future__ import annotations

import json
from pathlib import Path

from zhlora import __version__
from zhlora.errors import ZhloraError

ADAPTER_META = "zhlora_adapter.json"


def write_adapter_meta(folder: str | Path, meta: dict) -> None:
    data = {"zhlora_version": __version__, **meta}
    Path(folder, ADAPTER_META).write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str),
                                          encoding="utf-8")


def is_ptuning_folder(folder: str | Path) -> bool:
    """A P-Tuning v2 checkpoint: zhlora_adapter.json says method "ptuning", or (THUDM's own
    checkpoints) a config.json with `pre_seq_len` and no PEFT adapter_config.json."""
    f = Path(folder)
    if (f / "adapter_config.json").is_file() or not (f / "config.json").is_file():
        return False
    method = _json_field(f / ADAPTER_META, "method")
    if method:
        return method == "ptuning"
    return bool(_json_field(f / "config.json", "pre_seq_len"))


def _json_field(path: Path, key: str):
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def read_adapter_meta(folder: str | Path) -> dict:
    """The adapter's zhlora metadata, or {} for a plain PEFT adapter (e.g. from elsewhere).
    A P-Tuning v2 folder gives its metadata with "method": "ptuning" (also one without
    zhlora_adapter.json, e.g. THUDM's own)."""
    folder = Path(folder)
    ptuning = is_ptuning_folder(folder)
    if not ptuning and not (folder / "adapter_config.json").is_file():
        raise ZhloraError(f"{folder}: not a PEFT adapter folder (no adapter_config.json) nor a P-Tuning v2 "
                          "checkpoint (no config.json with pre_seq_len)")
    meta = _read_meta_file(folder)
    return {**meta, "method": "ptuning"} if ptuning else meta


def _read_meta_file(folder: Path) -> dict:
    p = folder / ADAPTER_META
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZhloraError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None


def adapter_has_tokenizer(folder: str | Path) -> bool:
    f = Path(folder)
    return (f / "tokenizer_config.json").is_file() and any(
        (f / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "ice_text.model"))


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def write_chat_template(folder: str | Path, template: str, tokenizer=None) -> str:
    """Write the template's Jinja as `chat_template.jinja` (transformers 5 reads it with the
    tokenizer); with `tokenizer`, save the tokenizer there too, carrying the same template."""
    from zhlora.chat_jinja import chat_template_jinja

    jinja = chat_template_jinja(template)
    if tokenizer is not None:
        tokenizer.chat_template = jinja
        tokenizer.save_pretrained(str(folder))
    Path(folder, CHAT_TEMPLATE_FILE).write_text(jinja, encoding="utf-8")
    return jinja


def set_tokenizer_chat_template(folder: str | Path, template: str) -> None:
    """A folder's copied tokenizer files now name `template`: chat_template.jinja and the
    `chat_template` key of tokenizer_config.json (read by older runtimes and gguf-py)."""
    jinja = write_chat_template(folder, template)
    cfg = Path(folder, "tokenizer_config.json")
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ZhloraError(f"{cfg}:{e.lineno}: invalid JSON ({e.msg})") from None
        data["chat_template"] = jinja
        cfg.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
