"""Test material: a small DICOM series built from pydicom's real CT slice."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

__all__ = ["write_ct_series"]


def write_ct_series(folder: Path, n_slices: int, spacing: float = 2.5, offset_per_slice: int = 0) -> Path:
    """Write ``n_slices`` copies of ``CT_small.dcm`` as one series (z = k * spacing) into ``folder``.

    Slice ``k`` gets ``k * offset_per_slice`` added to its stored pixel values, so tests can tell
    the slices apart after loading.
    """
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n_slices):
        ds = copy.deepcopy(src)
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * spacing]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if offset_per_slice:
            ds.PixelData = (src.pixel_array + k * offset_per_slice).astype(src.pixel_array.dtype).tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(folder / f"slice{k}.dcm", enforce_file_format=True)
    return folder
