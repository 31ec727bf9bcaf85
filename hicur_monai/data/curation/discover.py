"""Streaming discovery of every file under the curation sources.

The walk is depth-first with each folder's entries sorted, so the order is the same on
every run and every machine (shards and resume rely on it); it holds one folder listing
per depth level, never the whole tree. Folder symlinks are followed once: a link back to
a folder on the current path is a ``directory_loop``, a second path to a folder already
walked is a ``symlink_alias``; both become rejected rows, like unreadable folders and
special files, so nothing is skipped silently. Every entry is judged on its own: a file
symlink loop (``symlink_loop``), a dangling link or an entry that cannot be examined is a
row of its own while the rest of its folder is walked. Links whose target lies outside
their source are not followed unless asked (``outside_source``). Names are kept as
``os.scandir`` gives them: bytes that are not valid UTF-8 as surrogate escapes
(``os.fsencode`` gives the bytes back; the manifest stores them losslessly).
"""

from __future__ import annotations

import errno
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


@dataclass
class _Walk:
    """State of one source's walk: folders walked so far (shared by all sources), the source's
    resolved location, and whether links leaving it are followed."""

    walked: set[tuple[int, int]]
    root_real: str
    follow_external: bool


def discover(sources: Sequence[str | os.PathLike], follow_external_links: bool = False) -> Iterator[Found]:
    """Yield every file (and every problem path) under ``sources`` in a deterministic order.

    Each folder entry is judged on its own: a symbolic-link loop, a dangling link, a link that
    leaves its source or an entry that cannot be examined becomes that entry's rejected row,
    and the rest of the folder is walked as usual.

    Args:
        sources: folders or files.
        follow_external_links: follow symbolic links whose target lies outside their source
            (default: an ``outside_source`` row, not followed).

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
        yield from _walk(str(root), prefix, _Walk(walked, os.path.realpath(root), follow_external_links), ())


def _stat_problem(path: str, rel: str, err: OSError, what: str) -> Found:
    """The row of an entry whose ``stat`` failed, by the error's number."""
    if err.errno == errno.ELOOP:
        return Found(path, rel, "symlink_loop", "symbolic link loop (the links lead back to themselves)")
    if err.errno == errno.ENOENT:
        return Found(path, rel, "broken_symlink", "the link target does not exist")
    if err.errno in (errno.EACCES, errno.EPERM):
        return Found(path, rel, "permission_denied", f"cannot stat the {what}")
    return Found(path, rel, "unreadable_entry", f"cannot stat the {what} ({err.strerror})")


def _classify_file(path: str, rel: str) -> Iterator[Found]:
    try:
        st = os.stat(path)
    except OSError as err:
        yield _stat_problem(path, rel, err, "file")
        return
    if not stat.S_ISREG(st.st_mode):
        yield Found(path, rel, "not_a_regular_file", "socket, FIFO or device")
        return
    if not os.access(path, os.R_OK):
        yield Found(path, rel, "permission_denied", "no read permission")
        return
    yield Found(path, rel)


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _entry(path: str, rel: str, is_link: bool, ctx: _Walk, inner: tuple[tuple[int, int], ...]) -> Iterator[Found]:
    """One folder entry: a link is examined first (loop, dangling, outside the source), then walked or classified."""
    if not is_link:
        yield from _classify_file(path, rel)
        return
    try:
        st = os.stat(path)
    except OSError as err:
        yield _stat_problem(path, rel, err, "link target")
        return
    if not ctx.follow_external and not _inside(os.path.realpath(path), ctx.root_real):
        yield Found(path, rel, "outside_source",
                    "symbolic link to a location outside the source; not followed (see --follow-external-links)")
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _walk(path, rel, ctx, inner)
    else:
        yield from _classify_file(path, rel)


def _list(path: str) -> list[tuple[str, str, bool, bool]]:
    """``(name, path, is_dir, is_link)`` of a folder's entries, sorted; ``is_dir`` without following links.

    Both come from the entry's type in the listing (no ``stat`` call on most file systems); an
    entry whose type cannot be read is treated as a file and judged by :func:`_classify_file`.
    """
    out = []
    with os.scandir(path) as it:
        for e in it:
            try:
                is_link = e.is_symlink()
                is_dir = not is_link and e.is_dir(follow_symlinks=False)
            except OSError:
                is_link = is_dir = False
            out.append((e.name, e.path, is_dir, is_link))
    out.sort()
    return out


def _walk(path: str, rel: str, ctx: _Walk, ancestors: tuple[tuple[int, int], ...]) -> Iterator[Found]:
    try:
        st = os.stat(path)
    except OSError as err:
        yield _stat_problem(path, rel, err, "folder")
        return
    key = _key(st)
    if key in ancestors:
        yield Found(path, rel, "directory_loop", "link to a folder that contains it; not followed")
        return
    if key in ctx.walked:
        yield Found(path, rel, "symlink_alias", "folder already walked through another path")
        return
    ctx.walked.add(key)
    try:
        if not os.access(path, os.R_OK | os.X_OK):
            raise PermissionError
        entries = _list(path)
    except PermissionError:
        yield Found(path, rel, "permission_denied", "cannot list the folder")
        return
    except OSError as err:
        yield Found(path, rel, "permission_denied", f"cannot list the folder ({err.strerror})")
        return
    inner = ancestors + (key,)
    for name, epath, is_dir, is_link in entries:
        erel = f"{rel}/{name}"
        if is_dir:
            yield from _walk(epath, erel, ctx, inner)
        else:
            yield from _entry(epath, erel, is_link, ctx, inner)
