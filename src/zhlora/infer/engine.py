"""One base model, many LoRA adapters: the generation engine every front end calls.

Public API (used by `zhlora chat / predict / serve / webui` and by GEC `eval`):

    from zhlora.infer.engine import Engine, GenerationOptions
    eng = Engine.load(model_dir, adapters={"gec": "/path/adapter"}, template=None,
                      dtype="auto", device=None, allow_bin=False)
    eng.adapter_names                      # ["gec", ...]
    eng.generate(convs, adapter=None, options=None, batch_size=8, progress=False) -> list[str]
    eng.stream(conv, adapter=None, options=None) -> Iterator[str]     # text pieces as generated
    GenerationOptions(max_new_tokens=256, temperature=0.0, top_p=1.0, stop=[], seed=None,
                      repetition_penalty=1.0)          # temperature 0 => greedy

- `model_dir=None` takes the base from the first adapter's metadata (`base_model`).
- `adapter=None` is the base model (PEFT's `disable_adapter()`); a name switches the PEFT
  adapter in place (`set_adapter`), the base is loaded once.
- A P-Tuning v2 checkpoint (ChatGLM) is an adapter too: its prefix encoder is put in the
  model for the batch (LoRA adapters off) and taken out after (`_adapter_active`).
- Each adapter keeps its own chat template (its metadata `template`, else the family
  default; `template=` overrides all) and its own default `GenerationOptions` (metadata
  `generation`), used when `options` is None.
- `generate` sorts prompts by length, runs batches with left padding and returns the answers
  in the original order; greedy batched output equals one-by-one output.
- Thread safety: adapter switching is global state on the model, so every generation holds
  one lock for the whole call; concurrent callers are served one after another, each with
  its own adapter.

Lower level (used by the server): `encode(conv, adapter)`, `encode_text(text)`,
`complete(prompt_ids, ...) -> list[Completion]` (text, token counts, finish reason) and
`open_stream(prompt_ids, ...)` (a `TokenStream` that can be cancelled), and
`using(adapter)`, a context that holds the model with that adapter active for a custom
decoding loop (GEC's constrained decoder).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

import torch

from zhlora.conversation import Conversation
from zhlora.errors import ZhloraError
from zhlora.infer.streaming import Completion, StopRules, TokenStream, generation_criteria

__all__ = ["Engine", "GenerationOptions", "Completion", "TokenStream"]


@dataclass
class GenerationOptions:
    """Decoding settings. `temperature` 0 means greedy; `stop` strings end the answer (not
    included); `ignore_eos` keeps going past end-of-turn tokens (benchmarks, tests)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = 1.0
    ignore_eos: bool = False

    def validated(self) -> "GenerationOptions":
        checks = [(self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
                  (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0")]
        for ok, msg in checks:
            if not ok:
                raise ZhloraError(f"generation options: {msg}; got {self}")
        return self

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "generation") -> "GenerationOptions":
        """Known keys of `d` (e.g. adapter metadata `generation`); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in (d or {}).items() if k in names and v is not None}
        try:
            return cls(**kept).validated()
        except TypeError as e:
            raise ZhloraError(f"{where}: bad generation settings {kept} ({e})") from None

    def replace(self, **changes) -> "GenerationOptions":
        """A copy with the non-None `changes` applied."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        return GenerationOptions(**d).validated()


@dataclass
class _AdapterInfo:
    name: str
    path: Path
    meta: dict


class Engine:
    """A loaded base model (optionally wrapped by PEFT with several adapters) + tokenizer."""

    def __init__(self, model, tokenizer, base_template: str, adapters: list[_AdapterInfo],
                 template_override: str | None = None, base_dir: Path | None = None,
                 prefixes: dict | None = None):
        from zhlora.templates import get_template

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base_dir = base_dir
        self._adapters = {a.name: a for a in adapters}
        self._prefixes = dict(prefixes or {})  # P-Tuning v2 adapter name -> prefix encoder
        self._templates = {None: get_template(template_override or base_template)}
        self._defaults = {None: GenerationOptions()}
        for a in adapters:
            self._templates[a.name] = get_template(template_override or a.meta.get("template") or base_template)
            self._defaults[a.name] = GenerationOptions.from_dict(a.meta.get("generation"),
                                                                 f"{a.path}/zhlora_adapter.json: generation")
        self._lock = threading.RLock()
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    # -- loading -------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, adapters: dict[str, str | Path] | None = None,
             template: str | None = None, dtype: str = "auto", device: str | None = None,
             allow_bin: bool = False) -> "Engine":
        """Load the base once and plug in every adapter (name -> PEFT adapter folder)."""
        from zhlora.infer.loading import load_engine_parts

        parts = load_engine_parts(model_dir, adapters or {}, dtype, device, allow_bin)
        return cls(parts.model, parts.tokenizer, parts.base_template,
                   [_AdapterInfo(n, p, m) for n, (p, m) in parts.adapters.items()],
                   template_override=template, base_dir=parts.base_dir, prefixes=parts.prefixes)

    # -- introspection -------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def template_for(self, adapter: str | None):
        self._check_adapter(adapter)
        return self._templates[adapter]

    def default_options(self, adapter: str | None = None) -> GenerationOptions:
        """The adapter's generation defaults (metadata `generation`), else the built-in ones."""
        self._check_adapter(adapter)
        return GenerationOptions(**asdict(self._defaults[adapter]))

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self._adapters:
            known = ", ".join(self._adapters) or "none loaded"
            raise ZhloraError(f"unknown adapter {adapter!r}; loaded adapters: {known} "
                              "(None = the base model)")

    # -- prompts -------------------------------------------------------------------
    def encode(self, conv: Conversation, adapter: str | None = None, max_new_tokens: int = 0) -> list[int]:
        """Prompt ids through the adapter's template, cut to fit the position limit."""
        room = self.max_positions - max_new_tokens if self.max_positions else None
        return self.template_for(adapter).encode_prompt(conv, self.tokenizer, max_len=room)

    def encode_text(self, text: str) -> list[int]:
        """Raw text (OpenAI `/v1/completions`): tokenizer's own special tokens, no template."""
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def stop_ids(self, adapter: str | None = None) -> list[int]:
        return self.template_for(adapter).stop_token_ids(self.tokenizer)

    # -- generation ----------------------------------------------------------------
    def generate(self, convs: list[Conversation], adapter: str | None = None,
                 options: GenerationOptions | None = None, batch_size: int = 8,
                 progress: bool = False) -> list[str]:
        """Answers for `convs` (each ends with a user turn), in the same order."""
        opts = (options or self.default_options(adapter)).validated()
        prompts = [self.encode(c, adapter, opts.max_new_tokens) for c in convs]
        done = self.complete(prompts, adapter, opts, batch_size=batch_size, progress=progress)
        return [c.text for c in done]

    def complete(self, prompts: list[list[int]], adapter: str | None = None,
                 options: GenerationOptions | None = None, batch_size: int = 8,
                 progress: bool = False, stop_ids: list[int] | None = None,
                 cancel: threading.Event | None = None) -> list[Completion]:
        """Batched generation from prompt ids: longest first, left padding, original order."""
        opts = (options or self.default_options(adapter)).validated()
        rules = StopRules(self.tokenizer, self.stop_ids(adapter) if stop_ids is None else stop_ids,
                          opts.stop, opts.ignore_eos)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[Completion | None] = [None] * len(prompts)
        bar = progress_bar(len(prompts), progress)
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + max(1, batch_size)]
            for i, c in zip(idx, self._run_batch([prompts[i] for i in idx], adapter, opts, rules, cancel)):
                out[i] = c
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def stream(self, conv: Conversation, adapter: str | None = None,
               options: GenerationOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces of one answer as they are generated. Closing the iterator stops it."""
        opts = (options or self.default_options(adapter)).validated()
        return iter(self.open_stream(self.encode(conv, adapter, opts.max_new_tokens), adapter, opts,
                                     cancel=cancel))

    def open_stream(self, prompt: list[int], adapter: str | None = None,
                    options: GenerationOptions | None = None, stop_ids: list[int] | None = None,
                    cancel: threading.Event | None = None) -> TokenStream:
        """Start generating in a background thread; iterate the result for text pieces and
        read `.completion` afterwards (finish reason, token counts)."""
        opts = (options or self.default_options(adapter)).validated()
        rules = StopRules(self.tokenizer, self.stop_ids(adapter) if stop_ids is None else stop_ids,
                          opts.stop, opts.ignore_eos)
        stream = TokenStream(rules, len(prompt), cancel)

        def work():
            try:
                done = self._run_batch([prompt], adapter, opts, rules, stream.cancel, streamer=stream)
                stream.finish(done[0])
            except BaseException as e:  # handed to the reading thread
                stream.fail(e)

        threading.Thread(target=work, daemon=True, name="zhlora-stream").start()
        return stream

    @contextlib.contextmanager
    def using(self, adapter: str | None = None):
        """Hold the model with `adapter` active (None = base) for custom decoding loops:
        takes the engine lock, switches the adapter, and runs under inference_mode."""
        with self._lock, self._adapter_active(adapter), torch.inference_mode():
            yield self.model

    # -- internals -----------------------------------------------------------------
    @contextlib.contextmanager
    def _adapter_active(self, adapter: str | None):
        self._check_adapter(adapter)
        with self._prefix_active(adapter):
            if not hasattr(self.model, "peft_config"):  # no LoRA adapter loaded
                yield
            elif adapter is None or adapter in self._prefixes:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(adapter)
                yield

    def _prefix_active(self, adapter: str | None):
        """The P-Tuning prefix of `adapter` in the model (none for LoRA adapters and the base)."""
        if not self._prefixes:
            return contextlib.nullcontext()
        from zhlora.models.chatglm.ptuning import prefix_active

        return prefix_active(self.model, self._prefixes.get(adapter))

    def _run_batch(self, rows: list[list[int]], adapter: str | None, opts: GenerationOptions,
                   rules: StopRules, cancel: threading.Event | None, streamer=None) -> list[Completion]:
        ids, mask = pad_rows(rows, pad_id(self.tokenizer), self.device)  # (B, T), (B, T)
        config = self._generation_config(opts, rules)
        criteria = generation_criteria(rules, ids.shape[1], cancel)
        with self.using(adapter):
            if opts.seed is not None:
                torch.manual_seed(opts.seed)
            seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       stopping_criteria=criteria, streamer=streamer)
        new = seqs[:, ids.shape[1]:].tolist()  # (B, new_tokens)
        cancelled = cancel is not None and cancel.is_set()
        return [rules.finish(row, len(p), opts.max_new_tokens, cancelled) for row, p in zip(new, rows)]

    def _generation_config(self, opts: GenerationOptions, rules: StopRules):
        from transformers import GenerationConfig

        sample = opts.temperature > 0
        kw = dict(max_new_tokens=opts.max_new_tokens, do_sample=sample,
                  pad_token_id=pad_id(self.tokenizer),
                  eos_token_id=None if opts.ignore_eos else (rules.stop_ids or None),
                  repetition_penalty=opts.repetition_penalty, use_cache=True)
        if sample:  # a fresh config: the checkpoint's own sampling defaults do not leak in
            kw.update(temperature=opts.temperature, top_p=opts.top_p, top_k=0)
        return GenerationConfig(**kw)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its end-of-text id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def pad_rows(rows: list[list[int]], pad: int, device, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, T) and attention_mask (B, T), padded on the left (generation) or the
    right (scoring: positions then run 0..len-1 in every row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, cols] = torch.tensor(r, dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def grow(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, show: bool, unit: str = "prompt"):
    """A tqdm bar on stderr, or a no-op when hidden; `bar.grow(n)` adds n to its total (work
    found on the way)."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    class _Bar(tqdm):
        def grow(self, n: int) -> None:
            self.total += n
            self.refresh()

    return _Bar(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)
