"""User-facing errors: each says what was wrong, where, and what to do.

The CLI catches `ZhloraError` and prints its message without a traceback.
"""
from __future__ import annotations


class ZhloraError(Exception):
    """An error a user can act on. The message must name the place (file:line, key, shape)
    and the fix."""


class DataError(ZhloraError):
    """Problems found in input data. `problems` holds `file:line: reason` strings."""

    def __init__(self, problems: list[str], total: int | None = None, hint: str = ""):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        shown = problems[:20]
        lines = [f"{self.total} problem(s) in the input data:"] + [f"  {p}" for p in shown]
        if self.total > len(shown):
            lines.append(f"  ... and {self.total - len(shown)} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class ConfigError(ZhloraError):
    """A bad recipe key or value."""


def require_file(path, what: str = "file"):
    """-> Path, or a ZhloraError saying whether the path is missing or is a folder."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ZhloraError(f"{p}: is a folder; pass the {what} itself (a file inside it)")
    if not p.is_file():
        raise ZhloraError(f"{p}: no such file; check the path of the {what}")
    return p
