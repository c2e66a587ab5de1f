"""One base model, many LoRA adapters: the generation engine every front end calls.

Public API (used by `zhlora chat / predict / serve / webui` and by GEC `eval`):

    from zhlora.infer.engine import Engine, GenerationOptions
    eng = Engine.load(model_dir, adapters={"gec": "/path/adapter"}, template=None,
                      dtype="auto", device=None, allow_bin=False, max_batch=8, max_loras=None,
                      quantization=None)
    eng.adapter_names                      # ["gec", ...]
    eng.generate(convs, adapter=None, options=None, batch_size=8, progress=False) -> list[str]
    eng.stream(conv, adapter=None, options=None) -> Iterator[str]     # text pieces as generated
    GenerationOptions(max_new_tokens=256, temperature=0.0, top_p=1.0, stop=[], seed=None,
                      repetition_penalty=1.0)          # temperature 0 => greedy

- `model_dir=None` takes the base from the first adapter's metadata (`base_model`).
- `adapter=None` is the base model; a name routes the request to that PEFT adapter. The base
  is loaded once; at most `max_loras` adapters are in memory (least recently used leave).
- A P-Tuning v2 checkpoint (ChatGLM) is an adapter too: its prefix encoder is put in the
  model for its steps, LoRA adapters off (`_adapter_active`, the scheduler's solo steps).
- Each adapter keeps its own chat template (its metadata `template`, else the family
  default; `template=` overrides all) and its own default `GenerationOptions` (metadata
  `generation`), used when `options` is None.
- Every generation goes through one scheduler (`scheduler.py`): requests of any adapter,
  from any thread, run together in one batch, joining and leaving at token boundaries.
  Greedy output does not depend on what shares the batch (`decoding.py`).

Lower level (used by the server): `encode(conv, adapter)`, `encode_text(text)`,
`complete(prompt_ids, ...) -> list[Completion]` (text, token counts, finish reason),
`open_stream(prompt_ids, ...)` (a `TokenStream` that can be cancelled), `submit(...)` (a
scheduler `Sequence` with a future), `load_adapter` / `unload_adapter` while serving, and
`using(adapter)`, a context that holds the model with that adapter active for a custom
decoding loop (GEC's constrained decoder); the scheduler waits meanwhile.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from zhlora.conversation import Conversation
from zhlora.errors import ZhloraError
from zhlora.infer.adapters import AdapterRecord, BaseModel
from zhlora.infer.batching import pad_id, pad_rows  # noqa: F401  (re-exported for old callers)
from zhlora.infer.options import GenerationOptions
from zhlora.infer.registry import AdapterRegistry
from zhlora.infer.scheduler import Scheduler, Sequence
from zhlora.infer.streaming import Completion, StopRules, TokenStream
from zhlora.progress import progress_bar

__all__ = ["Engine", "GenerationOptions", "Completion", "TokenStream"]


class Engine:
    """A loaded base model (optionally wrapped by PEFT with several adapters) + tokenizer."""

    def __init__(self, model, tokenizer, base: AdapterRecord, adapters: list[AdapterRecord],
                 base_dir: Path | None = None, base_model: BaseModel | None = None,
                 template: str | None = None, max_batch: int = 8, max_loras: int | None = None,
                 prefixes: dict | None = None):
        self.tokenizer = tokenizer
        self.base_dir = base_dir
        self.adapters = AdapterRegistry(model.eval(), tokenizer, base_model, base, adapters, template, max_loras)
        self.lock = threading.RLock()
        self.prefixes = dict(prefixes or {})  # P-Tuning v2 adapter name -> prefix encoder
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.scheduler = Scheduler(self, max_batch)

    # -- loading -------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path | None = None, adapters: dict[str, str | Path] | None = None,
             template: str | None = None, dtype: str = "auto", device: str | None = None,
             allow_bin: bool = False, max_batch: int = 8, max_loras: int | None = None,
             quantization: str | None = None) -> "Engine":
        """Load the base once and plug in the adapters (name -> PEFT adapter folder); with
        `max_loras`, only the first that many are loaded now, the others on first use;
        `quantization` 4bit/8bit loads the base with bitsandbytes (zhlora.models.quant)."""
        from zhlora.infer.loading import load_engine_parts

        parts = load_engine_parts(model_dir, adapters or {}, template, dtype, device, allow_bin, max_loras,
                                  quantization)
        return cls(parts.model, parts.tokenizer, parts.base_record, parts.adapters, base_dir=parts.base.folder,
                   base_model=parts.base, template=template, max_batch=max_batch, max_loras=max_loras,
                   prefixes=parts.prefixes)

    @classmethod
    def from_model(cls, model, tokenizer, template: str, **kw) -> "Engine":
        """An engine over an already loaded model without adapters (benchmarks, merged models)."""
        from zhlora.infer.adapters import AdapterRecord
        from zhlora.templates import get_template

        return cls(model, tokenizer, AdapterRecord(None, None, template=get_template(template)), [], **kw)

    # -- introspection -------------------------------------------------------------
    @property
    def model(self):
        return self.adapters.model

    @property
    def adapter_names(self) -> list[str]:
        return self.adapters.names

    def record(self, adapter: str | None) -> AdapterRecord:
        """The adapter's record (None = the base): folder, metadata, template, defaults."""
        return self.adapters.get(adapter)

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
        """Generation from prompt ids, at most `batch_size` of them in flight at once (with
        whatever else the scheduler runs), answers in the original order."""
        opts = (options or self.default_options(adapter)).validated()
        bar = progress_bar(len(prompts), progress)
        seqs: list[Sequence] = []
        pending: set = set()
        for prompt in prompts:
            if len(pending) >= max(1, batch_size):
                pending = self._wait_one(pending, bar)
            seqs.append(self.submit(prompt, adapter, opts, stop_ids, cancel=cancel))
            pending.add(seqs[-1].future)
        while pending:
            pending = self._wait_one(pending, bar)
        bar.close()
        out = [s.future.result() for s in seqs]
        if stop_ids is None:  # a chat answer: drop the text the template writes before the content
            for c in out:
                c.text = self.template_for(adapter).answer_text(c.text)
        return out

    @staticmethod
    def _wait_one(pending: set, bar) -> set:
        done, rest = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        bar.update(len(done))
        return rest

    def submit(self, prompt: list[int], adapter: str | None, options: GenerationOptions,
               stop_ids: list[int] | None = None, sink=None, cancel: threading.Event | None = None) -> Sequence:
        """Queue one prompt for the scheduler -> its `Sequence` (`.future` -> Completion)."""
        seq = Sequence(prompt, adapter, options.validated(), self._rules(adapter, options, stop_ids), sink)
        if cancel is not None:
            seq.cancel = cancel
        if sink is not None:
            seq.cancel = sink.cancel
        return self.scheduler.submit(seq)

    def _rules(self, adapter, opts: GenerationOptions, stop_ids) -> StopRules:
        ids = self.stop_ids(adapter) if stop_ids is None else stop_ids
        return StopRules(self.tokenizer, ids, opts.stop, opts.ignore_eos)

    def stream(self, conv: Conversation, adapter: str | None = None,
               options: GenerationOptions | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Text pieces of one answer as they are generated. Closing the iterator stops it."""
        opts = (options or self.default_options(adapter)).validated()
        return iter(self.open_stream(self.encode(conv, adapter, opts.max_new_tokens), adapter, opts,
                                     cancel=cancel))

    def open_stream(self, prompt: list[int], adapter: str | None = None,
                    options: GenerationOptions | None = None, stop_ids: list[int] | None = None,
                    cancel: threading.Event | None = None, stream_cls=TokenStream) -> TokenStream:
        """Start generating; iterate the result for text pieces and read `.completion`
        afterwards (finish reason, token counts)."""
        opts = (options or self.default_options(adapter)).validated()
        stream = stream_cls(self._rules(adapter, opts, stop_ids), len(prompt), cancel)
        self.submit(prompt, adapter, opts, stop_ids, sink=stream)
        return stream

    # -- adapters while serving -------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> AdapterRecord:
        """Add an adapter from its folder (checked against the base); nothing changes on error."""
        with self.lock:
            return self.adapters.add(name, path, busy=self.scheduler.busy_adapters())

    def unload_adapter(self, name: str, timeout: float = 600.0) -> None:
        """Refuse new requests for `name`, wait for its requests to finish, free its weights."""
        with self.lock:
            self.adapters.forget(name)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:  # between scheduler steps: every request is queued or running
                if not self.scheduler.in_use(name) or time.monotonic() > deadline:
                    self.adapters.drop(name)
                    return
            time.sleep(0.02)

    @contextlib.contextmanager
    def using(self, adapter: str | None = None):
        """Hold the model with `adapter` active (None = base) for custom decoding loops:
        takes the engine lock, switches the adapter, and runs under inference_mode."""
        with self.lock, self._adapter_active(adapter), torch.inference_mode():
            yield self.model

    @contextlib.contextmanager
    def _adapter_active(self, adapter: str | None):
        self.record(adapter)
        with self.prefix_active(adapter):
            model = self.model
            if not hasattr(model, "peft_config"):
                yield
            elif adapter is None or adapter in self.prefixes:
                with model.disable_adapter():
                    yield
            else:
                if not self.adapters.make_resident(adapter, busy=self.scheduler.busy_adapters()):
                    raise ZhloraError(f"adapter {adapter!r} cannot be loaded now: every --max-loras slot is busy")
                model.set_adapter(adapter)
                yield

    def prefix_active(self, adapter: str | None):
        """The P-Tuning prefix of `adapter` in the model (none for LoRA adapters and the base)."""
        if not self.prefixes:
            return contextlib.nullcontext()
        from zhlora.models.chatglm.ptuning import prefix_active

        return prefix_active(self.model, self.prefixes.get(adapter))
