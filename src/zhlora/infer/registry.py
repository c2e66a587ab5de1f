"""Which adapters an engine serves, and which of them are in memory.

Every known adapter has a record (`adapters.py`); at most `max_loras` of them are loaded
into the PEFT model at once. A request for one that is not loaded loads it from its folder,
first unloading the least recently used adapter that no running request needs. Adapters can
be added and removed while serving (`add`, `remove`); a bad folder, an adapter of another
base, or a duplicate name is refused before anything changes.
"""
from __future__ import annotations

import collections
import warnings
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.infer.adapters import AdapterRecord, BaseModel, check_adapter_name, read_adapter
from zhlora.infer.loading import load_adapter_weights
from zhlora.runinfo import adapter_has_tokenizer


class AdapterRegistry:
    def __init__(self, model, tokenizer, base: BaseModel | None, base_rec: AdapterRecord,
                 records: list[AdapterRecord], template: str | None = None, max_loras: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.base = base
        self.template = template
        self.max_loras = max_loras
        self.records: dict[str | None, AdapterRecord] = {None: base_rec, **{r.name: r for r in records}}
        loaded = set(getattr(model, "peft_config", {}) or {})
        self.resident = collections.OrderedDict((r.name, None) for r in records if r.name in loaded)

    @property
    def names(self) -> list[str]:
        return [n for n in self.records if n is not None]

    def get(self, name: str | None) -> AdapterRecord:
        if name not in self.records:
            known = ", ".join(self.names) or "none loaded"
            raise ZhloraError(f"unknown adapter {name!r}; loaded adapters: {known} (None = the base model)")
        return self.records[name]

    # -- residency (called with the engine lock held) --------------------------------
    def make_resident(self, name: str | None, busy: set) -> bool:
        """Load `name` if it is not in memory; -> False when every loaded adapter is busy."""
        if name is not None and self.records[name].is_ptuning:
            return True      # its prefix encoder stays in memory (a few MB); PEFT does not hold it
        if name is None or name in self.resident:
            if name is not None:
                self.resident.move_to_end(name)
            return True
        idle = [n for n in self.resident if n not in busy]
        if self.max_loras and len(self.resident) >= self.max_loras and not idle:
            return False
        self._load_weights(self.records[name])
        while self.max_loras and len(self.resident) > self.max_loras and idle:
            self._drop_weights(idle.pop(0))
        return True

    def _load_weights(self, rec: AdapterRecord) -> None:
        """Plug `rec` in, then make it PEFT's active adapter (the active one must exist)."""
        peft = self.model if hasattr(self.model, "peft_config") else None
        if peft is not None and rec.name in peft.peft_config:   # an orphan of the same name
            self._delete(rec.name)
        base = peft.get_base_model() if peft is not None else self.model
        try:
            self.model = load_adapter_weights(peft, base, rec).eval()
        except ZhloraError:
            if peft is not None and rec.name in peft.peft_config:  # a half-made adapter goes again
                self._delete(rec.name)
            raise
        self.model.set_adapter(rec.name)
        self.resident[rec.name] = None
        for orphan in set(self.model.peft_config) - set(self.resident):
            self._delete(orphan)

    def _drop_weights(self, name: str) -> None:
        """Free an adapter's weights. PEFT cannot hold zero adapters, so the last one stays
        (unreachable, an orphan) until another is loaded."""
        self.resident.pop(name, None)
        peft = self.model if hasattr(self.model, "peft_config") else None
        if peft is None or name not in peft.peft_config or len(peft.peft_config) == 1:
            return
        self._delete(name)
        if peft.active_adapter not in peft.peft_config:
            peft.set_adapter(next(iter(self.resident), next(iter(peft.peft_config))))

    def _delete(self, name: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.delete_adapter(name)

    # -- adding and removing (server endpoints) ---------------------------------------
    def add(self, name: str, path: str | Path, busy: set) -> AdapterRecord:
        """Register and load a new adapter; on any error nothing changes."""
        check_adapter_name(name, "lora_name")
        if name in self.records:
            raise ZhloraError(f"an adapter named {name!r} is already loaded; unload it first or choose another name")
        rec = read_adapter(name, path, "lora_name").bound_to(self.base, self.template)
        self._check_vocab(rec)
        self.records[name] = rec
        try:
            if not self.make_resident(name, busy):
                raise ZhloraError(f"cannot load {name!r}: all {self.max_loras} adapter slots (--max-loras) "
                                  "are in use by running requests; try again shortly")
        except ZhloraError:
            del self.records[name]
            raise
        return rec

    def forget(self, name: str) -> AdapterRecord:
        """Unregister `name` (new requests for it are refused); its weights stay until `drop`."""
        check = self.get(name)
        if name is None:
            raise ZhloraError("the base model cannot be unloaded")
        del self.records[name]
        return check

    def drop(self, name: str) -> None:
        self._drop_weights(name)

    def _check_vocab(self, rec: AdapterRecord) -> None:
        rows = self.model.get_input_embeddings().num_embeddings
        want = (rec.meta.get("resized_vocab") or {}).get("to")
        own = adapter_has_tokenizer(rec.path)
        if (want and want != rows) or (own and not want):
            raise ZhloraError(f"{rec.path}: this adapter brings its own vocabulary "
                              f"({want or 'own tokenizer'}), the served model has {rows} tokens; "
                              "serve it from a separate process")
