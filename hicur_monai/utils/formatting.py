"""Formatting of statistical results for tables and reports (one convention everywhere)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_p"]


def format_p(p: Any, threshold: float = 0.001, digits: int = 3) -> str:
    """A p-value as text: ``<0.001`` below ``threshold``, else rounded (``0.042``); ``–`` if undefined.

    Never prints ``0.000``: a p-value is never 0, only smaller than what the table shows.
    """
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    if v < threshold:
        return f"<{threshold:g}"
    return f"{v:.{digits}f}"
