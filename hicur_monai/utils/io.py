"""File output that never leaves a half-written file behind.

Every result file, checkpoint and manifest of the toolkit is written through these helpers:
the content goes to a temporary file in the same folder, is flushed and fsync'ed, then
renamed over the target (atomic on POSIX), so a crash leaves either the old file or the
new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write_chunks",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_torch",
]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, not per write (threads)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success, rename it to ``path``.

    Args:
        path: the final file path; its parent folder is created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (ignored for binary mode).
        fsync: flush the data to disk before the rename. Without it the rename is still
            atomic for other processes and survives a killed process, but not a power cut;
            bulk writers (curation) skip it per file and ``os.sync()`` before each commit.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_chunks(path: str | os.PathLike, chunks: Sequence[Any]) -> None:
    """Write ``chunks`` (bytes / C-contiguous arrays) to ``path`` atomically, without fsync.

    Same guarantee as :func:`atomic_open` with ``fsync=False`` (a temporary file beside the
    target, renamed over it; a kill leaves the old file or the new one), with the least work per
    file, for bulk writers (curation writes one per image): an unbuffered descriptor, a temporary
    name unique to the process (``.<name>.<pid>.tmp``: no random names, so a process must write
    one file at a time), the mode ``open`` gives (no chmod), and the parent folder must exist.
    Temporary files a kill left behind are the caller's to remove (curation's ``--resume`` does).
    """
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        views = [memoryview(chunk).cast("B") for chunk in chunks]
        done = os.writev(fd, views)  # one system call for the header and the pixels
        for view in views:  # the rest, if the kernel wrote less
            if done >= len(view):
                done -= len(view)
                continue
            view, done = view[done:], 0
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (the one checkpoint writer of the toolkit)."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)
