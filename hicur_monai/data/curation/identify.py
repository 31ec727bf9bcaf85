"""Identify the modality, MRI sequence and patient of a file: DICOM headers first, then rules.

Nothing is guessed: a DICOM modality outside the map, an MRI series whose sequence neither
its description nor its parameters establish, a grey PNG without a rule, a NIfTI volume
without a rule -- each is rejected with a reason (see :mod:`.reasons`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pydicom.dataset import Dataset

from hicur_monai.data.curation.dicom_values import integer, number, text, values
from hicur_monai.data.curation.reasons import CurationReject
from hicur_monai.data.curation.rules import RuleMatch, Rules, SliceSpec
from hicur_monai.modality import ENDOSCOPY, MRI

__all__ = ["Identity", "identify_dicom", "identify_by_rules", "default_patient_key", "ACQ_KEYWORDS"]

#: DICOM acquisition parameters copied to the manifest's ``acq_params`` (none of them identifies anyone)
ACQ_KEYWORDS = (
    "Modality", "Manufacturer", "MagneticFieldStrength", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
    "ScanningSequence", "SequenceVariant", "SliceThickness", "PixelSpacing", "KVP", "ConvolutionKernel",
    "BodyPartExamined", "PhotometricInterpretation", "BitsStored",
)


@dataclass
class Identity:
    """What curation knows about a file before reading its pixels."""

    modality: str
    sequence: str | None = None
    patient_key: str = ""
    group_key: str = ""
    slices: SliceSpec | None = None
    acq: dict[str, Any] = field(default_factory=dict)


def default_patient_key(rel: str) -> str:
    """Without a rule or header: the first folder under the source (``<source>/<patient>/...``), else the file stem."""
    parts = PurePosixPath(rel).parts
    if len(parts) >= 3:
        return "/".join(parts[:2])
    return str(PurePosixPath(rel).with_suffix(""))


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [_jsonable(x) for x in v]
    f = _num(v)
    if f is not None and not isinstance(v, str):
        return f
    s = str(v)
    f = _num(s)
    return f if f is not None else s


def _mri_sequence(ds: Dataset, rules: Rules) -> str:
    desc = " ".join(text(ds, k) for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    matched, seq = rules.sequence_from_text(desc)
    if matched:
        if seq is None:
            raise CurationReject("unsupported_sequence", "series description names a sequence the toolkit does not use")
        return seq
    # no telling description: the parameters (spin echo / gradient echo weighting)
    tr, te = number(ds, "RepetitionTime"), number(ds, "EchoTime")
    contrast = bool(text(ds, "ContrastBolusAgent").strip())
    if tr is not None and te is not None:
        if tr <= 1000 and te <= 30:
            return "T1C" if contrast else "T1"
        if tr >= 2000 and te >= 60:
            return "T2"
    raise CurationReject("unknown_sequence", "neither the series description nor TR/TE establish T1, T2 or T1C")


def identify_dicom(ds: Dataset, rules: Rules, match: RuleMatch | None) -> Identity:
    """Identity from a DICOM header (before de-identification); a matching rule may fill gaps.

    Header values are read with :mod:`.dicom_values` (pydicom's strings, without converting the elements).

    Raises:
        CurationReject: ``no_pixel_data``, ``localizer``, ``burned_in_annotation``, ``unknown_modality``,
            ``unknown_sequence`` or ``unsupported_sequence``.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        declared = text(ds, "Modality") or "?"
        raise CurationReject("no_pixel_data", f"DICOM object of modality {declared} has no pixel data")
    if text(ds, "BurnedInAnnotation").upper() == "YES":
        raise CurationReject("burned_in_annotation", "the header declares burned-in annotation")
    image_type = [v.upper() for v in (values(ds, "ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise CurationReject("localizer", "ImageType says LOCALIZER")
    dicom_mod = text(ds, "Modality").upper()
    modality = rules.dicom_modality.get(dicom_mod) or (match.modality if match else None)
    if modality is None:
        raise CurationReject("unknown_modality",
                             f"DICOM modality {dicom_mod or '(missing)'} is not in the modality map")
    sequence = None
    if modality == MRI:
        sequence = match.sequence if match and match.sequence else _mri_sequence(ds, rules)
    if modality == ENDOSCOPY and (integer(ds, "SamplesPerPixel", 1) or 1) != 3:
        raise CurationReject("wrong_dimensionality", "endoscopy images must be RGB (SamplesPerPixel 3)")
    patient_key = text(ds, "PatientID").strip()
    if not patient_key:
        patient_key = f"{text(ds, 'PatientName')}|{text(ds, 'PatientBirthDate')}".strip("|")
    if not patient_key and match and match.patient:
        patient_key = match.patient
    group_key = text(ds, "SeriesInstanceUID")
    acq: dict[str, Any] = {}
    for k in ACQ_KEYWORDS:
        vals = values(ds, k)
        if vals is None or vals == [""]:
            continue
        acq[k] = _jsonable(vals[0]) if len(vals) == 1 else [_jsonable(v) for v in vals]
    acq["ContrastAgent"] = bool(text(ds, "ContrastBolusAgent").strip())
    return Identity(modality=modality, sequence=sequence, patient_key=patient_key, group_key=group_key,
                    slices=match.slices if match else None, acq=acq)


def identify_by_rules(fmt: str, rel: str, match: RuleMatch | None, channels: int | None) -> Identity:
    """Identity of a non-DICOM file: from the matching rule, else RGB 2D images are endoscopy.

    Raises:
        CurationReject: ``unknown_modality`` / ``unknown_sequence``.
    """
    modality = match.modality if match else None
    if modality is None and fmt in ("png", "jpeg") and channels in (3, 4):
        modality = ENDOSCOPY
    if modality is None:
        what = "an RGB image" if channels in (3, 4) else f"a {fmt} file"
        raise CurationReject("unknown_modality", f"{what} that no rule of the rules file assigns a modality")
    sequence = match.sequence if match else None
    if modality == MRI and sequence is None:
        raise CurationReject("unknown_sequence", "MRI file without a sequence in the matching rule")
    patient_key = match.patient if match and match.patient else default_patient_key(rel)
    return Identity(modality=modality, sequence=sequence, patient_key=patient_key, group_key=rel,
                    slices=match.slices if match else None)
