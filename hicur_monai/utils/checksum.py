"""SHA-256 of files handed from one stage to the next, and the check that they have not changed.

A checkpoint that another stage reads (the HCMAE encoder a vision-language model was trained
on, a model folder a later step starts from) is recorded with :func:`sha256_file` when it is
used; :func:`check_recorded_checksum` compares the file on disk with that record when it is
used again and warns loudly (``warnings.warn`` and the logger) when it changed, so a re-trained
upstream model never silently changes a downstream model's outputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

__all__ = ["sha256_file", "check_recorded_checksum"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (memory independent of the file size).

    Raises:
        FileNotFoundError: the file does not exist (names it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file to checksum")
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_recorded_checksum(path: str | os.PathLike, recorded: str | None, what: str) -> bool:
    """Compare ``path``'s SHA-256 with the one ``recorded`` when it was first used.

    Args:
        path: the file on disk now.
        recorded: the hex digest recorded earlier (``None`` or empty: nothing recorded, nothing to check).
        what: what the file is, for the message (e.g. ``"HCMAE ViT encoder of runs/vl/step2/model"``).

    Returns:
        True when the file matches (or nothing was recorded); False after warning that it changed.
    """
    if not recorded:
        return True
    actual = sha256_file(path)
    if actual == recorded:
        return True
    msg = (f"{what}: {path} has CHANGED since it was recorded (sha256 {actual[:12]}..., recorded "
           f"{recorded[:12]}...): outputs will differ from the ones it was trained and validated with; "
           "retrain the dependent model or restore the original file")
    logger.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=2)
    return False
