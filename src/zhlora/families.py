"""Model families: ONE registry for everything that differs between model families.

family -> which configs it covers, its default chat template, LoRA target presets, the
modules to train whole when the vocabulary grows, and how to load it. Code elsewhere asks
this registry instead of branching on the model type.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from zhlora.errors import ZhloraError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]          # config.json "model_type" values it covers
    template: str                         # default chat template
    lora_presets: dict                    # preset name -> list of module names
    embedding_modules: tuple[str, ...] = ("embed_tokens", "lm_head")  # trained whole on resize
    tied_embeddings_ok: bool = True
    packing: bool = True                  # supports packed rows with a 4D block mask
    ptuning: bool = False                 # native P-Tuning v2 prefix encoder (method: ptuning)
    # optional refinement: config dict -> True if this family owns it (e.g. chatglm v1 vs v2)
    matches: Callable[[dict], bool] | None = None
    # optional hook to pick the template from the config (e.g. chatglm2 vs chatglm3)
    template_for: Callable[[dict], str] | None = None
    # the other templates this family's models are published with; a folder's own
    # chat_template picks among them (zhlora.templates.template_for_model)
    templates: tuple[str, ...] = ()
    notes: str = ""

    def lora_targets(self, preset_or_list) -> list[str]:
        """`lora_target`: a preset name of this family, a comma list, or a list of names."""
        if preset_or_list in (None, "", "default"):
            return list(self.lora_presets["default"])
        if isinstance(preset_or_list, str) and preset_or_list in self.lora_presets:
            return list(self.lora_presets[preset_or_list])
        if isinstance(preset_or_list, str):
            return [s.strip() for s in preset_or_list.split(",") if s.strip()]
        return list(preset_or_list)

    def default_template(self, config: dict) -> str:
        return self.template_for(config) if self.template_for else self.template


FAMILIES: dict[str, Family] = {}

# zhlora's own model packages: importing one registers its families and templates here, and
# its classes with transformers' Auto classes. `import zhlora` loads them once transformers is
# imported; a registry lookup that misses loads them itself.
NATIVE_MODULES = ("zhlora.models.chatglm",)


def load_native_modules() -> None:
    """Import the native model packages that are installed (idempotent)."""
    for name in NATIVE_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def register_family(f: Family) -> Family:
    FAMILIES[f.name] = f
    return f


_LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CHINESE_LLAMA_2_VOCAB = 55296  # Chinese-LLaMA-2 / Chinese-Alpaca-2 (v1: 49953 / 49954)

register_family(Family(
    name="llama", model_types=("llama",), template="alpaca",
    template_for=lambda cfg: "chinese-alpaca-2" if cfg.get("vocab_size") == CHINESE_LLAMA_2_VOCAB else "alpaca",
    templates=("alpaca", "chinese-alpaca-2", "llama2", "default"),
    lora_presets={"default": ["q_proj", "v_proj"], "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
                  "all": _LLAMA_ALL},
    notes="Chinese-LLaMA / Chinese-Alpaca (v1, Plus: alpaca; -2, 55296 tokens: chinese-alpaca-2), Llama-2"))

register_family(Family(
    name="qwen2", model_types=("qwen2", "qwen3"), template="chatml", templates=("chatml", "qwen2.5", "qwen3"),
    template_for=lambda cfg: "qwen3" if cfg.get("model_type") == "qwen3" else "chatml",
    lora_presets={"default": ["q_proj", "v_proj"], "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
                  "all": _LLAMA_ALL},
    notes="Qwen2 / Qwen2.5 / Qwen3 through transformers' own classes"))

register_family(Family(
    name="glm4", model_types=("glm4", "glm"), template="glm4",
    lora_presets={"default": ["q_proj", "k_proj", "v_proj"],
                  "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]},
    notes="GLM-4 in transformers' native format (glm-4-9b-chat-hf)"))


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ZhloraError(f"{model_dir}: no config.json; point `model` at a Hugging Face model folder "
                          "(the folder holding config.json and the weights)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZhloraError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def family_for_config(config: dict, where: str = "") -> Family:
    mt = config.get("model_type")
    if not any(mt in f.model_types for f in FAMILIES.values()):
        load_native_modules()
    cands = [f for f in FAMILIES.values() if mt in f.model_types]
    for f in cands:
        if f.matches is None or f.matches(config):
            return f
    raise ZhloraError(
        f"{where or 'model'}: model_type {mt!r} is not supported; supported families: "
        + ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values()))


def family_of(model_dir: str | Path) -> Family:
    return family_for_config(read_config(model_dir), str(model_dir))


# Fields that do not change the weights' meaning; left out of the fingerprint.
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
             "auto_map", "use_cache", "_attn_implementation_autoset", "output_attentions"}


def fingerprint(model_dir: str | Path) -> dict:
    """Identity of a base model: config hash (volatile keys left out), vocab size, type."""
    return config_fingerprint(read_config(model_dir))


def config_fingerprint(cfg: dict) -> dict:
    """`fingerprint` of an already read config.json."""
    core = {k: v for k, v in sorted(cfg.items()) if k not in _VOLATILE}
    digest = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]
    return {"config_sha256": digest, "vocab_size": cfg.get("vocab_size") or cfg.get("padded_vocab_size"),
            "model_type": cfg.get("model_type")}
