"""MRI studies as Stage II image-report pairs: representative axial slices + the radiology report.

A study folder (``<images>/<study>/``) holds one NIfTI volume per sequence (``T1``, ``T2``,
``T1C``) and the tumour mask (``mask.nii.gz``); its report is ``<reports>/<study>.txt`` (a
``<study>.json`` sidecar gives the patient id, so the held-out split is by patient across
modalities). For each sequence the axial slice with the largest tumour area is written, with
its raw intensities, as a 2D NIfTI under the instruction folder's ``mri_slices/``, so the VLM's
loader scales it by the MRI rule (``modality: "mri"``).

The text the model learns from is the report itself: the brief caption is the sequence and the
impression line (``Axial T2 MRI: left-sided nasopharyngeal carcinoma, ...``), the detailed
description is the report without its technique line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import numpy as np

__all__ = ["SEQUENCES", "SLICE_DIR", "is_mri_folder", "representative_slice", "mri_captions", "collect_mri_pairs"]

#: the MRI sequences exported per study
SEQUENCES: tuple[str, ...] = ("T1", "T2", "T1C")
#: sub-folder of the instruction folder that receives the exported slices
SLICE_DIR = "mri_slices"
_NIFTI = (".nii.gz", ".nii")
_IMPRESSION = re.compile(r"^\s*impression\s*:\s*(.+)$", re.I | re.M)
_TECHNIQUE = re.compile(r"^\s*technique\s*:.*$\n?", re.I | re.M)


def _volume(folder: Path, name: str) -> Path | None:
    for ext in _NIFTI:
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return None


def is_mri_folder(images_dir: str | Path) -> bool:
    """True when ``images_dir`` holds study folders with a ``mask`` volume (an MRI cohort)."""
    return any(d.is_dir() and _volume(d, "mask") is not None for d in Path(images_dir).iterdir())


def representative_slice(mask: np.ndarray) -> int:
    """Index of the axial slice (last axis) with the largest tumour area.

    Raises:
        ValueError: the mask has no tumour voxel.
    """
    area = (np.asarray(mask) > 0).reshape(-1, mask.shape[-1]).sum(0)
    if not area.any():
        raise ValueError("mask has no tumour voxel")
    return int(np.argmax(area))


def mri_captions(text: str) -> tuple[str, str]:
    """``(impression, detailed)`` of a radiology report.

    Raises:
        ValueError: the report has no ``Impression:`` line.
    """
    m = _IMPRESSION.search(text)
    if m is None:
        raise ValueError("report has no 'Impression:' line")
    detailed = " ".join(ln.strip() for ln in _TECHNIQUE.sub("", text).splitlines() if ln.strip())
    return m.group(1).strip(), detailed


def _patient(report: Path, skipped: list[dict[str, str]]) -> str:
    sidecar = report.with_suffix(".json")
    if not sidecar.is_file():
        return report.stem
    try:
        return str(json.loads(sidecar.read_text(encoding="utf-8")).get("patient") or report.stem)
    except (ValueError, AttributeError):
        skipped.append({"file": str(sidecar), "reason": "sidecar is not a JSON object; patient id = stem"})
        return report.stem


def _export_study(study: Path, out_dir: Path, sequences: tuple[str, ...]) -> dict[str, str]:
    """Write each sequence's representative slice; return ``{sequence: path relative to out_dir's parent}``."""
    import nibabel as nib

    mask_path = _volume(study, "mask")
    if mask_path is None:
        raise FileNotFoundError(f"{study}: no mask.nii.gz (the representative slice needs the tumour mask)")
    try:
        z = representative_slice(np.asarray(cast(Any, nib.load(mask_path)).dataobj))
    except ValueError as err:
        raise ValueError(f"{mask_path}: {err}") from None
    out: dict[str, str] = {}
    for seq in sequences:
        path = _volume(study, seq)
        if path is None:
            raise FileNotFoundError(f"{study}: no {seq}.nii.gz")
        vol: Any = nib.load(path)  # a NIfTI image
        if vol.shape[-1] <= z or len(vol.shape) != 3:
            raise ValueError(f"{path}: shape {vol.shape} does not match its mask")
        target = out_dir / f"{study.name}_{seq}.nii.gz"
        if not target.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".tmp_{target.name}")
            nib.save(nib.Nifti1Image(np.asarray(vol.dataobj[..., z], dtype=np.float32), vol.affine), tmp)
            tmp.replace(target)
        out[seq] = f"{out_dir.name}/{target.name}"
    return out


def collect_mri_pairs(reports_dir: str | Path, images_dir: str | Path, out_dir: str | Path,
                      sequences: tuple[str, ...] = SEQUENCES) -> tuple[list[Any], list[dict[str, str]]]:
    """One :class:`~hicur_monai.data.instructions.ReportPair` per (study, sequence), slices written under ``out_dir``.

    Args:
        reports_dir: folder of ``<study>.txt`` radiology reports (``<study>.json`` sidecars).
        images_dir: folder of ``<study>/`` folders with the sequences and ``mask.nii.gz``.
        out_dir: the instruction folder; slices go to ``out_dir/mri_slices/`` and the pairs'
            ``image`` paths are relative to ``out_dir`` (their ``image_folder`` is ``"."``).

    Returns:
        ``(pairs, skipped)``: pairs sorted by id, one ``{"file", "reason"}`` per unusable study or report.
    """
    from hicur_monai.data.instructions import ReportPair

    reports_dir, images_dir, out_dir = Path(reports_dir), Path(images_dir), Path(out_dir)
    for d, what in ((reports_dir, "MRI reports"), (images_dir, "MRI studies")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    studies = {d.name: d for d in sorted(images_dir.iterdir()) if d.is_dir()}
    pairs: list[ReportPair] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    for rp in sorted(reports_dir.glob("*.txt")):
        study = studies.get(rp.stem)
        if study is None:
            skipped.append({"file": str(rp), "reason": f"no study folder named {rp.stem} under {images_dir}"})
            continue
        used.add(rp.stem)
        try:
            text = rp.read_text(encoding="utf-8")
            mri_captions(text)
            slices = _export_study(study, out_dir / SLICE_DIR, sequences)
        except (ValueError, FileNotFoundError, UnicodeDecodeError) as err:
            skipped.append({"file": str(rp), "reason": f"MRI study not usable ({err})"})
            continue
        patient = _patient(rp, skipped)
        for seq, image in slices.items():
            pairs.append(ReportPair(f"{rp.stem}_{seq}", image, rp, text, patient, modality="mri",
                                    image_folder=".", sequence=seq))
    skipped += [{"file": str(d), "reason": "no report for this study"} for s, d in studies.items() if s not in used]
    return pairs, skipped
