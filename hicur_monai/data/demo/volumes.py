"""Synthetic head-and-neck MRI (T1, T2, T1C) and CT volumes with an NPC-like tumour.

What it is: a procedural phantom, not anatomy. A head ellipsoid with a fat rim, muscle,
a skull-base bone band and a nasopharyngeal airway; an irregular tumour (a union of
random ellipsoids) grown from the airway wall into the soft tissue, larger for higher T
stage. Sequences differ as the radiology of NPC does: the tumour is iso- to hypo-intense
on T1, hyper-intense on T2 and enhances on T1C; CT is in Hounsfield units (air -1000,
fat -100, soft tissue ~40, tumour ~55, bone ~900). All sequences of a study share the
voxel grid and the tumour mask (co-registered by construction). A multiplicative bias
field and Rician-like noise make the intensities imperfect, as real scanners do.

Voxel axes are (x: right-to-left, y: posterior-to-anterior, z: inferior-to-superior); the
affine written with each volume says so (RAS, spacing in mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["Phantom", "make_phantom", "render", "study_fields", "write_study", "T_STAGE_TUMOUR_RADIUS_MM"]

#: tumour core radius (mm) by T stage 1-4: bigger tumours for higher T
T_STAGE_TUMOUR_RADIUS_MM = {1: 9.0, 2: 12.0, 3: 15.0, 4: 19.0}

# tissue labels used internally
_BG, _FAT, _MUSCLE, _BONE, _AIR, _TUMOUR, _MUCOSA = range(7)

# mean intensity per tissue, per sequence (arbitrary MR units; CT in HU)
_INTENSITY = {
    "T1": {_BG: 0.0, _FAT: 0.95, _MUSCLE: 0.45, _BONE: 0.12, _AIR: 0.02, _TUMOUR: 0.40, _MUCOSA: 0.50},
    "T2": {_BG: 0.0, _FAT: 0.70, _MUSCLE: 0.30, _BONE: 0.08, _AIR: 0.02, _TUMOUR: 0.68, _MUCOSA: 0.75},
    "T1C": {_BG: 0.0, _FAT: 0.90, _MUSCLE: 0.50, _BONE: 0.12, _AIR: 0.02, _TUMOUR: 0.85, _MUCOSA: 0.80},
    "CT": {_BG: -1000.0, _FAT: -100.0, _MUSCLE: 40.0, _BONE: 900.0, _AIR: -1000.0, _TUMOUR: 55.0, _MUCOSA: 35.0},
}


@dataclass
class Phantom:
    """One synthetic study: tissue label map, tumour mask and the voxel-to-world affine."""

    tissue: np.ndarray  # (X, Y, Z) uint8 tissue labels
    mask: np.ndarray  # (X, Y, Z) uint8 tumour mask
    affine: np.ndarray  # 4x4
    t_stage: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3))


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Coordinates in mm, centred on the volume."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (128, 128, 32),
    fov_mm: tuple[float, float, float] = (200.0, 200.0, 120.0),
    t_stage: int = 2,
) -> Phantom:
    """Draw one study's anatomy and tumour.

    Args:
        rng: the random generator (one per study, for determinism).
        shape: voxel grid (X, Y, Z).
        fov_mm: field of view in mm; spacing = fov / shape.
        t_stage: 1-4; sets the tumour size.
    """
    if t_stage not in T_STAGE_TUMOUR_RADIUS_MM:
        raise ValueError(f"t_stage must be 1-4, got {t_stage}")
    spacing = tuple(f / n for f, n in zip(fov_mm, shape))
    x, y, z = _grid(shape, spacing)
    jitter = lambda s: float(rng.normal(0.0, s))  # noqa: E731

    head_r = (fov_mm[0] * 0.40 + jitter(3), fov_mm[1] * 0.45 + jitter(3), fov_mm[2] * 0.9)
    head = _ellipsoid(x, y, z, (0, 0, 0), head_r)
    inner = _ellipsoid(x, y, z, (0, 0, 0), (head_r[0] - 8, head_r[1] - 8, head_r[2]))
    tissue = np.zeros(shape, np.uint8)
    tissue[head] = _FAT
    tissue[inner] = _MUSCLE
    # skull-base / mandible bone: a thick arc behind and beside the nasopharynx
    bone = inner & (np.abs(np.hypot(x / 0.9, (y + 10) / 1.0) - 45 - jitter(2)) < 6)
    tissue[bone] = _BONE
    # nasopharyngeal airway: anterior-central, upper half of the volume
    na_c = (jitter(2), 12.0 + jitter(2), fov_mm[2] * 0.15 + jitter(3))
    na_r = (14.0 + jitter(1.5), 9.0 + jitter(1), fov_mm[2] * 0.35)
    airway = _ellipsoid(x, y, z, na_c, na_r)
    mucosa = _ellipsoid(x, y, z, na_c, (na_r[0] + 3, na_r[1] + 3, na_r[2] + 2)) & ~airway
    tissue[mucosa & inner] = _MUCOSA
    tissue[airway] = _AIR

    # tumour: several ellipsoids grown from a point on the lateral/posterior airway wall
    core = T_STAGE_TUMOUR_RADIUS_MM[t_stage] * float(rng.uniform(0.85, 1.15))
    side = float(rng.choice([-1.0, 1.0]))
    angle = float(rng.uniform(0.15, 0.45)) * np.pi  # between lateral and posterior
    seed_pt = (
        na_c[0] + side * na_r[0] * np.cos(angle),
        na_c[1] - na_r[1] * np.sin(angle),
        na_c[2] + jitter(na_r[2] * 0.2),
    )
    tumour = np.zeros(shape, bool)
    for _ in range(int(rng.integers(3, 6))):
        off = rng.normal(0.0, core * 0.45, size=3)
        r = core * rng.uniform(0.5, 1.0, size=3)
        r[2] = max(r[2], spacing[2] * 1.2)
        tumour |= _ellipsoid(x, y, z, tuple(np.add(seed_pt, off)), tuple(r))
    tumour &= inner & ~airway
    if not tumour.any():  # vanishingly rare; keep at least the core so every study has a tumour
        tumour = _ellipsoid(x, y, z, seed_pt, (core, core, max(core, spacing[2] * 1.2))) & inner & ~airway
    tissue[tumour] = _TUMOUR
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    return Phantom(tissue=tissue, mask=tumour.astype(np.uint8), affine=affine, t_stage=t_stage)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: int = 8) -> np.ndarray:
    """A smooth random field in about [-1, 1] (low-resolution noise, upsampled)."""
    small = rng.normal(size=tuple(max(2, s // scale) for s in shape)).astype(np.float32)
    field = ndimage.zoom(small, [s / c for s, c in zip(shape, small.shape)], order=1)
    return field / (np.abs(field).max() + 1e-6)


def study_fields(phantom: Phantom, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The smooth tissue texture and bias field of one study (shared by its sequences)."""
    shape = phantom.tissue.shape
    return _smooth_field(rng, shape, scale=4), _smooth_field(rng, shape, scale=16)


def render(
    phantom: Phantom, sequence: str, rng: np.random.Generator, fields: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Render the phantom as one MRI sequence (``T1``, ``T2``, ``T1C``; int16 units) or ``CT`` (HU).

    Args:
        fields: (tissue texture, bias field) shared by the sequences of a study; drawn when ``None``.
    """
    table = _INTENSITY[sequence]
    lut = np.array([table[i] for i in range(len(table))], np.float32)
    vol = lut[phantom.tissue]
    if fields is None:
        fields = study_fields(phantom, rng)
    texture, bias = fields
    if sequence == "CT":
        vol = vol + 12.0 * texture * (phantom.tissue != _BG)
        vol = ndimage.gaussian_filter(vol, 0.6)
        vol = vol + rng.normal(0.0, 10.0, vol.shape).astype(np.float32)
        return np.clip(vol, -1024, 3071).astype(np.int16)
    vol = vol * (1.0 + 0.08 * texture)
    vol[phantom.mask > 0] *= 1.0 + 0.12 * texture[phantom.mask > 0]  # heterogeneous tumour
    vol = ndimage.gaussian_filter(vol, 0.6)
    vol = vol * (1.0 + float(rng.uniform(0.08, 0.18)) * bias)  # scanner bias field
    sigma = 0.025
    vol = np.sqrt((vol + rng.normal(0, sigma, vol.shape)) ** 2 + rng.normal(0, sigma, vol.shape) ** 2)
    return np.clip(vol * 1000.0, 0, 32767).astype(np.int16)


def write_study(
    out_dir: Path, phantom: Phantom, sequences: tuple[str, ...], rng: np.random.Generator
) -> dict[str, Path]:
    """Write each sequence and the tumour mask of ``phantom`` as NIfTI into ``out_dir``.

    Returns:
        ``{sequence: path, ..., "mask": path}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    fields = study_fields(phantom, rng)
    for seq in sequences:
        img = nib.Nifti1Image(render(phantom, seq, rng, fields), phantom.affine)
        img.header.set_xyzt_units("mm")
        paths[seq] = out_dir / f"{seq}.nii.gz"
        _save_atomic(img, paths[seq])
    paths["mask"] = out_dir / "mask.nii.gz"
    _save_atomic(nib.Nifti1Image(phantom.mask, phantom.affine), paths["mask"])
    return paths


def _save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)
