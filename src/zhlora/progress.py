"""Progress bars on stderr (tqdm), or a no-op when hidden."""
from __future__ import annotations

import sys


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
