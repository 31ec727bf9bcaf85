"""DICOM SEG (highdicom) of a mask computed on a DICOM series, referencing that series.

The mask is sampled on each source slice's own pixel grid from the slice's DICOM geometry
(Image Position / Orientation (Patient), Pixel Spacing), so the SEG frames line up with the
source images whatever axis order the volume had in memory. The SEG shares the series'
Frame of Reference and lists the source instances in its Referenced Series Sequence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

__all__ = ["read_series", "slice_frame", "write_dicom_seg"]

_LPS = np.array([-1.0, -1.0, 1.0])


def read_series(folder: str | os.PathLike) -> list[pydicom.Dataset]:
    """The single-frame images of the DICOM series in ``folder``, sorted along the slice normal.

    Raises:
        ValueError: no DICOM image, more than one series, or an image without geometry (named).
    """
    from hicur_monai.segmentation.data import _is_dicom

    files = [p for p in sorted(Path(folder).iterdir()) if p.is_file() and _is_dicom(p)]
    datasets = [pydicom.dcmread(p) for p in files]
    datasets = [ds for ds in datasets if "PixelData" in ds]
    if not datasets:
        raise ValueError(f"{folder}: no DICOM image found")
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} series ({', '.join(sorted(series))}); one series per folder")
    for p, ds in zip(files, datasets):
        for attr in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"):
            if attr not in ds:
                raise ValueError(f"{p}: no {attr}; a DICOM SEG needs the series geometry")
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def slice_frame(mask: np.ndarray, affine: np.ndarray, ds: pydicom.Dataset, space: str = "RAS",
                tol: float = 0.1) -> np.ndarray:
    """The mask ``(X, Y, Z)`` sampled (nearest voxel) on the pixel grid ``(Rows, Columns)`` of the image ``ds``.

    Args:
        mask: the volume mask.
        affine: voxel -> world matrix of ``mask``.
        ds: a source image.
        space: ``"RAS"`` or ``"LPS"``, the world of ``affine`` (DICOM positions are LPS).
        tol: largest distance (in voxels) from a voxel centre before the grids count as different.

    Raises:
        ValueError: the image's pixels do not fall on the mask's voxels (another geometry).
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pos = (np.asarray(ds.ImagePositionPatient, dtype=float)[None, None, :]
           + c[..., None] * col_spacing * iop[None, None, :3] + r[..., None] * row_spacing * iop[None, None, 3:])
    if space.upper() == "RAS":
        pos = pos * _LPS
    world = np.concatenate([pos, np.ones((rows, cols, 1))], axis=-1)
    vox = world @ np.linalg.inv(affine).T
    idx = np.rint(vox[..., :3])
    if np.abs(vox[..., :3] - idx).max() > tol:
        raise ValueError(f"image {ds.SOPInstanceUID}: its pixels are not on the mask's voxel grid")
    idx = idx.astype(int)
    inside = np.all((idx >= 0) & (idx < np.asarray(mask.shape[:3])), axis=-1)
    if not inside.all():
        raise ValueError(f"image {ds.SOPInstanceUID}: lies outside the mask volume {mask.shape}")
    return mask[idx[..., 0], idx[..., 1], idx[..., 2]]


def write_dicom_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    series_dir: str | os.PathLike,
    dest: str | os.PathLike,
    overwrite: bool = False,
    segment_label: str = "NPC tumour",
    space: str = "RAS",
    software_versions: str | Sequence[str] | None = None,
) -> Path:
    """Write a binary DICOM SEG of ``mask`` (a volume on the series' voxel grid) referencing the series in
    ``series_dir``.

    Args:
        mask: ``(X, Y, Z)`` mask, non-zero = the segment.
        affine: voxel -> world matrix of ``mask`` (``space``).
        series_dir: the DICOM series the mask was computed on.
        dest: output ``.dcm`` file (refused when it exists, unless ``overwrite``).
        segment_label: the segment's label.
        space: world of ``affine`` (``"RAS"``, MONAI's default, or ``"LPS"``).
        software_versions: recorded in the SEG (default: this package's version).

    Raises:
        ValueError: the mask and the series do not share a geometry.
        FileExistsError: ``dest`` exists and ``overwrite`` is false.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from hicur_monai.segmentation.output import write_new_file

    sources = read_series(series_dir)
    frames = np.stack([slice_frame(np.asarray(mask), affine, ds, space=space) for ds in sources]).astype(bool)
    version = software_versions or _version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="hicur-monai npc_segmentation", version=str(version), family=codes.cid7162.ArtificialIntelligence,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="hicur-monai",
        manufacturer_model_name="npc_segmentation",
        software_versions=str(version),
        device_serial_number="0",
        omit_empty_frames=False,
    )
    return write_new_file(dest, lambda tmp: seg.save_as(tmp), overwrite=overwrite)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hicur-monai")
    except PackageNotFoundError:
        return "0+unknown"
