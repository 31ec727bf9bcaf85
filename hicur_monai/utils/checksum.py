"""File checksums for checkpoint hand-offs: record a source file's SHA-256, warn when it changed since.

A model trained from another stage's checkpoint (the segmentation network from the HCMAE
ConvNeXt, the vision-language model from the HCMAE ViT) records the source file's
:func:`sha256_file` when it is built; whoever loads the trained model later calls
:func:`check_recorded_checksum`, which warns (logged and as a Python warning, so it shows in
the command's output) when the file at that path is no longer the one the model was trained from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

__all__ = ["sha256_file", "sha256_tree", "check_recorded_checksum", "SourceChangedWarning"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class SourceChangedWarning(UserWarning):
    """A checkpoint hand-off's source file differs from the one recorded at training time."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks).

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (cannot compute its checksum)")
    digest = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike, skip_hidden: bool = False) -> str:
    """Hex SHA-256 of a file, or of a folder: the relative names and SHA-256 of every file in it, sorted.

    Args:
        path: a file or a folder (e.g. a saved model folder).
        skip_hidden: leave out files whose name starts with ``.`` (folders only).
    """
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    digest = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not (skip_hidden and q.name.startswith("."))):
        digest.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return digest.hexdigest()


def check_recorded_checksum(path: str | os.PathLike | None, recorded: str | None, what: str) -> None:
    """Warn when the file at ``path`` is gone or its SHA-256 is no longer ``recorded``.

    Nothing happens when nothing was recorded (``path`` or ``recorded`` empty) or the file is unchanged.

    Args:
        path: the source file as recorded at training time.
        recorded: its hex SHA-256 at training time.
        what: what the file is, for the message (e.g. ``"HCMAE ConvNeXt encoder (encoder_weights)"``).
    """
    if not path or not recorded:
        return
    p = Path(path)
    if not p.is_file():
        msg = (f"{what}: {p} no longer exists (recorded sha256 {recorded[:16]}...); the trained model keeps the "
               "weights it was trained from, but that source can no longer be checked or reproduced")
    else:
        current = sha256_file(p)
        if current == recorded:
            return
        msg = (f"{what}: {p} has changed since this model was trained (sha256 then {recorded[:16]}..., now "
               f"{current[:16]}...); the trained model keeps the weights it was trained from: "
               "retrain to use the new file")
    log.warning(msg)
    warnings.warn(msg, SourceChangedWarning, stacklevel=2)
