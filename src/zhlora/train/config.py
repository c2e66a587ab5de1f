"""Training recipe: a typed dataclass, loaded from YAML with `key=value` overrides.

    zhlora train examples/tiny_llama_lora.yaml max_steps=50 learning_rate=3e-4

The recipe keys are flat (`lora_r`, `lora_alpha`, ...); code that owns one concern takes its
group as a small typed object (`cfg.lora` -> `LoraSettings`, `cfg.ptuning` -> `PtuningSettings`). Values are coerced and checked
against the field annotations, and the whole recipe is validated, in `load_config`.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zhlora.errors import ConfigError


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA part of a recipe, in PEFT's terms (`LoraConfig` is built from it in train/lora.py)."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target: Any = None                    # preset name of the family, comma list, or list
    modules_to_save: tuple[str, ...] = ()  # trained whole, e.g. (embed_tokens, lm_head)
    use_rslora: bool = False
    use_dora: bool = False                 # DoRA: a learned magnitude per output row (PEFT)


@dataclass(frozen=True)
class PtuningSettings:
    """The P-Tuning v2 part of a recipe (THUDM's `ptuning` recipe for ChatGLM): `pre_seq_len`
    virtual tokens whose per-layer keys/values train, the base frozen; `prefix_projection`
    puts THUDM's two-layer MLP between the embedding and the keys/values."""
    pre_seq_len: int = 128
    prefix_projection: bool = False


METHODS = ("lora", "ptuning")


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
    pass_tokens: int | None = None        # padding-free: a batch of T >= 2N tokens runs as T//N forward/backward
                                          # passes cut at sample starts; unset: 1024 on CPU, none on GPU; 0: none
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
    checkpoint_every: int = 1             # with gradient_checkpointing: every N-th layer (train/checkpointing.py)
    label_only_loss: bool = True          # LM head + loss only at label positions, chunked (train/loss.py)
    dtype: str = "auto"                   # auto: fp32 on CPU, bf16 on a recent GPU, fp16 on an older one
    device: str = "auto"                  # auto (CUDA when available) | cpu | cuda
    quantization: str = "none"            # none | 4bit (QLoRA: NF4, double quant) | 8bit (bitsandbytes)
    method: str = "lora"                  # lora (PEFT) | ptuning (P-Tuning v2, ChatGLM family)
    # LoRA (PEFT)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target: Any = None               # preset name of the family, comma list, or list
    modules_to_save: Any = None           # e.g. [embed_tokens, lm_head]
    use_rslora: bool = False
    use_dora: bool = False                # DoRA (weight-decomposed LoRA): + a magnitude per output row
    # P-Tuning v2 (method: ptuning)
    pre_seq_len: int = 128                # virtual tokens in front of every layer's keys/values
    prefix_projection: bool = False       # THUDM's MLP reparameterisation of the prefix
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
    fsdp: str | None = None               # path to an FSDP JSON config (examples/fsdp/lora.json)
    report_to: str | None = "tensorboard"  # tensorboard | none
    max_new_tokens: int = 256             # generation default stored in the adapter metadata

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.lora_target, str) and "," in self.lora_target:
            self.lora_target = [s.strip() for s in self.lora_target.split(",") if s.strip()]
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [s.strip() for s in self.modules_to_save.split(",") if s.strip()]

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target=self.lora_target, modules_to_save=tuple(self.modules_to_save or ()),
                            use_rslora=self.use_rslora, use_dora=self.use_dora)

    @property
    def ptuning(self) -> PtuningSettings:
        return PtuningSettings(pre_seq_len=self.pre_seq_len, prefix_projection=self.prefix_projection)

    def validate(self) -> None:
        problems = []
        if not self.model:
            problems.append("`model` is required (a Hugging Face model folder)")
        if not self.data:
            problems.append("`data` is required (a file or a list of files)")
        for name in ("batch_size", "grad_accum", "cutoff_len", "lora_r", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.pass_tokens is not None and self.pass_tokens < 0:
            problems.append(f"`pass_tokens` must be >= 0 (0: no limit; unset: the device's default), "
                            f"got {self.pass_tokens}")
        elif self.pass_tokens and (not self.padding_free or not self.label_only_loss
                                   or self.deepspeed or self.fsdp):
            problems.append(f"`pass_tokens` ({self.pass_tokens}) splits padding-free batches under the "
                            "label-only loss without DeepSpeed/FSDP; this recipe sets padding_free=false, "
                            "label_only_loss=false, deepspeed or fsdp: drop pass_tokens or those keys")
        if not 0 <= self.warmup_ratio <= 1:
            problems.append(f"`warmup_ratio` is the share of the steps that warm up, in [0, 1]; got {self.warmup_ratio}")
        if self.checkpoint_every != 1 and not self.gradient_checkpointing \
                and str(self.quantization or "none").lower() == "none":
            problems.append(f"`checkpoint_every` ({self.checkpoint_every}) only applies with "
                            "gradient_checkpointing=true (or quantization, which turns it on); set both or drop it")
        if not 0 <= self.eval_ratio < 1:
            problems.append(f"`eval_ratio` must be in [0, 1), got {self.eval_ratio}")
        if self.packed_attention not in ("segments", "mask"):
            problems.append(f"`packed_attention` must be segments or mask, got {self.packed_attention!r}")
        if self.train_on not in ("all", "last"):
            problems.append(f"`train_on` must be all or last, got {self.train_on!r}")
        problems += self._hardware_problems()
        problems += self._method_problems()
        if self.max_steps <= 0 and self.epochs <= 0:
            problems.append("set `epochs` > 0 or `max_steps` > 0")
        if self.deepspeed and self.fsdp:
            problems.append("`deepspeed` and `fsdp` both set; shard with one of them")
        if problems:
            raise ConfigError("bad training recipe:\n  " + "\n  ".join(problems))

    def _hardware_problems(self) -> list[str]:
        from zhlora.models import quant

        problems = []
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"`device` must be auto, cpu or cuda, got {self.device!r} (pick one GPU of several "
                            "with CUDA_VISIBLE_DEVICES=N; torchrun gives each process its own)")
        if str(self.quantization).lower() not in quant.QUANTIZATIONS:
            problems.append(f"`quantization` must be one of {', '.join(quant.QUANTIZATIONS)}, "
                            f"got {self.quantization!r}")
        elif quant.missing_bitsandbytes(self.quantization):
            problems.append(quant.missing_bitsandbytes(self.quantization))
        return problems

    def _method_problems(self) -> list[str]:
        if self.method not in METHODS:
            return [f"`method` must be {' or '.join(METHODS)}, got {self.method!r}"]
        if self.method != "ptuning":
            return []
        problems = []
        if self.pre_seq_len < 1:
            problems.append(f"`pre_seq_len` must be >= 1 with method=ptuning, got {self.pre_seq_len}")
        if self.modules_to_save:
            problems.append("`modules_to_save` is a LoRA key; method=ptuning trains only the prefix encoder")
        return problems

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
    cfg.validate()
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
    """YAML gives ints for floats and strings for `3e-4`; convert those, explain wrong types.
    What each key takes is read from TrainConfig's annotations."""
    for name, hint in typing.get_type_hints(TrainConfig).items():
        setattr(cfg, name, _coerce(name, getattr(cfg, name), hint))


_WANT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the annotation `hint` asks: float, int, bool, str, list[str], X | None, Any."""
    if hint is Any:
        return value
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"`{name}` must be a path or a list of paths, got {value!r}")
        return value
    if hint is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    raise ConfigError(f"`{name}` must be {_WANT[hint]}, got {value!r}")
