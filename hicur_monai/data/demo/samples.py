"""Real sample images shipped by installed packages, copied into the demo cohort.

No NPC data is public, but several packages ship real medical images that loaders,
curation and de-identification must handle: pydicom's and pydicom-data's DICOM files (a
head CT, head MR, multi-frame MR, an MR with overlays; their headers carry test names,
IDs and dates), nibabel's test NIfTI, and scikit-image's fundus photograph (an RGB
endoscopic-style image). Each copied file records where it came from.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RealSample", "REAL_SAMPLES", "find_real_samples", "copy_real_samples"]


@dataclass(frozen=True)
class RealSample:
    """A real image file inside an installed package."""

    name: str  # file name inside the cohort's real/ folder
    package: str  # importable package that ships it
    relpath: str  # path inside the package
    modality: str
    sequence: str | None
    description: str


REAL_SAMPLES: tuple[RealSample, ...] = (
    RealSample("pydicom_CT_small.dcm", "pydicom.data", "test_files/CT_small.dcm", "ct", None,
               "pydicom test file: 128x128 CT slice (JPEG-compressed source), test patient header"),
    RealSample("pydicom_MR_small.dcm", "pydicom.data", "test_files/MR_small.dcm", "mri", "T2",
               "pydicom test file: 64x64 spin-echo MR slice, TR 4000 / TE 240 (T2-weighted)"),
    RealSample("pydicomdata_emri_small.dcm", "data_store", "data/emri_small.dcm", "mri", None,
               "pydicom-data: 10-frame 64x64 MR (enhanced MR multi-frame)"),
    RealSample("pydicomdata_MR_overlays.dcm", "data_store", "data/MR-SIEMENS-DICOM-WithOverlays.dcm", "mri", None,
               "pydicom-data: 484x484 Siemens MR with graphic overlays (burned-in-annotation test)"),
    RealSample("nibabel_anatomical.nii", "nibabel.tests", "data/anatomical.nii", "mri", "T1",
               "nibabel test data: small anatomical T1 volume"),
    RealSample("skimage_retina.jpg", "skimage.data", "retina.jpg", "endoscopy", None,
               "scikit-image: human retina fundus photograph (RGB, endoscopic-style camera image)"),
)


def _package_dir(package: str) -> Path | None:
    try:
        mod = importlib.import_module(package)
    except ImportError:
        return None
    file = getattr(mod, "__file__", None)
    return Path(file).parent if file else None


def find_real_samples() -> list[tuple[RealSample, Path]]:
    """The samples whose package is installed and whose file exists, with their source path."""
    found = []
    for sample in REAL_SAMPLES:
        base = _package_dir(sample.package)
        if base is not None and (base / sample.relpath).is_file():
            found.append((sample, base / sample.relpath))
    return found


def copy_real_samples(out_dir: Path) -> list[dict]:
    """Copy every available real sample into ``out_dir/real`` and return datalist entries.

    Entries hold paths relative to ``out_dir`` and a ``provenance`` record (package,
    version, path inside the package, description).
    """
    entries = []
    dest = out_dir / "real"
    dest.mkdir(parents=True, exist_ok=True)
    for sample, src in find_real_samples():
        shutil.copyfile(src, dest / sample.name)
        pkg_root = sample.package.split(".")[0]
        try:
            from importlib.metadata import version

            dist = {"data_store": "pydicom-data", "skimage": "scikit-image"}.get(pkg_root, pkg_root)
            ver = version(dist)
        except Exception:  # noqa: BLE001 - provenance is best effort, the file itself is what matters
            ver = "unknown"
        entries.append(
            {
                "image": f"real/{sample.name}",
                "modality": sample.modality,
                "sequence": sample.sequence,
                "patient": f"real-{Path(sample.name).stem}",
                "provenance": {
                    "package": pkg_root,
                    "version": ver,
                    "path_in_package": f"{sample.package.replace('.', '/')}/{sample.relpath}",
                    "description": sample.description,
                    "synthetic": False,
                },
            }
        )
    return entries
