"""Header values of a parsed DICOM dataset as pydicom gives them, read without converting the element.

Curation reads some thirty header values per DICOM file (identification, the patient key,
the path check, acquisition parameters, geometry). pydicom converts an element on its first
access -- value representation, character set, ``MultiValue`` / ``DSfloat`` / ``PersonName``
objects, the element stored back into the dataset -- which costs more than the rest of the
per-file header handling (~0.5 ms of a 512 x 512 CT slice). For the common case, an element
still raw whose bytes are ASCII without escape sequences (decoded identically by every
DICOM character set), this module decodes the bytes itself with pydicom's own rules for the
element's value representation (the trailing padding and backslash-separated values of
``pydicom.values``); unsigned 16-bit values (``US``: rows, columns, samples) are unpacked
directly. Anything else -- non-ASCII text, escape sequences, other binary VRs, elements
already converted -- goes through pydicom. ``tests/test_curation_fast.py`` checks that both
give the same strings for every text element of pydicom's test files.

The dataset is not changed: elements read here stay raw, so a later full pass (the PS3.15
de-identification of ``--keep-dicom-header``) sees the file as parsed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["values", "text", "number", "integer"]

#: VRs decoded as ``multi_string``: the whole value right-stripped of spaces / NULs, then split on backslashes
_SPLIT_WHOLE = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "PN"})
#: VRs split on backslashes, each value right-stripped (``convert_text``)
_SPLIT_EACH = frozenset({"LO", "SH", "UC"})
#: single-valued text VRs (``convert_single_string``): right-stripped of spaces / NULs, never split
_SINGLE = frozenset({"LT", "ST", "UT"})
#: numeric strings: stripped both sides, then split
_NUMERIC = frozenset({"DS", "IS"})


@lru_cache(maxsize=512)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return tag


@lru_cache(maxsize=512)
def _dict_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _raw(ds: Dataset, keyword: str) -> tuple[Any, bool]:
    """``(element, True)`` for a raw element (``None`` when absent), ``(value, False)`` for a converted one."""
    elem = ds.get_item(_tag(keyword), keep_deferred=True)  # the raw element while pydicom has not converted it
    if elem is None or isinstance(elem, RawDataElement):
        return elem, True
    return elem.value, False


def _fast(raw: RawDataElement) -> list[str] | None:
    """The element's values decoded from its bytes, or ``None`` where pydicom must decode it."""
    value = raw.value
    if value is None or not isinstance(value, bytes):
        return None  # a deferred read
    vr = raw.VR or _dict_vr(raw.tag)
    if vr == "US" and len(value) == 2:
        return [str(int.from_bytes(value, "little" if raw.is_little_endian else "big"))]
    if not value.isascii() or b"\x1b" in value:
        return None
    if vr in _SPLIT_WHOLE:
        if vr == "PN" and (b"=" in value or b"\\" in value):
            return None  # person-name groups / several names: PersonName's own rules
        return value.decode("ascii").rstrip(" \x00").split("\\")
    if vr in _SPLIT_EACH:
        return [v.rstrip("\x00 ") for v in value.decode("ascii").split("\\")]
    if vr in _SINGLE:
        return [value.decode("ascii").rstrip("\x00 ")]
    if vr in _NUMERIC:
        return value.decode("ascii").strip().rstrip(" \x00").split("\\")  # convert_DS/IS_string, then multi_string
    return None


def _converted(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def values(ds: Dataset, keyword: str) -> list[str] | None:
    """The element's values as strings (what ``str`` gives of each of pydicom's values); ``None`` when absent.

    An empty element gives ``[""]`` (pydicom: an empty string) or ``[]`` (an empty multi-value).
    """
    elem, raw = _raw(ds, keyword)
    if not raw:
        return _converted(elem)
    if elem is None:
        return None
    fast = _fast(elem)
    if fast is not None:
        return fast
    return _converted(ds.get(keyword))


def text(ds: Dataset, keyword: str) -> str:
    """``str(ds.get(keyword, "") or "")`` for a single-valued element; values joined by backslashes otherwise."""
    vals = values(ds, keyword)
    if not vals:
        return ""
    return vals[0] if len(vals) == 1 else "\\".join(vals)


def number(ds: Dataset, keyword: str) -> float | None:
    """The element's first value as a float, ``None`` when absent, empty or not a number."""
    vals = values(ds, keyword)
    if not vals:
        return None
    try:
        return float(vals[0])
    except ValueError:
        return None


def integer(ds: Dataset, keyword: str, default: int) -> int:
    """The element's first value as an int (``default`` when absent, empty or not a number)."""
    v = number(ds, keyword)
    return default if v is None or v != v else int(v)
