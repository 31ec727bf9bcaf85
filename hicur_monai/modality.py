"""The modality vocabulary of the toolkit, in one place.

Images carry two labels: a *modality* (``endoscopy``, ``mri``, ``ct``) and, for MRI, a
*sequence* (``T1``, ``T2``, ``T1C``). Every component (transforms, curation, bundles)
canonicalises user spellings through :func:`canonical_modality` and
:func:`canonical_sequence`, and rejects what it does not know instead of guessing.
"""

from __future__ import annotations

__all__ = [
    "ENDOSCOPY",
    "MRI",
    "CT",
    "MODALITIES",
    "SEQUENCES",
    "canonical_modality",
    "canonical_sequence",
]

ENDOSCOPY = "endoscopy"
MRI = "mri"
CT = "ct"
MODALITIES = (ENDOSCOPY, MRI, CT)
SEQUENCES = ("T1", "T2", "T1C")

_MODALITY_ALIASES = {
    ENDOSCOPY: ENDOSCOPY, "endo": ENDOSCOPY, "es": ENDOSCOPY, "rgb": ENDOSCOPY,
    "nasopharyngoscopy": ENDOSCOPY, "xc": ENDOSCOPY,
    MRI: MRI, "mr": MRI, "t1": MRI, "t2": MRI, "t1c": MRI,
    CT: CT,
}
_SEQUENCE_ALIASES = {
    "t1": "T1", "t1w": "T1",
    "t2": "T2", "t2w": "T2",
    "t1c": "T1C", "t1+c": "T1C", "t1ce": "T1C", "t1gd": "T1C", "t1-c": "T1C", "t1_c": "T1C", "t1post": "T1C",
}


def canonical_modality(value: str) -> str:
    """Return the canonical modality name for ``value`` (case-insensitive alias).

    Raises:
        ValueError: ``value`` names no known modality.
    """
    key = str(value).strip().lower()
    try:
        return _MODALITY_ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown modality {value!r}; expected one of {MODALITIES} "
                         "(or an alias such as MR, CT, RGB)") from None


def canonical_sequence(value: str | None) -> str | None:
    """Return ``T1``/``T2``/``T1C`` for an MRI sequence alias, ``None`` for empty input.

    Raises:
        ValueError: ``value`` names no known sequence.
    """
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower().replace(" ", "")
    try:
        return _SEQUENCE_ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown MRI sequence {value!r}; expected one of {SEQUENCES}") from None
