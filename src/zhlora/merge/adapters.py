"""Reading PEFT LoRA adapter folders for merging: what each saved key does to the base.

A PEFT LoRA file (`adapter_model.safetensors`, keys prefixed `base_model.model.`) holds:

    <module>.lora_A.weight            (r, in)      low-rank factors of a Linear
    <module>.lora_B.weight            (out, r)     delta W = scale * B @ A   (out, in)
    <module>.lora_embedding_A         (r, vocab)   factors of an Embedding
    <module>.lora_embedding_B         (dim, r)     delta W = scale * (B @ A).T  (vocab, dim)
    <module>.lora_magnitude_vector    (out,)       DoRA (use_dora): m, one value per output row
                                                   of the Linear (per embedding dimension, i.e.
                                                   per column of an Embedding's (vocab, dim))
    <module>.modules_to_save.<param>  a module trained whole (e.g. extended embed_tokens/lm_head)
    <module>.<param>                  PEFT 0.21 writes the trained whole copy under the plain name
                                      too, and a resized base embedding (save_embedding_layers)
    <module>.base_layer.<param>       a resized base layer under a LoRA layer
    <module>.original_module.<param>  the untrained original of a modules_to_save module: ignored

Tensors are read lazily (one at a time) so the adapters cost little memory while merging.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.runinfo import adapter_has_tokenizer, is_ptuning_folder, read_adapter_meta

PREFIX = "base_model.model."

# Config fields that change what a LoRA layer computes in ways a plain W += s*B@A cannot hold.
_UNMERGEABLE = {
    "use_qalora": "QALoRA works on a quantized base",
    "lora_bias": "the adapter trains a bias on lora_B",
    "layer_replication": "layer replication changes the model's structure",
    "target_parameters": "LoRA on raw parameters (e.g. MoE experts)",
    "trainable_token_indices": "trainable-token deltas",
    "alora_invocation_tokens": "activated LoRA applies only after invocation tokens",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routing between several LoRAs",
    "megatron_config": "Megatron-parallel LoRA layers",
}
# init methods that rewrite the base weights at init time (the adapter alone is not a delta)
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "mica", "eva")


@dataclass
class LoraPair:
    """One low-rank update of module `module` (name without the PEFT prefix)."""
    module: str
    a_key: str
    b_key: str
    scale: float
    kind: str = "linear"          # "linear" | "embedding"
    fan_in_fan_out: bool = False  # the base weight is stored (in, out), e.g. GPT-2 Conv1D
    magnitude_key: str | None = None  # DoRA: the saved magnitude vector m

    @property
    def transposed(self) -> bool:
        """The stored tensor is (in, out): an Embedding (vocab, dim) or a fan_in_fan_out Linear."""
        return self.kind == "embedding" or self.fan_in_fan_out


@dataclass
class Adapter:
    folder: Path
    config: dict
    meta: dict
    weights: Path
    shapes: dict[str, tuple[int, ...]]
    pairs: list[LoraPair] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)   # target param name -> adapter key
    _handle: object | None = None

    @property
    def name(self) -> str:
        return str(self.folder)

    @property
    def has_tokenizer(self) -> bool:
        return adapter_has_tokenizer(self.folder)

    def tensor(self, key: str) -> torch.Tensor:
        """One adapter tensor, read on demand."""
        if self.weights.suffix == ".safetensors":
            from zhlora.merge.reader import SafetensorsReader

            if self._handle is None:
                self._handle = SafetensorsReader(self.weights)
            return self._handle.get_tensor(key)
        if self._handle is None:
            self._handle = torch.load(self.weights, map_location="cpu", weights_only=True, mmap=True)
        return self._handle[key]


def load_adapter(folder: str | Path, allow_bin: bool = False) -> Adapter:
    """Read and check an adapter folder; raises ZhloraError for anything not mergeable exactly."""
    folder = Path(folder)
    refuse_ptuning(folder)
    meta = read_adapter_meta(folder)
    cfg_path = folder / "adapter_config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZhloraError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    check_config(config, cfg_path)
    weights = _weights_file(folder, allow_bin)
    shapes = _read_shapes(weights)
    ad = Adapter(folder=folder, config=config, meta=meta, weights=weights, shapes=shapes)
    _classify_keys(ad)
    return ad


def refuse_ptuning(folder: Path) -> None:
    """A P-Tuning v2 checkpoint has nothing to merge: say why and what to do instead."""
    if is_ptuning_folder(folder):
        raise ZhloraError(
            f"{folder}: a P-Tuning v2 checkpoint cannot be merged: its prefix is extra keys/values put in "
            "front of every layer's attention, not a delta on any base weight, so no merged model can "
            "equal it. Serve it as a plug-in instead (zhlora chat/predict/serve/webui --adapter "
            f"NAME={folder}), or load it into the base the way THUDM's code does (config.json with "
            "pre_seq_len, then the transformer.prefix_encoder.* tensors of model.safetensors)")


def check_config(cfg: dict, where: Path) -> None:
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise ZhloraError(f"{where}: peft_type is {cfg.get('peft_type')!r}; zhlora merge handles LoRA "
                          "adapters only (prefix/prompt tuning, IA3, AdaLoRA... have no exact weight merge). "
                          "Load this adapter with PEFT at inference time instead")
    for key, why in _UNMERGEABLE.items():
        if cfg.get(key):
            raise ZhloraError(f"{where}: {key}={cfg[key]!r} ({why}) cannot be merged exactly by zhlora; "
                              "merge it with PEFT's merge_and_unload() or retrain without it")
    if cfg.get("bias", "none") != "none":
        raise ZhloraError(f"{where}: bias={cfg['bias']!r}: the adapter trained bias terms, which zhlora "
                          "merge does not apply; retrain with bias='none' or merge with PEFT")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise ZhloraError(f"{where}: init_lora_weights={init!r} rewrites the base weights at init, so "
                          "the adapter is not a delta on the original base; convert it with PEFT "
                          "(path_initial_model_for_weight_conversion) before merging")


def _weights_file(folder: Path, allow_bin: bool) -> Path:
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        return st
    binf = folder / "adapter_model.bin"
    if binf.is_file():
        if not allow_bin:
            raise ZhloraError(f"{binf}: pickled adapter weights; pass --allow-bin to load them with "
                              "torch.load(weights_only=True), or convert them to safetensors")
        return binf
    raise ZhloraError(f"{folder}: no adapter_model.safetensors (or .bin) next to adapter_config.json")


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from zhlora.merge.reader import open_header

        with open_header(path) as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


_LORA = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight$")
_LORA_EMB = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)(?:\.default)?$")
_SAVED = re.compile(r"^(?P<mod>.+)\.modules_to_save(?:\.default)?\.(?P<param>[^.]+)$")
_BASE_LAYER = re.compile(r"^(?P<mod>.+)\.base_layer\.(?P<param>[^.]+)$")
_ORIGINAL = re.compile(r"^.+\.original_module\.[^.]+$")
_MAGNITUDE = re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$")


def _classify_keys(ad: Adapter) -> None:
    """Sort the saved keys into LoRA pairs and whole-tensor replacements."""
    factors: dict[tuple[str, str], dict[str, str]] = {}
    plain: dict[str, str] = {}
    saved: dict[str, str] = {}
    magnitudes: dict[str, str] = {}
    for key in ad.shapes:
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if m := _MAGNITUDE.match(name):
            magnitudes[m["mod"]] = key
        elif (m := _LORA.match(name)) or (m := _LORA_EMB.match(name)):
            kind = "embedding" if "embedding" in m["part"] else "linear"
            factors.setdefault((m["mod"], kind), {})[m["part"][-1]] = key
        elif m := _SAVED.match(name):
            saved[f"{m['mod']}.{m['param']}"] = key
        elif m := _BASE_LAYER.match(name):
            plain[f"{m['mod']}.{m['param']}"] = key
        elif _ORIGINAL.match(name):
            continue
        elif "lora_" in name or "magnitude" in name:
            raise ZhloraError(f"{ad.weights}: key {key!r} is a LoRA variant zhlora cannot merge exactly; "
                              "merge this adapter with PEFT instead")
        else:
            plain[name] = key
    ad.replaced = {**plain, **saved}    # the trained whole copy wins over the plain one
    for (mod, kind), parts in sorted(factors.items()):
        if set(parts) != {"A", "B"}:
            raise ZhloraError(f"{ad.weights}: module {mod!r} has lora_{''.join(parts)} but not both "
                              "A and B factors; the adapter file is incomplete")
        ad.pairs.append(LoraPair(mod, parts["A"], parts["B"], _scale(ad, mod, parts["A"]), kind,
                                 bool(ad.config.get("fan_in_fan_out")) and kind == "linear",
                                 magnitudes.pop(mod, None)))
    _check_dora(ad, magnitudes)


def _check_dora(ad: Adapter, orphans: dict[str, str]) -> None:
    """use_dora in the config <=> a magnitude vector for every LoRA pair (what PEFT loads)."""
    if orphans:
        raise ZhloraError(f"{ad.weights}: DoRA magnitude {next(iter(orphans.values()))!r} has no lora_A/lora_B "
                          "factors for its module; the adapter file is incomplete")
    dora = bool(ad.config.get("use_dora"))
    odd = [p.module for p in ad.pairs if (p.magnitude_key is not None) != dora]
    if odd:
        raise ZhloraError(f"{ad.folder}: adapter_config.json says use_dora={dora}, but {len(odd)} module(s) "
                          f"(e.g. {odd[0]}) {'lack' if dora else 'have'} a lora_magnitude_vector in "
                          f"{ad.weights.name}; config and weights disagree, re-save the adapter with PEFT")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern rule: key k matches a module named `(.*\\.)?k`."""
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def _scale(ad: Adapter, module: str, a_key: str) -> float:
    cfg = ad.config
    r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
    r_saved = ad.shapes[a_key][0]
    if r != r_saved:
        raise ZhloraError(f"{ad.folder}/adapter_config.json: rank {r} for {module} but {a_key} has "
                          f"shape {list(ad.shapes[a_key])} (rank {r_saved}); config and weights disagree")
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
