"""Load one base model and plug every adapter into it (PEFT multi-adapter).

P-Tuning v2 checkpoints (ChatGLM family, detected from the folder) are plug-ins too: their
prefix encoders are loaded next to the model (`EngineParts.prefixes`, name -> encoder) and
the engine puts one in the model per batch (zhlora.models.chatglm.ptuning.prefix_active).

The base folder, template and tokenizer come from the adapters' metadata when the user
does not give them: an adapter folder describes itself (`zhlora_adapter.json`).
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.families import family_of, fingerprint, read_config
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.runinfo import adapter_has_tokenizer, read_adapter_meta


@dataclass
class EngineParts:
    model: object
    tokenizer: object
    base_dir: Path
    base_template: str
    adapters: dict[str, tuple[Path, dict]] = field(default_factory=dict)  # name -> (folder, meta)
    prefixes: dict[str, object] = field(default_factory=dict)  # P-Tuning name -> PrefixEncoder


def load_engine_parts(model_dir, adapters: dict, dtype="auto", device=None, allow_bin=False) -> EngineParts:
    metas = {name: (Path(p), _read_meta(name, p)) for name, p in adapters.items()}
    base = _resolve_base(model_dir, metas)
    family = family_of(base)
    for name, (path, meta) in metas.items():
        _check_fingerprint(base, path, meta)
    tokenizer = load_tokenizer(_tokenizer_folder(base, metas))
    model = load_model(base, dtype=dtype, device=device, allow_bin=allow_bin)
    _resize_for_adapters(model, metas)
    model = _plug_adapters(model, {n: v for n, v in metas.items() if v[1].get("method") != "ptuning"})
    if device:
        model.to(device)
    prefixes = load_prefixes(model, metas, allow_bin)
    return EngineParts(model, tokenizer, base, family.default_template(read_config(base)), metas, prefixes)


def load_prefixes(model, metas: dict, allow_bin: bool = False) -> dict:
    """name -> the P-Tuning v2 prefix encoder of each P-Tuning folder among `metas`, built for
    `model` (on its device, fp32); LoRA adapters are skipped."""
    wanted = {n: p for n, (p, m) in metas.items() if m.get("method") == "ptuning"}
    if not wanted:
        return {}
    from zhlora.models.chatglm.ptuning import load_prefix_encoder

    return {name: load_prefix_encoder(model, path, allow_bin) for name, path in wanted.items()}


def _read_meta(name: str, path) -> dict:
    if not name or "=" in name or ":" in name:
        raise ZhloraError(f"adapter name {name!r} for {path}: use a plain name (letters, digits, -, _)")
    if not Path(path).is_dir():
        raise ZhloraError(f"adapter {name!r}: folder {path} does not exist")
    return read_adapter_meta(path)


def _resolve_base(model_dir, metas: dict) -> Path:
    if model_dir:
        return Path(model_dir)
    for name, (path, meta) in metas.items():
        if meta.get("base_model"):
            base = Path(meta["base_model"])
            if not (base / "config.json").is_file():
                raise ZhloraError(f"{path}/zhlora_adapter.json: base_model {base} is not a model "
                                  "folder here; pass --model with the base model's folder")
            return base
    raise ZhloraError("no base model: pass --model DIR (no adapter names its base_model)")


def _check_fingerprint(base: Path, path: Path, meta: dict) -> None:
    """Refuse an adapter trained on another architecture; warn when only the config differs."""
    want = meta.get("base_fingerprint")
    if not want:
        return
    have = fingerprint(base)
    for key in ("model_type", "vocab_size"):
        if want.get(key) is not None and want.get(key) != have.get(key):
            raise ZhloraError(f"{path}: adapter was trained on a base with {key}={want.get(key)!r} but "
                              f"{base} has {key}={have.get(key)!r}; pass the matching --model")
    if want.get("config_sha256") and want["config_sha256"] != have["config_sha256"]:
        print(f"warning: {path} was trained on a base whose config differs from {base} "
              f"(fingerprint {want['config_sha256']} vs {have['config_sha256']})", file=sys.stderr)


def _tokenizer_folder(base: Path, metas: dict) -> Path:
    """An adapter that extended the vocabulary carries its tokenizer; all must agree."""
    own = [(n, p) for n, (p, _) in metas.items() if adapter_has_tokenizer(p)]
    if not own:
        return base
    sizes = {len(load_tokenizer(p)) for _, p in own}
    if len(sizes) > 1 or len(own) < len(metas):
        raise ZhloraError(f"adapters {', '.join(n for n, _ in own)} carry their own (extended) tokenizer "
                          "and the others do not match it; serve them from separate processes")
    return own[0][1]


def _resize_for_adapters(model, metas: dict) -> None:
    sizes = {(m.get("resized_vocab") or {}).get("to") for _, m in metas.values()} - {None}
    if len(sizes) > 1:
        raise ZhloraError(f"adapters need different vocabulary sizes {sorted(sizes)}; "
                          "serve them from separate processes")
    if sizes:
        model.resize_token_embeddings(sizes.pop())


def _plug_adapters(model, metas: dict):
    """Wrap the base with PEFT: the first adapter creates the PeftModel, the others join it."""
    peft_model = None
    for name, (path, _) in metas.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT calls deprecated HF names
            peft_model = _load_one(peft_model, model, name, path)
    return peft_model or model


def _load_one(peft_model, base, name: str, path: Path):
    from peft import PeftModel

    try:
        if peft_model is None:
            return PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=False)
        peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        return peft_model
    except (RuntimeError, ValueError, KeyError) as e:
        raise ZhloraError(f"adapter {name!r} at {path} does not fit the base model: {e}. "
                          "Check that --model is the base it was trained on") from None
