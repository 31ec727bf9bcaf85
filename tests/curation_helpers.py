"""Small corpora for the curation tests (synthetic images and real DICOMs shipped by pydicom / pydicom-data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

SALT = "test-salt-0123"


def endoscopy_frame(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random RGB frame (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    low = rng.random((6, 6, 3))
    img = np.kron(low, np.ones((size // 6, size // 6, 1)))
    img = img + 0.05 * rng.random(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_volume(path: Path, seed: int, shape: tuple[int, int, int] = (40, 40, 12), mask: bool = True) -> None:
    """A noisy ellipsoid MRI-like volume (and its mask beside it)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    body = (x**2 + y**2 + (z * 0.8) ** 2) < 0.8
    vol = (body * (100 + 50 * np.sin(3 * x + seed)) + rng.normal(0, 5, shape)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    if mask:
        m = np.zeros(shape, np.uint8)
        m[15:25, 15:25, 4:7] = 1
        nib.save(nib.Nifti1Image(m, np.diag([1.0, 1.0, 3.0, 1.0])), path.parent / "mask.nii.gz")


def small_corpus(root: Path, n_frames: int = 6, n_volumes: int = 2) -> Path:
    """``root/src`` with endoscopy frames (incl. an exact and a near duplicate) and MRI volumes."""
    src = root / "src"
    for i in range(n_frames):
        d = src / f"pat{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(endoscopy_frame(i)).save(d / f"frame{i}.png")
    # byte-identical copy, and a JPEG re-encode of frame 0 for another patient
    shutil.copy(src / "pat00/frame0.png", src / "pat90_copy.png")
    Image.fromarray(endoscopy_frame(0)).save(src / "pat91_reencoded.jpg", quality=92)
    for j in range(n_volumes):
        write_volume(src / "mri" / f"case{j}" / "T2.nii.gz", seed=j)
    return src


RULES = """\
version: 1
rules:
  - glob: "*/mask.nii.gz"
    exclude: mask
  - regex: "mri/(?P<patient>[^/]+)/(?P<sequence>T1C|T1|T2)\\\\.nii\\\\.gz$"
    modality: mri
    slices: {mask: mask.nii.gz, margin: 1}
  - regex: "src/(?P<patient>pat\\\\d\\\\d)"
    modality: endoscopy
"""


def write_rules(path: Path, text: str = RULES) -> Path:
    path.write_text(text)
    return path


def real_dicoms(dest: Path) -> list[Path]:
    """Copy real DICOMs that carry names, IDs and dates (pydicom's own and pydicom-data's)."""
    from pydicom.data import get_testdata_file

    dest.mkdir(parents=True, exist_ok=True)
    files = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    try:
        import data_store

        d = Path(data_store.__file__).parent / "data"
        files += [d / n for n in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "SC_rgb.dcm") if (d / n).exists()]
    except ImportError:
        pass
    out = []
    for f in files:
        shutil.copy(f, dest / f.name)
        out.append(dest / f.name)
    return out
