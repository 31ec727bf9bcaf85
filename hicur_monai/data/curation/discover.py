"""Streaming discovery of every file under the curation sources.

The walk is depth-first with each folder's entries sorted, so the order is the same on
every run and every machine (shards and resume rely on it); it holds one folder listing
per depth level, never the whole tree. Folder symlinks are followed once: a link back to
a folder on the current path is a ``directory_loop``, a second path to a folder already
walked is a ``symlink_alias``; both become rejected rows, like unreadable folders and
special files, so nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Found", "discover", "source_prefixes", "in_shard", "parse_shard"]


@dataclass(frozen=True)
class Found:
    """One discovered path.

    Attributes:
        path: absolute path (never written to outputs).
        rel: POSIX path relative to the source's parent folder (``<source name>/...``).
        problem: a reason code when the path cannot be processed (then it is not a regular file).
        detail: what the problem is, without the absolute path.
    """

    path: str
    rel: str
    problem: str | None = None
    detail: str = ""


def source_prefixes(sources: Sequence[str | os.PathLike]) -> list[tuple[Path, str]]:
    """``(absolute source, prefix)`` pairs; the prefix is the source's name, made unique."""
    out: list[tuple[Path, str]] = []
    seen: dict[str, int] = {}
    for s in sources:
        p = Path(s).absolute()
        name = p.name or "root"
        if name in seen:
            seen[name] += 1
            name = f"{name}~{seen[name]}"
        else:
            seen[name] = 0
        out.append((p, name))
    return out


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``; ``None`` -> ``(0, 1)``.

    Raises:
        ValueError: malformed, or ``i`` not in ``[0, n)``.
    """
    if not spec:
        return 0, 1
    try:
        i_s, n_s = str(spec).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must be 'i/n' with integers (0 <= i < n), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard must satisfy 0 <= i < n, got {spec!r}")
    return i, n


def in_shard(rel: str, shard: tuple[int, int]) -> bool:
    """Deterministic assignment of a relative path to one of ``n`` shards (stable hash, not ``hash()``)."""
    i, n = shard
    if n == 1:
        return True
    h = int.from_bytes(hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")
    return h % n == i


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def discover(sources: Sequence[str | os.PathLike]) -> Iterator[Found]:
    """Yield every file (and every problem path) under ``sources`` in a deterministic order.

    Raises:
        FileNotFoundError: a source does not exist (the run has nothing to account for).
    """
    walked: set[tuple[int, int]] = set()  # folders walked so far (a few bytes per folder)
    for root, prefix in source_prefixes(sources):
        if not root.exists():
            raise FileNotFoundError(f"{root}: source not found")
        if root.is_file():
            yield from _classify_file(str(root), prefix)
            continue
        yield from _walk(str(root), prefix, walked, ())


def _classify_file(path: str, rel: str) -> Iterator[Found]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield Found(path, rel, "broken_symlink", "the link target does not exist")
        return
    except PermissionError:
        yield Found(path, rel, "permission_denied", "cannot stat the file")
        return
    except OSError as err:
        if err.errno == 40:  # ELOOP: a file symlink loop
            yield Found(path, rel, "directory_loop", "symbolic link loop")
        else:
            yield Found(path, rel, "permission_denied", f"cannot stat the file ({err.strerror})")
        return
    if not stat.S_ISREG(st.st_mode):
        yield Found(path, rel, "not_a_regular_file", "socket, FIFO or device")
        return
    if not os.access(path, os.R_OK):
        yield Found(path, rel, "permission_denied", "no read permission")
        return
    yield Found(path, rel)


def _walk(path: str, rel: str, walked: set[tuple[int, int]], ancestors: tuple[tuple[int, int], ...]) -> Iterator[Found]:
    try:
        st = os.stat(path)
    except OSError as err:
        yield Found(path, rel, "permission_denied", f"cannot stat the folder ({err.strerror})")
        return
    key = _key(st)
    if key in ancestors:
        yield Found(path, rel, "directory_loop", "link to a folder that contains it; not followed")
        return
    if key in walked:
        yield Found(path, rel, "symlink_alias", "folder already walked through another path")
        return
    walked.add(key)
    try:
        if not os.access(path, os.R_OK | os.X_OK):
            raise PermissionError
        with os.scandir(path) as it:
            entries = sorted((e.name, e.path, e.is_dir(follow_symlinks=True), e.is_symlink()) for e in it)
    except PermissionError:
        yield Found(path, rel, "permission_denied", "cannot list the folder")
        return
    except OSError as err:
        yield Found(path, rel, "permission_denied", f"cannot list the folder ({err.strerror})")
        return
    inner = ancestors + (key,)
    for name, epath, is_dir, _is_link in entries:
        erel = f"{rel}/{name}"
        if is_dir:
            yield from _walk(epath, erel, walked, inner)
        else:
            yield from _classify_file(epath, erel)
