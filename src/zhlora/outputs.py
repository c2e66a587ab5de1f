"""Output folders that are never half-written.

Everything zhlora writes as a result (adapters, merged models, reports) is built in a
temporary sibling folder, flushed to disk (fsync) and renamed into place only when complete,
so that neither a killed process nor a crash of the machine leaves a folder that looks done
but holds missing or empty files. An existing output is refused unless the caller says
`overwrite=True`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from zhlora.errors import ZhloraError


def check_output_free(path: str | os.PathLike, overwrite: bool) -> Path:
    """Raise if `path` exists and `overwrite` is false. Returns the path."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise ZhloraError(
            f"output {out} already exists; choose another output or pass overwrite "
            "(--overwrite / overwrite=true) to replace it")
    return out


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success rename it to `path`.

    On any exception (or KeyboardInterrupt) the temporary folder is removed and `path` is
    left as it was. A process killed with SIGKILL leaves only a `.name.tmp-*` folder, never
    a partial `path`.
    """
    out = check_output_free(path, overwrite).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_tree(tmp)
    replace_dir(tmp, out)
    _fsync_path(out.parent)


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (cheap for files already synced)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():     # some systems (Windows) cannot open a folder to sync it
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an old `dst` (already allowed)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file in the same folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
