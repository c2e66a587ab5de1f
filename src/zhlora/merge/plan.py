"""Check everything and decide every output tensor before a single byte is written.

`make_plan` reads only headers (base shards, adapter files, configs). It fails with one
message listing every problem: an adapter made for another base, modules the base lacks,
shape or vocabulary mismatches. The plan then fixes each output tensor's shape, dtype and
shard, so the writer can stream them.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.families import fingerprint
from zhlora.merge.adapters import Adapter, LoraPair
from zhlora.merge.base import FLOATS, BaseCheckpoint, TensorInfo, _numel
from zhlora.merge.keymap import KeyMap, is_output_head, is_vocab_tensor

MAX_PROBLEMS_SHOWN = 20


@dataclass
class Op:
    adapter: int                  # index into plan.adapters
    replace_key: str | None = None
    pair: LoraPair | None = None


@dataclass
class OutTensor:
    src: TensorInfo
    shape: tuple[int, ...]
    dtype: torch.dtype
    ops: list[Op] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * self.dtype.itemsize


@dataclass
class MergePlan:
    base: BaseCheckpoint
    adapters: list[Adapter]
    dtype: torch.dtype
    tensors: list[OutTensor]
    shards: list[list[OutTensor]]
    vocab_rows: int | None          # rows of the embedding after merging (None: no vocab tensor)
    vocab_changed: bool
    tokenizer_dir: Path

    @property
    def shard_names(self) -> list[str]:
        n = len(self.shards)
        return ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                      for i in range(n)]


def make_plan(base: BaseCheckpoint, adapters: list[Adapter], dtype: torch.dtype | None = None,
              max_shard_bytes: int = 2 * 10**9, check_fingerprint: bool = True) -> MergePlan:
    if not adapters:
        raise ZhloraError("no adapter given; pass --adapter DIR (repeat it to stack adapters)")
    if check_fingerprint:
        check_fingerprints(base, adapters)
    keymap = KeyMap(base.tensors, base.config)
    shapes = {n: t.shape for n, t in base.tensors.items()}
    ops: dict[str, list[Op]] = {}
    for i, ad in enumerate(adapters):
        problems = _plan_adapter(i, ad, keymap, shapes, ops)
        if problems:
            raise ZhloraError(_problem_text(ad, base, problems))
    vocab_rows, changed = _check_vocab(base, shapes)
    tok_dir = next((a.folder for a in reversed(adapters) if a.has_tokenizer), base.folder)
    if tok_dir != base.folder or changed:   # a base that ships a mismatch is not ours to refuse
        _check_tokenizer_fits(tok_dir, vocab_rows)
    out_dtype = dtype or base.float_dtype()
    tensors = [OutTensor(t, shapes[n], out_dtype if t.dtype in FLOATS else t.dtype, ops.get(n, []))
               for n, t in base.tensors.items()]
    return MergePlan(base, adapters, out_dtype, tensors, split_shards(tensors, max_shard_bytes),
                     vocab_rows, changed, tok_dir)


def _plan_adapter(i: int, ad: Adapter, keymap: KeyMap, shapes: dict, ops: dict) -> list[str]:
    """Record adapter i's operations; update `shapes` in place; return the problems found."""
    problems = []
    for target, key in ad.replaced.items():
        name = keymap.resolve(target)
        new = ad.shapes[key]
        if name is None:
            problems.append(f"{key}: the base has no tensor {target}")
        elif is_output_head(target) and not is_output_head(name):
            problems.append(f"{key}: the adapter trained {target} whole, but the base ties the output "
                            f"head to {name}; untie the base (tie_word_embeddings=false) before training")
        elif new != shapes[name] and not (is_vocab_tensor(name) and new[1:] == shapes[name][1:]):
            problems.append(f"{key}: shape {list(new)} cannot replace base {name} {list(shapes[name])}")
        else:
            ops.setdefault(name, []).append(Op(i, replace_key=key))
            shapes[name] = new
    for pair in ad.pairs:
        name = keymap.resolve(pair.module + ".weight")
        if name is None:
            problems.append(f"{pair.a_key}: the base has no tensor {pair.module}.weight")
            continue
        want = _delta_shape(ad, pair)
        if want != shapes[name]:
            problems.append(f"{pair.module}: LoRA delta has shape {list(want)} (A {list(ad.shapes[pair.a_key])}, "
                            f"B {list(ad.shapes[pair.b_key])}) but base {name} is {list(shapes[name])}")
            continue
        if pair.magnitude_key and ad.shapes[pair.magnitude_key] != (want[1] if pair.transposed else want[0],):
            problems.append(f"{pair.magnitude_key}: DoRA magnitude has shape {list(ad.shapes[pair.magnitude_key])}, "
                            f"but {name} {list(want)} has {want[1] if pair.transposed else want[0]} output "
                            f"{'columns' if pair.transposed else 'rows'}")
            continue
        ops.setdefault(name, []).append(Op(i, pair=pair))
    return problems


def _delta_shape(ad: Adapter, pair: LoraPair) -> tuple[int, ...]:
    r_a, d_a = ad.shapes[pair.a_key]   # (r, in) or (r, vocab)
    d_b, r_b = ad.shapes[pair.b_key]   # (out, r) or (dim, r)
    if r_a != r_b:
        return (-1, -1)
    if pair.transposed:
        return (d_a, d_b)
    return (d_b, d_a)


def _problem_text(ad: Adapter, base: BaseCheckpoint, problems: list[str]) -> str:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    trained_on = ad.meta.get("base_model") or ad.config.get("base_model_name_or_path") or "unknown"
    return (f"adapter {ad.folder} does not fit base {base.folder} ({len(problems)} problem(s)):\n{shown}{more}\n"
            f"The adapter says it was trained on {trained_on}. Pass that base with --base, and stacked "
            "adapters in the order they were trained.")


def check_fingerprints(base: BaseCheckpoint, adapters: list[Adapter]) -> None:
    """Adapter i must have been trained on the base, or on the base with the earlier adapters
    merged (same config, vocabulary possibly extended)."""
    expected = {fingerprint(base.folder)["config_sha256"]}
    for ad in adapters:
        fp = ad.meta.get("base_fingerprint") or {}
        got = fp.get("config_sha256")
        if got and got not in expected and got not in _stacked_fingerprints(base.config, ad):
            raise ZhloraError(
                f"{ad.folder}/zhlora_adapter.json: the adapter was trained on {ad.meta.get('base_model')} "
                f"(model_type {fp.get('model_type')}, vocab {fp.get('vocab_size')}, config {got}), but "
                f"{base.folder} is model_type {base.config.get('model_type')}, vocab "
                f"{base.config.get('vocab_size')}, config {next(iter(expected))}. Use the base it was "
                "trained on, or pass --no-fingerprint-check if you know the weights are the same")


def _stacked_fingerprints(config: dict, ad: Adapter) -> set[str]:
    """Fingerprints of the base config with the vocabulary this adapter saw."""
    vocab = (ad.meta.get("base_fingerprint") or {}).get("vocab_size")
    if not vocab:
        return set()
    cfg = dict(config)
    for key in ("vocab_size", "padded_vocab_size"):
        if key in cfg:
            cfg[key] = vocab
    with tempfile.TemporaryDirectory() as d:   # reuse families.fingerprint exactly
        Path(d, "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        return {fingerprint(d)["config_sha256"]}


def _check_vocab(base: BaseCheckpoint, shapes: dict) -> tuple[int | None, bool]:
    vocab = {n: shapes[n][0] for n in shapes if is_vocab_tensor(n) and len(shapes[n]) == 2}
    if len(set(vocab.values())) > 1:
        raise ZhloraError("after merging, the vocabulary tensors disagree: "
                          + ", ".join(f"{n} has {v} rows" for n, v in sorted(vocab.items()))
                          + ". An adapter that extends the vocabulary must train both the embedding "
                          "and the output head whole (modules_to_save)")
    rows = next(iter(vocab.values()), None)
    changed = any(shapes[n] != base.tensors[n].shape for n in vocab)
    return rows, changed


def tokenizer_size(folder: Path) -> int | None:
    """Number of token ids a tokenizer folder can produce (None when unknown)."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text(encoding="utf-8"))
        ids = list((data.get("model") or {}).get("vocab", {}).values()) if isinstance(
            (data.get("model") or {}).get("vocab"), dict) else []
        ids += [t["id"] for t in data.get("added_tokens", [])]
        return max(ids) + 1 if ids else None
    return None


def _check_tokenizer_fits(tok_dir: Path, rows: int | None) -> None:
    n = tokenizer_size(tok_dir)
    if rows is not None and n is not None and n > rows:
        raise ZhloraError(f"the tokenizer in {tok_dir} has {n} tokens but the merged embedding has only "
                          f"{rows} rows; ids >= {rows} would crash. Merge the adapter that extended the "
                          "vocabulary (it trains embed_tokens/lm_head whole) or use the matching tokenizer")


def split_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards
