"""Training recipe: a flat typed dataclass, loaded from YAML with `key=value` overrides.

    zhlora train examples/tiny_llama_lora.yaml max_steps=50 learning_rate=3e-4
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zhlora.errors import ConfigError


@dataclass
class TrainConfig:
    # what
    model: str = ""                       # HF model folder (config.json + weights + tokenizer)
    data: list[str] = field(default_factory=list)  # one path or a list of paths
    format: str = "auto"                  # alpaca | sharegpt | firefly | messages | ... | auto
    template: str | None = None           # default: the model family's template
    output_dir: str = "runs/lora"
    skip_bad: bool = False                # drop bad records instead of stopping
    max_samples: int | None = None        # use only the first N records (after reading)
    train_on: str = "all"                 # all assistant turns, or "last"
    # sequence
    cutoff_len: int = 1024
    packing: bool = False                 # concatenate samples into full rows, kept apart in attention
    packed_attention: str = "segments"    # segments: attention per sample; mask: 4D block-diagonal mask
    group_by_length: bool = False         # length-grouped batches (when not packing)
    padding_free: bool = True             # unpacked batches: samples back to back, no padding computed
    # optimisation
    batch_size: int = 4                   # per device
    grad_accum: int = 1
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1                   # > 0 overrides epochs
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    label_only_loss: bool = True          # LM head + loss only at label positions, chunked (train/loss.py)
    dtype: str = "auto"                   # auto: fp32 on CPU, bf16 on GPU when supported
    # LoRA (PEFT)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target: Any = None               # preset name of the family, comma list, or list
    modules_to_save: Any = None           # e.g. [embed_tokens, lm_head]
    use_rslora: bool = False
    # bookkeeping
    eval_ratio: float = 0.0               # held-out share for eval loss
    eval_steps: int | None = None         # default: save_steps, else once at the end
    save_steps: int = 500                 # checkpoint every N steps (0: only at the end)
    save_total_limit: int = 2
    keep_checkpoints: bool = False        # keep checkpoint-* folders in the finished output
    logging_steps: int = 5
    seed: int = 42
    resume: bool = False                  # continue from the last checkpoint of output_dir
    overwrite: bool = False               # replace an existing output_dir
    allow_bin: bool = False               # allow pickled .bin base weights (weights_only load)
    deepspeed: str | None = None          # path to a DeepSpeed JSON config
    report_to: str = "tensorboard"        # tensorboard | none
    max_new_tokens: int = 256             # generation default stored in the adapter metadata

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.lora_target, str) and "," in self.lora_target:
            self.lora_target = [s.strip() for s in self.lora_target.split(",") if s.strip()]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [s.strip() for s in self.modules_to_save.split(",") if s.strip()]

    def validate(self) -> None:
        problems = []
        if not self.model:
            problems.append("`model` is required (a Hugging Face model folder)")
        if not self.data:
            problems.append("`data` is required (a file or a list of files)")
        for name in ("batch_size", "grad_accum", "cutoff_len", "lora_r"):
            if getattr(self, name) < 1:
                problems.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.eval_ratio < 1:
            problems.append(f"`eval_ratio` must be in [0, 1), got {self.eval_ratio}")
        if self.packed_attention not in ("segments", "mask"):
            problems.append(f"`packed_attention` must be segments or mask, got {self.packed_attention!r}")
        if self.train_on not in ("all", "last"):
            problems.append(f"`train_on` must be all or last, got {self.train_on!r}")
        if self.max_steps <= 0 and self.epochs <= 0:
            problems.append("set `epochs` > 0 or `max_steps` > 0")
        if problems:
            raise ConfigError("bad training recipe:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_key(key: str, where: str) -> None:
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint} (known keys: see `zhlora train --help`)")


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, YAML-typed value): `max_steps=50` -> 50, `packing=true` -> True."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. max_steps=50)")
    key, raw = item.split("=", 1)
    key = key.strip()
    _check_key(key, "command line")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (may be None) and apply `key=value` overrides.

    Relative `model`/`data` paths in the YAML are tried as given first, then relative to the
    recipe's folder, so recipes work from the repository root and from their own folder.
    """
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {path} not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of key: value lines")
        for k in loaded:
            _check_key(k, str(path))
        values.update(_resolve_paths(loaded, p.parent))
    for item in overrides:
        k, v = parse_override(item)
        values[k] = v
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad recipe values: {e}") from None
    _coerce_types(cfg)
    return cfg


def _resolve_paths(values: dict, base: Path) -> dict:
    out = dict(values)

    def fix(x: str) -> str:
        return x if Path(x).exists() or not (base / x).exists() else str(base / x)

    if isinstance(out.get("model"), str):
        out["model"] = fix(out["model"])
    if isinstance(out.get("data"), str):
        out["data"] = fix(out["data"])
    elif isinstance(out.get("data"), list):
        out["data"] = [fix(str(d)) for d in out["data"]]
    return out


def _coerce_types(cfg: TrainConfig) -> None:
    """YAML gives ints for floats etc.; convert and explain wrong types."""
    for name in ("learning_rate", "epochs", "lora_alpha", "lora_dropout", "eval_ratio",
                 "warmup_ratio", "weight_decay", "max_grad_norm"):
        v = getattr(cfg, name)
        try:
            setattr(cfg, name, float(v))
        except (TypeError, ValueError):
            raise ConfigError(f"`{name}` must be a number, got {v!r}") from None
    for name in ("cutoff_len", "batch_size", "grad_accum", "max_steps", "lora_r", "save_steps",
                 "seed", "logging_steps", "save_total_limit", "max_new_tokens"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"`{name}` must be an integer, got {v!r}")
    for name in ("packing", "padding_free", "resume", "overwrite", "skip_bad", "group_by_length",
                 "gradient_checkpointing", "label_only_loss", "use_rslora", "allow_bin", "keep_checkpoints"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"`{name}` must be true or false, got {getattr(cfg, name)!r}")
