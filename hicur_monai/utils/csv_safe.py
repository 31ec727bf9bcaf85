"""CSV cells that a spreadsheet will not run as formulas (CSV / formula injection).

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by
Excel, LibreOffice and Google Sheets as a formula (``=cmd|' /C calc'!A0``,
``=HYPERLINK(...)``). Tables written from user-supplied text (patient tables, system names,
criteria, free-text notes) are passed through :func:`neutralize_formulas` before
``to_csv``: such a string is prefixed with a single quote, as the OWASP guidance on CSV
injection recommends (https://owasp.org/www-community/attacks/CSV_Injection). Numbers,
numeric columns and strings that are plain numbers (``-4``, ``+1.5e3``) are left as
they are, so the files still read back as numbers.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = ["FORMULA_PREFIXES", "neutralize_arrow_strings", "neutralize_cell", "neutralize_formulas",
           "restore_neutralized"]

#: first characters that make a spreadsheet treat a cell as a formula
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralize_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is a string a spreadsheet would run as a formula.

    Non-strings and strings that are plain numbers are returned unchanged.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def neutralize_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose string cells and column labels cannot start a formula.

    Only object / string columns are touched; numeric, boolean and datetime columns are
    returned as they are. The input frame is not modified.

    Args:
        df: the table about to be written with ``to_csv``.

    Returns:
        The neutralised copy.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"neutralize_formulas expects a pandas DataFrame, got {type(df).__name__}")
    out = df.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            out.isetitem(i, col.map(neutralize_cell))
    out.columns = [neutralize_cell(c) for c in out.columns]
    return out


def neutralize_arrow_strings(table: Any) -> Any:
    """A copy of a ``pyarrow.Table`` whose string cells cannot start a formula, reversibly.

    For tables that are also read back (the curation manifest's CSV): a cell that starts with a
    formula character (and is not a plain number) *or with a single quote* gets one ``'`` in
    front, so :func:`restore_neutralized` gives every original value back exactly.
    Vectorised with ``pyarrow.compute`` (no per-cell Python).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            risky = pc.match_substring_regex(col, r"^['=+\-@\t\r]")
            number = pc.match_substring_regex(col, r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
            quoted = pc.binary_join_element_wise("'", col, "")
            col = pc.if_else(pc.and_(risky, pc.invert(number)), quoted, col)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=table.schema)


def restore_neutralized(df: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`neutralize_arrow_strings` on a table read back from CSV as strings (one leading
    ``'`` removed from each string cell that has one)."""
    out = df.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            out.isetitem(i, col.map(lambda v: v[1:] if isinstance(v, str) and v.startswith("'") else v))
    return out
