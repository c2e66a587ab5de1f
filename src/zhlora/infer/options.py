"""Decoding settings of one request (`GenerationOptions`), shared by every front end."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from zhlora.errors import ZhloraError


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

    def copy(self) -> "GenerationOptions":
        return GenerationOptions(**asdict(self))
