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
import threading
from pathlib import Path
from typing import Iterator

import torch

from zhlora.data.conversation import Conversation
from zhlora.errors import ZhloraError
from zhlora.infer.adapters import AdapterRecord
from zhlora.infer.batching import pad_id, pad_rows
from zhlora.infer.options import GenerationOptions
from zhlora.infer.streaming import Completion, StopRules, TokenStream, generation_criteria
from zhlora.progress import progress_bar

__all__ = ["Engine", "GenerationOptions", "Completion", "TokenStream"]


class Engine:
    """A loaded base model (optionally wrapped by PEFT with several adapters) + tokenizer."""

    def __init__(self, model, tokenizer, base: AdapterRecord, adapters: list[AdapterRecord],
                 base_dir: Path | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base_dir = base_dir
        self._records: dict[str | None, AdapterRecord] = {None: base, **{a.name: a for a in adapters}}
        self._lock = threading.RLock()
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    # -- loading -------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, adapters: dict[str, str | Path] | None = None,
             template: str | None = None, dtype: str = "auto", device: str | None = None,
             allow_bin: bool = False) -> "Engine":
        """Load the base once and plug in every adapter (name -> PEFT adapter folder)."""
        from zhlora.infer.loading import load_engine_parts

        parts = load_engine_parts(model_dir, adapters or {}, template, dtype, device, allow_bin)
        return cls(parts.model, parts.tokenizer, parts.base_record, parts.adapters, base_dir=parts.base.folder)

    # -- introspection -------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return [n for n in self._records if n is not None]

    def record(self, adapter: str | None) -> AdapterRecord:
        """The adapter's record (None = the base): folder, metadata, template, defaults."""
        if adapter not in self._records:
            known = ", ".join(self.adapter_names) or "none loaded"
            raise ZhloraError(f"unknown adapter {adapter!r}; loaded adapters: {known} "
                              "(None = the base model)")
        return self._records[adapter]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def template_for(self, adapter: str | None):
        return self.record(adapter).template

    def default_options(self, adapter: str | None = None) -> GenerationOptions:
        """The adapter's generation defaults (metadata `generation`), else the built-in ones."""
        return self.record(adapter).defaults.copy()

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
        self.record(adapter)
        if len(self._records) == 1:
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

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
