"""The 37-column NPC prognosis table: declared schema, loader, validation, endpoints.

:func:`load_clinical_table` reads a CSV or XLSX with the columns of the seed's example
prognosis table (or a user's own names, through ``column_map``), normalises every value
according to :data:`SCHEMA` ("10 months" / "10 mo" / "1.5 years" to months, Yes/No variants,
"N/A" or blank to missing, dates, stage strings in their common spellings), validates
each row (unknown categories, impossible times, death after last follow-up, an event flag
without its time, overall stage inconsistent with T and N, "EBV > 4000" inconsistent with
EBV) and returns a :class:`ClinicalTable`: a typed DataFrame keyed by short column keys plus
the list of row-level :class:`Problem` s. Nothing is silently coerced: a value that cannot be
read becomes missing *and* is reported.

Modes: ``"strict"`` raises :class:`ClinicalTableError` on any problem; ``"flag"`` keeps every
row and marks the ones with problems (column ``problems``); ``"drop"`` removes rows with
problems and says how many and why.

The medical record number never leaves the loader: it is replaced by a salted pseudonym
(``patient_id``, HMAC-SHA256). Endpoints are derived explicitly by :func:`endpoint_frame`.
Covariates for models come from :func:`design_matrix`, which knows the derived encodings
(``age_per10``, ``log10_ebv`` ...) and :func:`check_collinearity` warns when both a stage and
its parts, or the EBV flag and EBV itself, are fed to one model.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "ColumnSpec",
    "SCHEMA",
    "SEED_COLUMNS",
    "Problem",
    "ClinicalTable",
    "ClinicalTableError",
    "Endpoint",
    "ENDPOINTS",
    "DEFAULT_COVARIATES",
    "DERIVED_COVARIATES",
    "COLLINEAR_GROUPS",
    "load_clinical_table",
    "normalise_months",
    "normalise_yes_no",
    "normalise_t_stage",
    "normalise_n_stage",
    "normalise_overall_stage",
    "ajcc7_overall_stage",
    "pseudonymise",
    "endpoint_frame",
    "design_matrix",
    "check_collinearity",
]

logger = logging.getLogger(__name__)

MISSING_TOKENS = frozenset({"", "n/a", "na", "nan", "none", "null", "-", "--", "nil", "not available", "missing"})


@dataclass(frozen=True)
class ColumnSpec:
    """One declared column of the prognosis table.

    Attributes:
        key: short snake_case name used in the typed DataFrame.
        name: the column header as in the seed's example table.
        kind: ``id``, ``text``, ``date``, ``int``, ``float``, ``yes_no``, ``months``,
            ``category``, ``t_stage``, ``n_stage``, ``overall_stage``, ``tesla``.
        allowed: allowed canonical values (categories) or ``(min, max)`` for numbers.
        unit: unit of the normalised value.
        required: whether a missing value is a problem.
        description: what the column holds.
    """

    key: str
    name: str
    kind: str
    allowed: tuple[Any, ...] | None = None
    unit: str | None = None
    required: bool = False
    description: str = ""


_REGRESSION = ("Complete Regression", "Partial Regression", "No Regression", "Progression")

SCHEMA: tuple[ColumnSpec, ...] = (
    ColumnSpec("filename", "Filename", "text", description="image file or folder name"),
    ColumnSpec("mrn", "Medical Record Number", "id", required=True,
               description="hospital record number; replaced by a salted pseudonym on load"),
    ColumnSpec("study_id", "Image Number", "text", required=True, description="imaging study id"),
    ColumnSpec("image_date", "Pre-Treatment Image Time", "date", description="date of the pre-treatment MRI"),
    ColumnSpec("gender", "Gender", "category", ("Male", "Female")),
    ColumnSpec("age", "Age", "float", (0, 120), "years"),
    ColumnSpec("t_stage", "7th T Stage", "t_stage", (1, 2, 3, 4),
               description="AJCC 7th T1..T4 (written I..IV, T1..T4 or 1..4)"),
    ColumnSpec("n_stage", "7th N Stage", "n_stage", (0, 1, 2, 3), description="AJCC 7th N0..N3"),
    ColumnSpec("overall_stage", "7th Overall Stage", "overall_stage", ("I", "II", "III", "IV", "IVA", "IVB", "IVC")),
    ColumnSpec("ebv", "Tumor Marker EBV", "float", (0, 1e9), "copies/mL", description="plasma EBV DNA"),
    ColumnSpec("ebv_gt4000", "EBV > 4000", "yes_no", description="EBV DNA above 4000 copies/mL"),
    ColumnSpec("intracranial", "Intracranial or Cranial Nerve", "yes_no"),
    ColumnSpec("skull_base", "Skull Base", "yes_no"),
    ColumnSpec("rp_nodes", "Retropharyngeal Lymph Nodes", "yes_no"),
    ColumnSpec("rp_side_count", "Retropharyngeal Lymph Node Side Count", "int", (0, 2), "sides"),
    ColumnSpec("rp_necrosis", "Retropharyngeal Necrosis", "yes_no"),
    ColumnSpec("neck_nodes", "MRI Neck Lymph Nodes", "yes_no"),
    ColumnSpec("neck_side_count", "Neck Lymph Node Side Count", "int", (0, 2), "sides"),
    ColumnSpec("neck_necrosis", "Neck Necrosis", "yes_no"),
    ColumnSpec("lower_neck", "Lower Neck", "yes_no"),
    ColumnSpec("ln_necrosis", "All Lymph Node Necrosis (Binary Classification)", "yes_no"),
    ColumnSpec("np_regression", "Post-Chemotherapy Nasopharyngeal Tumor Regression", "category", _REGRESSION),
    ColumnSpec("neck_regression", "Post-Chemotherapy Neck Lymph Node Tumor Regression", "category", _REGRESSION),
    ColumnSpec("induction_efficacy", "Nasopharyngeal + Neck Recent Efficacy (Induction Efficacy)", "category",
               ("Effective", "Not Effective")),
    ColumnSpec("treatment_start", "Treatment Start Time", "date", required=True),
    ColumnSpec("last_follow_up", "Last Follow-Up Time", "date", required=True),
    ColumnSpec("failure", "Treatment Failure (Long-Term Efficacy) - Update", "yes_no", required=True,
               description="locoregional recurrence, distant metastasis or death"),
    ColumnSpec("ffs_months", "No Failure Survival Time - Update", "months", (0, 600), "months", required=True),
    ColumnSpec("death", "Death Update", "yes_no", required=True),
    ColumnSpec("death_date", "Death Time - Update", "date"),
    ColumnSpec("os_months", "Total Survival Time - Update", "months", (0, 600), "months", required=True),
    ColumnSpec("cause_of_death", "Cause of Death", "text"),
    ColumnSpec("metastasis", "Distant Metastasis - Update", "yes_no", required=True),
    ColumnSpec("metastasis_date", "Metastasis Time", "date"),
    ColumnSpec("dmfs_months", "No Distant Metastasis Survival Time", "months", (0, 600), "months", required=True),
    ColumnSpec("mri_machine", "MRI Machine", "text"),
    ColumnSpec("field_strength", "Magnetic Field Strength", "tesla", (0.1, 11.7), "T"),
)

#: the seed's 37 column names, in order
SEED_COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA)
_BY_KEY = {c.key: c for c in SCHEMA}
_BY_NAME = {c.name: c for c in SCHEMA}
_BY_NAME_FOLDED = {re.sub(r"[^a-z0-9]", "", c.name.lower()): c for c in SCHEMA}


@dataclass(frozen=True)
class Problem:
    """One row-level problem: CSV line (header = line 1), column, raw value and what is wrong."""

    row: int
    column: str
    value: Any
    message: str

    def __str__(self) -> str:
        return f"line {self.row}, column {self.column!r}, value {self.value!r}: {self.message}"


class ClinicalTableError(ValueError):
    """The table has problems (strict mode) or cannot be read at all."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        shown = "".join(f"\n  {p}" for p in self.problems[:25])
        more = f"\n  ... and {len(self.problems) - 25} more" if len(self.problems) > 25 else ""
        super().__init__(message + shown + more)


@dataclass
class ClinicalTable:
    """A loaded table: typed data (one row per patient), problems and what was dropped.

    Attributes:
        data: typed DataFrame; columns are :data:`SCHEMA` keys plus ``patient_id`` (salted
            pseudonym), ``line`` (CSV line) and ``problems`` (``"; "``-joined messages).
        problems: every problem found, in row order.
        dropped: ``{reason: count}`` of rows removed in ``"drop"`` mode.
        source: where the table came from.
    """

    data: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def summary(self) -> str:
        """One paragraph: rows kept, problems by kind, rows dropped and why."""
        kinds: dict[str, int] = {}
        for p in self.problems:
            kinds[p.message.split(":")[0]] = kinds.get(p.message.split(":")[0], 0) + 1
        parts = [f"{len(self.data)} patients from {self.source or 'table'}"]
        if kinds:
            parts.append("problems: " + ", ".join(f"{v} x {k}" for k, v in sorted(kinds.items())))
        if self.dropped:
            parts.append("dropped: " + ", ".join(f"{v} rows ({k})" for k, v in self.dropped.items()))
        return "; ".join(parts)


# --------------------------------------------------------------------------- normalisers
class _Bad(Exception):
    """A value that cannot be normalised (message says why)."""


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    if v is pd.NaT:
        return True
    return isinstance(v, str) and v.strip().lower() in MISSING_TOKENS


_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z.]*)\s*$")
_UNIT_MONTHS = {
    "": 1.0, "m": 1.0, "mo": 1.0, "mo.": 1.0, "mos": 1.0, "mos.": 1.0, "month": 1.0, "months": 1.0,
    "mth": 1.0, "mths": 1.0, "y": 12.0, "yr": 12.0, "yrs": 12.0, "year": 12.0, "years": 12.0,
    "w": 12.0 / 52.1775, "wk": 12.0 / 52.1775, "wks": 12.0 / 52.1775, "week": 12.0 / 52.1775,
    "weeks": 12.0 / 52.1775, "d": 12.0 / 365.25, "day": 12.0 / 365.25, "days": 12.0 / 365.25,
}


def normalise_months(value: Any) -> float:
    """A duration in months from ``"10 months"``, ``"10 mo"``, ``"1.5 years"``, ``"6 wk"``, ``10``.

    A bare number is in months (the schema's unit). Returns NaN for a missing value.

    Raises:
        ValueError: for text that is not a duration, or a negative one.
    """
    if _is_missing(value):
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("negative time")
        return float(value)
    m = _TIME_RE.match(str(value).strip().lower())
    if not m:
        if str(value).strip().startswith("-"):
            raise ValueError("negative time")
        raise ValueError("not a duration (expected e.g. '10 months', '10 mo', '1.5 years')")
    unit = m.group(2)
    if unit not in _UNIT_MONTHS:
        raise ValueError(f"unknown time unit {unit!r}")
    return float(m.group(1)) * _UNIT_MONTHS[unit]


_YES = frozenset({"yes", "y", "true", "t", "1", "positive", "pos", "+", "是"})
_NO = frozenset({"no", "n", "false", "f", "0", "negative", "neg", "否"})


def normalise_yes_no(value: Any) -> float:
    """1.0 for Yes variants, 0.0 for No variants, NaN if missing; ValueError otherwise."""
    if _is_missing(value):
        return float("nan")
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    s = str(value).strip().lower()
    if s in _YES:
        return 1.0
    if s in _NO:
        return 0.0
    raise ValueError("not a Yes/No value")


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}


def normalise_t_stage(value: Any) -> float:
    """T stage 1..4 from ``"II"``, ``"T2"``, ``"t2"``, ``"2"``; NaN if missing."""
    if _is_missing(value):
        return float("nan")
    s = re.sub(r"\s+", "", str(value).strip().lower())
    if s.endswith(".0"):
        s = s[:-2]
    s = s[1:] if s.startswith("t") else s
    if s in _ROMAN:
        return float(_ROMAN[s])
    if s in {"1", "2", "3", "4"}:
        return float(s)
    raise ValueError("not an AJCC 7th T stage (T1-T4, I-IV or 1-4)")


def normalise_n_stage(value: Any) -> float:
    """N stage 0..3 from ``"N1"``, ``"n1"``, ``"1"``; NaN if missing."""
    if _is_missing(value):
        return float("nan")
    s = re.sub(r"\s+", "", str(value).strip().lower())
    if s.endswith(".0"):
        s = s[:-2]
    s = s[1:] if s.startswith("n") else s
    if s in {"0", "1", "2", "3"}:
        return float(s)
    if s in _ROMAN and _ROMAN[s] <= 3:
        return float(_ROMAN[s])
    raise ValueError("not an AJCC 7th N stage (N0-N3)")


_ARABIC_TO_ROMAN = {"1": "I", "2": "II", "3": "III", "4": "IV"}


def normalise_overall_stage(value: Any) -> str | None:
    """Overall stage as ``I``, ``II``, ``III``, ``IV``, ``IVA``, ``IVB``, ``IVC``; None if missing.

    Accepts ``"Stage IVa"``, ``"IV A"``, ``"4a"``, ``"3"``.
    """
    if _is_missing(value):
        return None
    s = re.sub(r"[\s\-_]+", "", str(value).strip().upper())
    s = s.removeprefix("STAGE")
    if s.endswith(".0"):
        s = s[:-2]
    m = re.fullmatch(r"(I{1,3}|IV|[1-4])([ABC]?)", s)
    if not m:
        raise ValueError("not an overall stage (I, II, III, IVA, IVB, IVC)")
    base = _ARABIC_TO_ROMAN.get(m.group(1), m.group(1))
    if m.group(2) and base != "IV":
        raise ValueError("only stage IV has subgroups A/B/C in the 7th edition")
    return base + m.group(2)


def ajcc7_overall_stage(t: int, n: int) -> str:
    """AJCC 7th NPC overall stage (M0): I=T1N0; II=T1N1,T2N0-1; III=T1-2N2,T3N0-2; IVA=T4N0-2; IVB=N3."""
    if t not in (1, 2, 3, 4) or n not in (0, 1, 2, 3):
        raise ValueError(f"T must be 1..4 and N 0..3, got T={t!r} N={n!r}")
    if n == 3:
        return "IVB"
    if t == 4:
        return "IVA"
    if t == 3 or n == 2:
        return "III"
    return "I" if (t == 1 and n == 0) else "II"


def _norm_category(spec: ColumnSpec, value: Any) -> str | None:
    if _is_missing(value):
        return None
    s = str(value).strip()
    folded = {a.lower(): a for a in spec.allowed or ()}
    aliases = {"m": "Male", "male": "Male", "男": "Male", "f": "Female", "female": "Female", "女": "Female",
               "cr": "Complete Regression", "complete": "Complete Regression",
               "pr": "Partial Regression", "partial": "Partial Regression",
               "nr": "No Regression", "sd": "No Regression", "none": "No Regression",
               "pd": "Progression", "effective": "Effective", "not effective": "Not Effective",
               "ineffective": "Not Effective", "noneffective": "Not Effective", "non-effective": "Not Effective"}
    key = s.lower()
    if key in folded:
        return folded[key]
    if key in aliases and aliases[key] in (spec.allowed or ()):
        return aliases[key]
    raise ValueError(f"unknown category (allowed: {', '.join(spec.allowed or ())})")


_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def _strip_thousands(s: str) -> str:
    """``s`` without thousands separators; a comma anywhere else is an error, not a guess.

    ``"12,345"`` and ``"1,234.5"`` are read as thousands-grouped; ``"1234,5"`` or ``"1,5"``
    (a decimal comma, as semicolon-delimited European tables write it) would silently become
    12345 or 15 if commas were just dropped, so they are refused with the fix spelled out.
    """
    if "," not in s:
        return s
    if _THOUSANDS.fullmatch(s):
        return s.replace(",", "")
    raise ValueError(f"{s!r}: a comma that is not a thousands separator (decimal comma?); "
                     "write the number with '.' as the decimal point")


def _norm_number(spec: ColumnSpec, value: Any) -> float:
    if _is_missing(value):
        return float("nan")
    if isinstance(value, (bool, np.bool_)):
        raise ValueError("not a number")
    s = _strip_thousands(str(value).strip())
    if spec.unit and s.lower().endswith(spec.unit.lower()):
        s = s[: -len(spec.unit)].strip()
    try:
        x = float(s)
    except ValueError:
        raise ValueError("not a number") from None
    if not np.isfinite(x):
        raise ValueError("not a finite number")
    if spec.kind == "int" and x != int(x):
        raise ValueError("not a whole number")
    lo, hi = spec.allowed if spec.allowed else (-np.inf, np.inf)
    if not lo <= x <= hi:
        raise ValueError(f"out of range [{lo:g}, {hi:g}]")
    return x


def _norm_tesla(spec: ColumnSpec, value: Any) -> float:
    if _is_missing(value):
        return float("nan")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(t|tesla)?\s*", str(value).lower())
    if not m:
        raise ValueError("not a field strength (e.g. 1.5T, 3T)")
    return _norm_number(spec, m.group(1))


def _norm_date(value: Any) -> pd.Timestamp:
    if _is_missing(value):
        return pd.NaT
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "year"):
        return pd.Timestamp(value).normalize()
    s = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d", "%Y-%m-%d %H:%M:%S"):
        try:
            return pd.to_datetime(s, format=fmt)
        except ValueError:
            continue
    raise ValueError("not a date (expected YYYY-MM-DD)")


def _normalise(spec: ColumnSpec, value: Any) -> Any:
    kind = spec.kind
    if kind in ("id", "text"):
        return None if _is_missing(value) else str(value).strip()
    if kind == "date":
        return _norm_date(value)
    if kind in ("int", "float"):
        return _norm_number(spec, value)
    if kind == "yes_no":
        return normalise_yes_no(value)
    if kind == "months":
        x = normalise_months(value)
        if np.isfinite(x) and spec.allowed and x > spec.allowed[1]:
            raise ValueError(f"impossible time (> {spec.allowed[1]} months)")
        return x
    if kind == "category":
        return _norm_category(spec, value)
    if kind == "t_stage":
        return normalise_t_stage(value)
    if kind == "n_stage":
        return normalise_n_stage(value)
    if kind == "overall_stage":
        return normalise_overall_stage(value)
    if kind == "tesla":
        return _norm_tesla(spec, value)
    raise AssertionError(f"unknown column kind {kind}")


# --------------------------------------------------------------------------- pseudonyms
def pseudonymise(record_number: Any, salt: str | bytes) -> str:
    """A salted pseudonym ``P`` + 16 hex digits (HMAC-SHA256 of the record number)."""
    key = salt.encode() if isinstance(salt, str) else salt
    digest = hmac.new(key, str(record_number).strip().encode(), hashlib.sha256).hexdigest()
    return "P" + digest[:16]


def _salt(salt: str | bytes | None) -> str | bytes:
    if salt is not None:
        return salt
    env = os.environ.get("HICUR_PSEUDONYM_SALT")
    if env:
        return env
    logger.warning("no pseudonym salt given (argument or HICUR_PSEUDONYM_SALT): using a random one; "
                   "patient_id pseudonyms will differ between runs")
    return secrets.token_hex(16)


# --------------------------------------------------------------------------- loading
_DELIMITERS = ",;\t|"
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _header_line(path: Path) -> str:
    """The first line of a text table (BOM removed)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return fh.readline()


def _sniff_delimiter(header: str) -> str:
    """The delimiter of a text table, sniffed from its header line (``,`` ``;`` tab ``|``).

    :class:`csv.Sniffer` decides; when it cannot, the candidate that splits the header
    into the most fields wins (ties: comma).
    """
    try:
        return csv.Sniffer().sniff(header, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in _DELIMITERS}
        return max(_DELIMITERS, key=lambda d: (counts[d], d == ","))


def _read_raw(source: str | os.PathLike | pd.DataFrame,
              sheet: str | int = 0) -> tuple[pd.DataFrame, str, list[str], str | None]:
    """The table as strings, its name, its header cells exactly as written (duplicates kept) and
    the delimiter it was read with (None for Excel and DataFrames)."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), "DataFrame", [str(c) for c in source.columns], None
    path = Path(source)
    if not path.is_file():
        raise ClinicalTableError(f"clinical table {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            raw = pd.read_excel(path, sheet_name=sheet, dtype=object)
            first = pd.read_excel(path, sheet_name=sheet, header=None, nrows=1, dtype=object)
            headers = ["" if _is_missing(v) else str(v) for v in first.iloc[0].tolist()] if len(first) else []
            sep = None
        elif suffix in (".csv", ".txt", ".tsv"):
            line = _header_line(path)
            sep = _sniff_delimiter(line)
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig")
            headers = next(csv.reader([line], delimiter=sep), [])
        else:
            raise ClinicalTableError(f"{path}: unsupported table format {suffix!r} (use .csv or .xlsx)")
    except ClinicalTableError:
        raise
    except Exception as err:  # the reader's own message names the problem
        raise ClinicalTableError(f"{path}: cannot be read as a table: {err}") from err
    return raw, str(path), headers, sep


def _fold_header(name: Any) -> str:
    """A header compared case-, whitespace- and punctuation-insensitively."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _check_duplicate_headers(headers: Sequence[str], source: str) -> None:
    """Raise when two header cells are the same after folding case, whitespace and punctuation.

    pandas renames a repeated header (``Age``, ``Age.1``) and the loader would read only the
    first, so the check runs on the header cells as written in the file.
    """
    seen: dict[str, int] = {}
    clashes = []
    for i, h in enumerate(headers):
        folded = _fold_header(h)
        if not folded:
            continue  # blank headers (trailing delimiters) hold no schema column
        if folded in seen:
            j = seen[folded]
            clashes.append(f"{headers[j]!r} (column {j + 1}) and {h!r} (column {i + 1})")
        else:
            seen[folded] = i
    if clashes:
        raise ClinicalTableError(f"{source}: duplicated column headers (same after ignoring case, spaces and "
                                 f"punctuation): {'; '.join(clashes)}; rename or remove one of each")


_OUTCOME_KEYS = frozenset({"treatment_start", "last_follow_up", "failure", "ffs_months", "death", "os_months",
                           "metastasis", "dmfs_months"})


def _resolve_columns(raw: pd.DataFrame, column_map: Mapping[str, str] | None, source: str,
                     require_outcomes: bool = True, delimiter: str | None = None) -> dict[str, str]:
    """Map the file's headers to schema keys (exact name, a key, case/punctuation-insensitive, or column_map)."""
    mapping: dict[str, str] = {}
    column_map = dict(column_map or {})
    for col in raw.columns:
        target = column_map.get(col)
        if target is not None:
            spec = _BY_KEY.get(target) or _BY_NAME.get(target)
            if spec is None:
                raise ClinicalTableError(f"{source}: column_map maps {col!r} to {target!r}, which is neither a "
                                         f"schema key nor a seed column name")
        else:
            spec = _BY_NAME.get(str(col).strip()) or _BY_KEY.get(str(col).strip()) or \
                _BY_NAME_FOLDED.get(_fold_header(col))
        if spec is None:
            continue
        other = next((c for c, k in mapping.items() if k == spec.key), None)
        if other is not None:
            raise ClinicalTableError(f"{source}: columns {other!r} and {col!r} both map to {spec.name!r} "
                                     "(duplicated or aliased header); rename or remove one")
        mapping[col] = spec.key
    missing = [c.name for c in SCHEMA if c.required and c.key not in mapping.values()
               and (require_outcomes or c.key not in _OUTCOME_KEYS)]
    if missing:
        hint = f" (read as {_DELIMITER_NAMES[delimiter]}-delimited)" if delimiter else ""
        if len(raw.columns) == 1:
            hint += "; the whole header was read as one column: is the file delimited by , ; tab or |?"
        raise ClinicalTableError(f"{source}: required columns missing: {missing}; present: {list(raw.columns)}"
                                 f"{hint} (map your own names with column_map={{'your name': 'seed name or key'}})")
    return mapping


def load_clinical_table(source: str | os.PathLike | pd.DataFrame, *,
                        mode: Literal["strict", "flag", "drop"] = "strict",
                        column_map: Mapping[str, str] | None = None,
                        salt: str | bytes | None = None,
                        sheet: str | int = 0,
                        require_outcomes: bool = True) -> ClinicalTable:
    """Load, normalise and validate a prognosis table.

    Args:
        source: a ``.csv``/``.xlsx`` path or a raw DataFrame (strings as typed).
        mode: ``"strict"`` raises on any problem; ``"flag"`` keeps all rows and marks those
            with problems; ``"drop"`` removes rows with problems (counts by reason in
            :attr:`ClinicalTable.dropped`).
        column_map: ``{your column: seed column name or schema key}`` for tables with
            other headers. Unknown extra columns are ignored (and listed in the log).
        salt: secret salt for the record-number pseudonym (default: env
            ``HICUR_PSEUDONYM_SALT``, else random per call with a warning).
        sheet: sheet of an Excel workbook.
        require_outcomes: False for new patients without follow-up (inference): the
            outcome columns may then be absent.

    Raises:
        ClinicalTableError: unreadable file, missing required columns, or (strict mode)
            any row-level problem; the message lists the problems.
    """
    if mode not in ("strict", "flag", "drop"):
        raise ValueError(f"mode must be 'strict', 'flag' or 'drop', not {mode!r}")
    raw, source_name, headers, delimiter = _read_raw(source, sheet)
    _check_duplicate_headers(headers, source_name)
    mapping = _resolve_columns(raw, column_map, source_name, require_outcomes, delimiter)
    ignored = [c for c in raw.columns if c not in mapping]
    if ignored:
        logger.info("%s: ignoring columns not in the schema: %s", source_name, ignored)
    raw = raw[list(mapping)].rename(columns=mapping).reset_index(drop=True)

    lines = np.arange(len(raw)) + 2  # header is line 1
    data, problems, unreadable = _normalise_columns(raw, lines, require_outcomes)
    problems.extend(_validate_rows(data, lines, raw, unreadable))
    problems.extend(_pseudonymise_rows(data, lines, _salt(salt)))
    data.insert(1, "line", lines)
    problems.sort(key=lambda p: (p.row, p.column))

    by_line: dict[int, list[str]] = {}
    for p in problems:
        by_line.setdefault(p.row, []).append(f"{p.column}: {p.message}")
    data["problems"] = ["; ".join(by_line.get(int(line), [])) for line in lines]

    table = ClinicalTable(data=data, problems=problems, source=source_name)
    if problems and mode == "strict":
        raise ClinicalTableError(f"{source_name}: {len(problems)} problem(s) in {len(by_line)} row(s) "
                                 "(load with mode='flag' or 'drop' to keep going)", problems)
    if mode == "drop" and problems:
        _drop_flagged(table, by_line)
    elif problems:
        logger.warning("%s: %d problem(s) in %d row(s), rows flagged in column 'problems'", source_name,
                       len(problems), len(by_line))
    return table


def _normalise_columns(raw: pd.DataFrame, lines: np.ndarray, require_outcomes: bool,
                       ) -> tuple[pd.DataFrame, list[Problem], set[tuple[int, str]]]:
    """Normalise every schema column of ``raw`` (renamed to schema keys) cell by cell.

    Returns the typed frame, the cell-level problems (unreadable or missing required values) and
    the ``(row index, key)`` cells that were unreadable (so cross-column checks skip them).
    """
    problems: list[Problem] = []
    unreadable: set[tuple[int, str]] = set()  # cells already reported as unreadable
    out: dict[str, list[Any]] = {}
    for spec in SCHEMA:
        if spec.key not in raw.columns:
            continue
        values = []
        for i, v in enumerate(raw[spec.key].tolist()):
            try:
                nv = _normalise(spec, v)
            except ValueError as err:
                problems.append(Problem(int(lines[i]), spec.name, v, f"{err}"))
                unreadable.add((i, spec.key))
                nv = _normalise(spec, None)
            if spec.required and _is_missing_value(nv) and spec.key != "mrn" and \
                    (require_outcomes or spec.key not in _OUTCOME_KEYS):
                if spec.kind != "months":  # missing times are judged with their event flags below
                    problems.append(Problem(int(lines[i]), spec.name, v, "missing required value"))
            values.append(nv)
        out[spec.key] = values
    data = pd.DataFrame(out)
    numeric = ("int", "float", "yes_no", "months", "t_stage", "n_stage", "tesla")
    for spec in SCHEMA:
        if spec.key in data and spec.kind == "date":
            data[spec.key] = pd.to_datetime(data[spec.key])
        elif spec.key in data and spec.kind in numeric:
            data[spec.key] = data[spec.key].astype(float)
    return data, problems, unreadable


def _pseudonymise_rows(data: pd.DataFrame, lines: np.ndarray, salt_value: str | bytes) -> list[Problem]:
    """Replace the ``mrn`` column by a salted ``patient_id`` (first column), in place.

    The record number never leaves the loader. Returns the problems found: missing record
    numbers and duplicates (a patient appearing more than once).
    """
    problems: list[Problem] = []
    mrn = data.pop("mrn")
    missing_mrn = [int(lines[i]) for i, v in enumerate(mrn) if v is None]
    for line in missing_mrn:
        problems.append(Problem(line, "Medical Record Number", None, "missing required value"))
    data.insert(0, "patient_id", [pseudonymise(v, salt_value) if v is not None else None for v in mrn])
    dup = data["patient_id"].duplicated(keep=False) & data["patient_id"].notna()
    for i in np.flatnonzero(dup.to_numpy()):
        problems.append(Problem(int(lines[i]), "Medical Record Number", "<hidden>",
                                "duplicate record number (patient appears more than once)"))
    return problems


def _drop_flagged(table: ClinicalTable, by_line: Mapping[int, list[str]]) -> None:
    """Drop mode: remove the flagged rows from ``table.data`` and count them by reason."""
    data = table.data
    bad = data["problems"] != ""
    counts: dict[str, int] = {}
    for msgs in by_line.values():
        for reason in sorted({m.split(": ", 1)[1].split(" (")[0] for m in msgs}):
            counts[reason] = counts.get(reason, 0) + 1
    table.dropped = counts
    table.data = data[~bad].reset_index(drop=True)
    logger.warning("%s: dropped %d of %d rows with problems: %s", table.source, int(bad.sum()), len(data),
                   ", ".join(f"{v} x {k}" for k, v in counts.items()))


def _is_missing_value(v: Any) -> bool:
    return v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v))


def _validate_rows(d: pd.DataFrame, lines: np.ndarray, raw: pd.DataFrame,
                   unreadable: set[tuple[int, str]]) -> list[Problem]:
    """Cross-column checks: events and times, dates, stage and EBV consistency."""
    out: list[Problem] = []

    def has(col: str) -> bool:
        return col in d.columns

    for i in range(len(d)):
        line = int(lines[i])
        r = d.iloc[i]

        def add(col: str, value: Any, msg: str, _i: int = i, _line: int = line) -> None:
            # report the value as written in the file
            shown = raw.at[_i, col] if col in raw.columns else value
            out.append(Problem(_line, _BY_KEY[col].name, shown, msg))

        for ev, tm in (("failure", "ffs_months"), ("death", "os_months"), ("metastasis", "dmfs_months")):
            if has(ev) and has(tm) and _is_missing_value(r[tm]) and (i, tm) not in unreadable:
                if r[ev] == 1:
                    add(tm, r[tm], "event flag without time")
                elif r[ev] == 0:
                    add(tm, r[tm], "missing time (censored row without follow-up time)")
        if has("death") and has("death_date") and r["death"] == 1 and _is_missing_value(r["death_date"]) \
                and not has("os_months"):
            add("death_date", None, "event flag without time")
        if has("metastasis") and has("metastasis_date") and r["metastasis"] == 1 and \
                _is_missing_value(r["metastasis_date"]) and not has("dmfs_months"):
            add("metastasis_date", None, "event flag without time")
        if has("death") and r.get("death") == 0 and has("death_date") and not _is_missing_value(r["death_date"]):
            add("death_date", r["death_date"].date(), "death date given but Death Update is No")
        if has("metastasis") and r.get("metastasis") == 0 and has("metastasis_date") and \
                not _is_missing_value(r["metastasis_date"]):
            add("metastasis_date", r["metastasis_date"].date(), "metastasis date given but Distant Metastasis is No")
        # failure-free survival includes death and metastasis
        if has("failure") and r.get("failure") == 0 and (r.get("death") == 1 or r.get("metastasis") == 1):
            add("failure", "No", "death or metastasis recorded without treatment failure")
        # dates
        start, last = r.get("treatment_start"), r.get("last_follow_up")
        if not _is_missing_value(start) and not _is_missing_value(last) and last < start:
            add("last_follow_up", last.date(), "last follow-up before treatment start")
        for col, what in (("death_date", "death time"), ("metastasis_date", "metastasis time")):
            when = r.get(col)
            if _is_missing_value(when) if col in d.columns else True:
                continue
            if not _is_missing_value(last) and when > last:
                add(col, when.date(), f"{what} after last follow-up")
            if not _is_missing_value(start) and when < start:
                add(col, when.date(), f"{what} before treatment start")
        # months ordering: FFS <= DMFS <= OS, OS <= follow-up
        ffs, dmfs, os_ = r.get("ffs_months"), r.get("dmfs_months"), r.get("os_months")
        tol = 1.0  # month rounding
        if not _is_missing_value(ffs) and not _is_missing_value(os_) and ffs > os_ + tol:
            add("ffs_months", ffs, "failure-free time exceeds total survival time")
        if not _is_missing_value(dmfs) and not _is_missing_value(os_) and dmfs > os_ + tol:
            add("dmfs_months", dmfs, "metastasis-free time exceeds total survival time")
        if not _is_missing_value(start) and not _is_missing_value(last) and not _is_missing_value(os_):
            fu = (last - start).days / (365.25 / 12)
            if os_ > fu + tol:
                add("os_months", os_, f"total survival time exceeds follow-up ({fu:.1f} months by dates)")
        # stage consistency
        t, n, st = r.get("t_stage"), r.get("n_stage"), r.get("overall_stage")
        if not _is_missing_value(t) and not _is_missing_value(n) and st is not None:
            expected = ajcc7_overall_stage(int(t), int(n))
            ok = st == expected or (st == "IV" and expected in ("IVA", "IVB")) or st == "IVC"
            if not ok:
                add("overall_stage", st, f"overall stage inconsistent with T{int(t)}N{int(n)} (AJCC 7th: {expected})")
        # EBV flag
        ebv, flag = r.get("ebv"), r.get("ebv_gt4000")
        if not _is_missing_value(ebv) and not _is_missing_value(flag) and (ebv > 4000) != bool(flag):
            add("ebv_gt4000", "Yes" if flag else "No", f"EBV > 4000 flag inconsistent with EBV {ebv:g}")
    return out


# --------------------------------------------------------------------------- endpoints
@dataclass(frozen=True)
class Endpoint:
    """A time-to-event endpoint: event flag column, time column (months) and its definition."""

    key: str
    label: str
    event: str
    time: str
    definition: str


ENDPOINTS: dict[str, Endpoint] = {
    "ffs": Endpoint("ffs", "Failure-free survival", "failure", "ffs_months",
                    "time from treatment start to the first treatment failure (locoregional recurrence, distant "
                    "metastasis) or death from any cause; censored at last follow-up"),
    "os": Endpoint("os", "Overall survival", "death", "os_months",
                   "time from treatment start to death from any cause; censored at last follow-up"),
    "dmfs": Endpoint("dmfs", "Distant-metastasis-free survival", "metastasis", "dmfs_months",
                     "time from treatment start to distant metastasis; censored at death without metastasis "
                     "or at last follow-up"),
}


def endpoint_frame(table: ClinicalTable | pd.DataFrame, endpoint: str) -> pd.DataFrame:
    """``(time, event)`` of one endpoint (months, 0/1) for the rows where both are known.

    Returns a DataFrame indexed like the table's data with columns ``time`` and ``event``;
    rows with a missing or negative time or event are left out and counted in its
    ``attrs["excluded"]``.
    """
    if endpoint not in ENDPOINTS:
        raise KeyError(f"unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
    ep = ENDPOINTS[endpoint]
    d = table.data if isinstance(table, ClinicalTable) else table
    for col in (ep.time, ep.event):
        if col not in d.columns:
            raise KeyError(f"endpoint {endpoint!r} needs column {_BY_KEY[col].name!r}, which the table lacks")
    out = pd.DataFrame({"time": d[ep.time].astype(float), "event": d[ep.event].astype(float)}, index=d.index)
    ok = out["time"].notna() & out["event"].notna() & (out["time"] >= 0)
    res = out[ok].astype({"event": int})
    res.attrs["excluded"] = int((~ok).sum())
    res.attrs["endpoint"] = endpoint
    return res


# --------------------------------------------------------------------------- covariates
def _yn_col(col: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda d: d[col].astype(float)


#: derived numeric covariates: name -> (description, function of the typed data)
DERIVED_COVARIATES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "age_per10": ("(age - 50) / 10", lambda d: (d["age"] - 50.0) / 10.0),
    "male": ("Gender Male=1, Female=0", lambda d: d["gender"].map({"Male": 1.0, "Female": 0.0})),
    "t_stage": ("T stage 1..4 (linear)", lambda d: d["t_stage"].astype(float)),
    "n_stage": ("N stage 0..3 (linear)", lambda d: d["n_stage"].astype(float)),
    "overall_stage": ("overall stage I..IVB as 1..5 (ordinal)",
                      lambda d: d["overall_stage"].map({"I": 1.0, "II": 2.0, "III": 3.0, "IV": 4.0, "IVA": 4.0,
                                                        "IVB": 5.0, "IVC": 6.0})),
    "log10_ebv": ("log10(EBV DNA + 1), copies/mL", lambda d: np.log10(d["ebv"].astype(float) + 1.0)),
    "ebv": ("EBV DNA, copies/mL", lambda d: d["ebv"].astype(float)),
    "ebv_gt4000": ("EBV > 4000 (0/1)", _yn_col("ebv_gt4000")),
    "necrosis": ("any lymph-node necrosis (0/1)", _yn_col("ln_necrosis")),
    "intracranial": ("intracranial / cranial nerve involvement (0/1)", _yn_col("intracranial")),
    "skull_base": ("skull base involvement (0/1)", _yn_col("skull_base")),
    "lower_neck": ("lower neck nodes (0/1)", _yn_col("lower_neck")),
    "induction_effective": ("induction efficacy Effective=1",
                            lambda d: d["induction_efficacy"].map({"Effective": 1.0, "Not Effective": 0.0})),
    "field_3t": ("3 T scanner (0/1)", lambda d: (d["field_strength"] >= 2.5).astype(float)
                 .where(d["field_strength"].notna())),
}

#: default covariates: T and N rather than overall stage; log EBV rather than the 4000 flag
DEFAULT_COVARIATES: tuple[str, ...] = ("age_per10", "male", "t_stage", "n_stage", "log10_ebv", "necrosis")

#: (derived column, the columns it is a function of, why)
COLLINEAR_GROUPS: tuple[tuple[str, frozenset[str], str], ...] = (
    ("overall_stage", frozenset({"t_stage", "n_stage"}), "overall stage is a function of T and N"),
    ("ebv_gt4000", frozenset({"ebv", "log10_ebv"}), "'EBV > 4000' is a threshold of EBV"),
    ("ebv", frozenset({"log10_ebv"}), "EBV and log EBV carry the same information"),
)


def check_collinearity(covariates: Iterable[str], warn: bool = True) -> list[str]:
    """Messages for covariate sets that feed both a derived variable and what it is derived from."""
    cov = set(covariates)
    msgs = [f"covariates {sorted({derived} | (parts & cov))} are collinear: {why}; use one or the other"
            for derived, parts, why in COLLINEAR_GROUPS if derived in cov and parts & cov]
    if warn:
        for m in msgs:
            warnings.warn(m, UserWarning, stacklevel=2)
    return msgs


def design_matrix(table: ClinicalTable | pd.DataFrame, covariates: Sequence[str] = DEFAULT_COVARIATES,
                  warn: bool = True) -> pd.DataFrame:
    """Numeric covariates (columns named as given) for every row; missing values stay NaN.

    Names may be :data:`DERIVED_COVARIATES` or any numeric column of the typed data.
    """
    d = table.data if isinstance(table, ClinicalTable) else table
    check_collinearity(covariates, warn=warn)
    cols = {}
    for c in covariates:
        if c in DERIVED_COVARIATES:
            try:
                cols[c] = DERIVED_COVARIATES[c][1](d).astype(float)
            except KeyError as err:
                raise KeyError(f"covariate {c!r} needs column {err} which the table lacks") from None
        elif c in d.columns and pd.api.types.is_numeric_dtype(d[c]):
            cols[c] = d[c].astype(float)
        else:
            raise KeyError(f"unknown covariate {c!r}; derived ones: {sorted(DERIVED_COVARIATES)}")
    return pd.DataFrame(cols, index=d.index)
