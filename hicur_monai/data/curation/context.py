"""What the per-file curation steps share: the run's settings, a worker's state, one file's rows.

:class:`CurateConfig` travels to every worker (the salt in memory only, never to disk);
:class:`WorkerState` is built once per worker process (loader, pseudonymiser, caches);
:class:`FileContext` is the manifest rows of the file being curated, filled in by the readers
(:mod:`.readers`) as they learn who and what the file is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from hicur_monai.data.curation.deid import Pseudonymizer
from hicur_monai.data.curation.discover import Found
from hicur_monai.data.curation.identify import Identity
from hicur_monai.data.curation.manifest import source_columns
from hicur_monai.data.curation.rules import Rules

__all__ = [
    "DEFAULT_MAX_DECODED_MB",
    "IMAGE_FORMATS",
    "INPUT_FORMATS",
    "CurateConfig",
    "FileContext",
    "WorkerState",
]

#: output formats of curated images
IMAGE_FORMATS = ("npy", "png")
#: input formats curation reads (``npy`` is an output format only)
INPUT_FORMATS = ("dicom", "nifti", "nrrd", "png", "jpeg")
#: default limit of the decoded size of one file (voxels x channels x 4 bytes, MiB): 512 x 512 x 512 float32
DEFAULT_MAX_DECODED_MB = 512


@dataclass
class CurateConfig:
    """Everything a worker needs (the salt travels in memory only, never to disk).

    Attributes:
        out_dir: curation output folder.
        rules: parsed rules file.
        salt: the pseudonymisation key.
        shard: ``"i/n"``.
        min_size: smallest accepted in-plane side (pixels).
        max_side: largest accepted side (pixels / slices).
        max_voxels: largest accepted voxel count of one file.
        max_decoded_bytes: largest decoded size of one file (voxels x channels x 4 bytes, float32), checked
            from the header before any decoding.
        redact_source_paths: write ``redacted:<source_id>`` instead of every source path.
        image_format: ``"npy"`` (uncompressed, default) or ``"png"``.
        png_compress_level: zlib level of written PNGs (1 = fast, 9 = small).
        keep_dicom_header: also store the PS3.15-de-identified DICOM header (DICOM JSON) beside each image
            (``<image>.dicom.json``; in a ``dicom`` text chunk for PNG).
    """

    out_dir: str
    rules: Rules
    salt: str
    shard: str = "0/1"
    min_size: int = 32
    max_side: int = 8192
    max_voxels: int = 1 << 29
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_MB << 20
    redact_source_paths: bool = False
    image_format: str = "npy"
    png_compress_level: int = 1
    keep_dicom_header: bool = False

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")


class WorkerState:
    """One worker's state: the settings, the pseudonymiser, the toolkit loader and its caches.

    Attributes:
        folders: output folders already created by this worker.
        tables: CT lookup tables by (pixel dtype, rescale slope, intercept) (:func:`.normalise.ct_table`).
    """

    def __init__(self, cfg: CurateConfig) -> None:
        from hicur_monai.transforms import LoadMedicalImage

        self.cfg = cfg
        self.pseudo = Pseudonymizer(cfg.salt)
        self.loader = LoadMedicalImage(dtype=np.float32)
        self.folders: set[str] = set()
        self.tables: dict[tuple[str, float, float], np.ndarray] = {}


@dataclass
class FileContext:
    """The file being curated and its input row.

    Attributes:
        found: the discovered path.
        base: the columns every row of the file repeats (source path / id, shard).
        row: the file's input row.
    """

    found: Found
    base: dict[str, Any]
    row: dict[str, Any]

    def identified(self, ident: Identity, pseudo: Pseudonymizer) -> str:
        """Record the file's identity (patient pseudonym, modality, sequence, group, acquisition) and
        return the patient pseudonym."""
        patient = pseudo.patient(ident.patient_key)
        self.row.update(patient=patient, modality=ident.modality, sequence=ident.sequence or "",
                        group_id=pseudo.group(ident.group_key or self.found.rel),
                        acq_params=json.dumps(ident.acq, sort_keys=True) if ident.acq else "")
        return patient

    def redact_source(self) -> None:
        """Record keyed ids only for this file's path (the path names its patient)."""
        redacted = source_columns(self.found.rel, self.base["source_id"], True)
        self.base.update(redacted)
        self.row.update(redacted)

    def scrub(self, msg: str) -> str:
        """``msg`` without the file's absolute path or folder, at most 300 characters."""
        out = str(msg)
        for s in sorted({self.found.path, os.path.dirname(self.found.path)}, key=len, reverse=True):
            if s and len(s) > 1:
                out = out.replace(s, "<file>")
        return out[:300]
