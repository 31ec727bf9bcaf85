"""The curation rules file (YAML): how files without telling headers get a modality,
sequence, patient and slice range, and which files to leave out.

See ``docs/curation.md`` for the format. Example::

    version: 1
    dicom_modality: {OT: endoscopy}          # extends MR->mri, CT->ct, ES/XC->endoscopy
    sequence_patterns:                        # tried before the built-in ones
      - {regex: "mprage", sequence: T1}
    rules:                                    # first match wins
      - glob: "*/mask.nii.gz"
        exclude: segmentation mask
      - regex: "mri/(?P<patient>[^/]+)/(?P<sequence>T1C|T1|T2)\\.nii\\.gz$"
        modality: mri
        slices: {mask: mask.nii.gz, margin: 2}
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hicur_monai.modality import canonical_modality, canonical_sequence

__all__ = ["SliceSpec", "Rule", "RuleMatch", "Rules", "load_rules", "PACKAGED_RULES"]

#: rules files shipped with the package, usable by name (``--modality-map demo``)
PACKAGED_RULES = Path(__file__).parent / "rules"

_DEFAULT_DICOM_MODALITY = {"MR": "mri", "CT": "ct", "ES": "endoscopy", "XC": "endoscopy"}

#: (regex, sequence or None for unsupported); searched in SeriesDescription, ProtocolName and SequenceName
_DEFAULT_SEQUENCE_PATTERNS: list[tuple[str, str | None]] = [
    (r"flair|dwi|diff|adc|trace|perf|dti|swi|localizer|localiser|scout|survey|mra|tof", None),
    (r"t1.{0,12}(\+ ?c\b|\bc\+|gd|gad|post|contrast|enh|ce\b)|(\+ ?c|gd|post|contrast).{0,12}t1|t1c\b|t1ce", "T1C"),
    (r"t2", "T2"),
    (r"t1", "T1"),
]


@dataclass(frozen=True)
class SliceSpec:
    """Which slices of a 3D volume to keep.

    Attributes:
        mask: path of a mask (relative to the image's folder) whose non-zero extent gives the range.
        margin: slices added on both sides of the mask range.
        start, stop: a fixed range; floats in [0, 1] are fractions of the slice count.
    """

    mask: str | None = None
    margin: int = 0
    start: float | None = None
    stop: float | None = None

    def fixed_range(self, n: int) -> tuple[int, int]:
        """The ``[start, stop)`` range for a volume of ``n`` slices (without a mask)."""

        def conv(v: float | None, default: int) -> int:
            if v is None:
                return default
            if isinstance(v, float) and 0.0 <= v <= 1.0:
                return int(round(v * n))
            return int(v)

        return max(0, conv(self.start, 0)), min(n, conv(self.stop, n))


@dataclass(frozen=True)
class Rule:
    """One entry of ``rules:``; ``pattern`` is a compiled regex (globs are translated)."""

    index: int
    pattern: re.Pattern
    modality: str | None = None
    sequence: str | None = None
    patient: str | None = None
    exclude: str | None = None
    slices: SliceSpec | None = None


@dataclass(frozen=True)
class RuleMatch:
    """What the first matching rule says about one path."""

    rule: int
    modality: str | None
    sequence: str | None
    patient: str | None
    exclude: str | None
    slices: SliceSpec | None


@dataclass
class Rules:
    """The parsed rules file (the defaults when no file is given)."""

    rules: list[Rule] = field(default_factory=list)
    dicom_modality: dict[str, str] = field(default_factory=lambda: dict(_DEFAULT_DICOM_MODALITY))
    sequence_patterns: list[tuple[re.Pattern, str | None]] = field(
        default_factory=lambda: [(re.compile(p, re.I), s) for p, s in _DEFAULT_SEQUENCE_PATTERNS]
    )
    source: str = "<defaults>"

    def match(self, rel_path: str) -> RuleMatch | None:
        """The first rule whose pattern is found in the POSIX relative path, or ``None``."""
        for r in self.rules:
            m = r.pattern.search(rel_path)
            if m is None:
                continue
            groups = {k: v for k, v in m.groupdict().items() if v}
            modality = groups.get("modality", r.modality)
            sequence = groups.get("sequence", r.sequence)
            return RuleMatch(
                rule=r.index,
                modality=canonical_modality(modality) if modality else None,
                sequence=canonical_sequence(sequence) if sequence else None,
                patient=groups.get("patient", r.patient),
                exclude=r.exclude,
                slices=r.slices,
            )
        return None

    def sequence_from_text(self, text: str) -> tuple[bool, str | None]:
        """``(matched, sequence)`` from a series description; ``sequence`` is ``None`` for unsupported ones."""
        for pat, seq in self.sequence_patterns:
            if pat.search(text):
                return True, seq
        return False, None


def _err(src: str, where: str, msg: str) -> ValueError:
    return ValueError(f"{src}: {where}: {msg}")


def _parse_slices(src: str, where: str, value: Any) -> SliceSpec:
    if not isinstance(value, dict):
        raise _err(src, where, f"'slices' must be a mapping with 'mask' or 'range', got {value!r}")
    unknown = set(value) - {"mask", "margin", "range"}
    if unknown:
        raise _err(src, where, f"unknown keys in 'slices': {sorted(unknown)}")
    rng = value.get("range")
    start = stop = None
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)):
            raise _err(src, where, f"'slices.range' must be [start, stop], got {rng!r}")
        start, stop = rng
    margin = value.get("margin", 0)
    if not isinstance(margin, int) or margin < 0:
        raise _err(src, where, f"'slices.margin' must be a non-negative integer, got {margin!r}")
    mask = value.get("mask")
    if mask is None and rng is None:
        raise _err(src, where, "'slices' needs 'mask' or 'range'")
    return SliceSpec(mask=str(mask) if mask else None, margin=margin, start=start, stop=stop)


def load_rules(path: str | os.PathLike | None) -> Rules:
    """Read and validate a rules file.

    Args:
        path: a YAML file, the name of a packaged rules file (``demo``), or ``None`` for the defaults.

    Raises:
        FileNotFoundError: no such file (nor packaged rules of that name).
        ValueError: naming the file, the rule and the field that is wrong.
    """
    rules = Rules()
    if path is None:
        return rules
    p = Path(path)
    if not p.exists() and (PACKAGED_RULES / f"{path}.yaml").exists():
        p = PACKAGED_RULES / f"{path}.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{path}: rules file not found (packaged rules: "
                                f"{sorted(q.stem for q in PACKAGED_RULES.glob('*.yaml'))})")
    src = str(p)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{src}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{src}: the top level must be a mapping")
    unknown = set(doc) - {"version", "dicom_modality", "sequence_patterns", "rules"}
    if unknown:
        raise ValueError(f"{src}: unknown top-level keys {sorted(unknown)}")
    if doc.get("version", 1) != 1:
        raise ValueError(f"{src}: unsupported version {doc.get('version')!r} (expected 1)")
    rules.source = src
    for k, v in (doc.get("dicom_modality") or {}).items():
        try:
            rules.dicom_modality[str(k).upper()] = canonical_modality(v)
        except ValueError as err:
            raise _err(src, f"dicom_modality.{k}", str(err)) from None
    extra = []
    for i, item in enumerate(doc.get("sequence_patterns") or []):
        where = f"sequence_patterns[{i}]"
        if not isinstance(item, dict) or "regex" not in item:
            raise _err(src, where, "each entry needs 'regex' and 'sequence' (null for unsupported)")
        try:
            seq = canonical_sequence(item.get("sequence"))
            extra.append((re.compile(str(item["regex"]), re.I), seq))
        except (ValueError, re.error) as err:
            raise _err(src, where, str(err)) from None
    rules.sequence_patterns = extra + rules.sequence_patterns
    for i, item in enumerate(doc.get("rules") or []):
        where = f"rules[{i}]"
        if not isinstance(item, dict):
            raise _err(src, where, "each rule must be a mapping")
        unknown = set(item) - {"glob", "regex", "modality", "sequence", "patient", "exclude", "slices"}
        if unknown:
            raise _err(src, where, f"unknown keys {sorted(unknown)}")
        if ("glob" in item) == ("regex" in item):
            raise _err(src, where, "give exactly one of 'glob' or 'regex'")
        try:
            expr = fnmatch.translate(str(item["glob"])) if "glob" in item else str(item["regex"])
            pattern = re.compile(expr)
            modality = canonical_modality(item["modality"]) if item.get("modality") else None
            sequence = canonical_sequence(item.get("sequence"))
        except (ValueError, re.error) as err:
            raise _err(src, where, str(err)) from None
        if not item.get("exclude") and modality is None and "modality" not in pattern.groupindex:
            if not any(k in item for k in ("patient", "slices", "sequence")) and "patient" not in pattern.groupindex:
                raise _err(src, where, "a rule must exclude, or set a modality, sequence, patient or slices")
        rules.rules.append(Rule(
            index=i, pattern=pattern, modality=modality, sequence=sequence,
            patient=str(item["patient"]) if item.get("patient") else None,
            exclude=str(item["exclude"]) if item.get("exclude") else None,
            slices=_parse_slices(src, where, item["slices"]) if "slices" in item else None,
        ))
    return rules
