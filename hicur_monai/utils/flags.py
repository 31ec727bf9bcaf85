"""Yes/no settings as bundle configs and command lines give them, parsed strictly."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_flag", "is_unset"]


def as_flag(value: Any, name: str) -> bool:
    """A bundle flag: a bool, or ``"true"/"false"`` (any case), ``"1"/"0"``, ``"yes"/"no"`` as the command line
    gives them.

    Raises:
        ValueError: any other value (``bool("false")`` would be true).
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def is_unset(value: Any) -> bool:
    """A bundle setting left empty: ``None``, ``""``, or ``"None"`` / ``"null"`` as the command line gives them."""
    return value is None or (isinstance(value, str) and value in ("", "None", "null"))
