"""Synthetic head-and-neck MRI (T1, T2, T1C) and CT volumes with an NPC primary tumour.

What it is: a procedural phantom, drawn from a few dozen ellipsoids, laid out like an axial
head-and-neck MRI from the oropharynx to the middle cranial fossa. At the nasopharynx:
the airway with its lateral recesses (fossae of Rosenmüller) and tori, the mucosal
pharyngeal walls, the two longus capitis muscles in front of the clivus / C1 (cortex and
bright marrow), the parapharyngeal fat either side, the pterygoid muscles in their fat
planes, the mandibular rami, the parotid glands, the carotid arteries and jugular veins
(flow voids), the spinal canal (CSF, cord) and the nuchal muscles; anteriorly the nasal
cavity (septum, turbinates) and the maxillary sinuses. Above the nasopharyngeal roof the
skull base (basisphenoid, clivus, sphenoid sinus, petrous ridges, mastoids, foramina
ovale) with the temporal lobes in the middle cranial fossae; the brain above it; the soft
palate, tonsils and oropharynx below. Each study jitters the size, position and levels.

The tumour arises from one lateral wall (the fossa of Rosenmüller) and is grown to fit the
patient's :class:`~hicur_monai.data.demo.tumour.TumourSpec`: it covers exactly the walls
and extension regions the spec names (parapharyngeal space, nasal cavity, oropharynx, skull
base, intracranial through the bone or the foramen ovale) and no others, and carries a
necrotic core when the spec says so. :attr:`Phantom.regions` holds those regions.

Sequences differ as the radiology of NPC does: the tumour is nearly iso-intense to muscle
on T1, hyper-intense on T2 and enhances on T1C, except its necrotic core (dark on T1C,
bright on T2); fat and marrow are bright on T1; air, cortical bone and flowing blood dark.
CT is in Hounsfield units (air -1000, fat -100, soft tissue ~40, tumour ~55, bone ~950).
All sequences of a study share the voxel grid and the tumour mask (co-registered by
construction). A multiplicative bias field and Rician-like noise make the intensities
imperfect, as real scanners do.

World axes are RAS (x increases to the patient's right, y anteriorly, z superiorly; mm),
and so are the voxel axes: the affine written with each volume is diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from scipy import ndimage

from hicur_monai.data.demo.tumour import T_STAGE_TUMOUR_RADIUS_MM, TumourSpec, draw_tumour

__all__ = ["Phantom", "make_phantom", "render", "study_fields", "write_study", "T_STAGE_TUMOUR_RADIUS_MM",
           "TISSUES"]

# tissue labels (the first seven are those of the first phantom)
_BG, _FAT, _MUSCLE, _BONE, _AIR, _TUMOUR, _MUCOSA, _MARROW, _GLAND, _CSF, _BRAIN, _NECROSIS, _VESSEL = range(13)

#: tissue label -> name, as :attr:`Phantom.tissue` holds them
TISSUES: dict[int, str] = {
    _BG: "background", _FAT: "fat", _MUSCLE: "muscle", _BONE: "cortical bone", _AIR: "air", _TUMOUR: "tumour",
    _MUCOSA: "mucosa", _MARROW: "marrow", _GLAND: "parotid", _CSF: "CSF", _BRAIN: "brain", _NECROSIS: "necrosis",
    _VESSEL: "flowing blood",
}

# mean intensity per tissue, per sequence (arbitrary MR units; CT in HU), in label order
_INTENSITY = {
    "T1": (0.0, 0.95, 0.45, 0.06, 0.02, 0.40, 0.50, 0.80, 0.68, 0.12, 0.55, 0.26, 0.04),
    "T2": (0.0, 0.70, 0.28, 0.05, 0.02, 0.68, 0.80, 0.55, 0.60, 0.97, 0.50, 0.92, 0.04),
    "T1C": (0.0, 0.90, 0.50, 0.06, 0.02, 0.85, 0.82, 0.82, 0.72, 0.12, 0.58, 0.24, 0.10),
    "CT": (-1000.0, -100.0, 40.0, 950.0, -1000.0, 55.0, 35.0, 350.0, 15.0, 8.0, 35.0, 20.0, 45.0),
}


@dataclass
class Phantom:
    """One synthetic study: tissue label map, tumour mask and the voxel-to-world affine.

    Attributes:
        regions: named boolean maps the tumour is checked against: the walls (``left_wall``,
            ``right_wall``, ``roof``, ``posterior_wall``), the extension regions of
            :data:`~hicur_monai.data.demo.tumour.EXTENSIONS`, ``airway`` and ``necrosis``.
        tumour: the spec the tumour was grown from.
        landmarks: world coordinates (mm) of the levels: ``nasopharynx_floor_z``,
            ``nasopharynx_roof_z``, ``skull_base_top_z`` and the choanae's ``choanae_y``.
    """

    tissue: np.ndarray  # (X, Y, Z) uint8 tissue labels
    mask: np.ndarray  # (X, Y, Z) uint8 tumour mask
    affine: np.ndarray  # 4x4
    t_stage: int
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    tumour: TumourSpec | None = None
    landmarks: dict[str, float] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return cast(tuple[float, float, float], tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3)))


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Coordinates in mm, centred on the volume."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, c: Any, r: Any) -> np.ndarray:
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def _ellipse(x: np.ndarray, y: np.ndarray, c: Any, r: Any) -> np.ndarray:
    """An elliptic cylinder along z (``c`` may vary with z)."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 <= 1.0


def _superellipse(x: np.ndarray, y: np.ndarray, c: Any, r: Any, p: float = 3.0) -> np.ndarray:
    """A rounded box along z."""
    return (np.abs(x - c[0]) / r[0]) ** p + (np.abs(y - c[1]) / r[1]) ** p <= 1.0


def _rotated_ellipse(x: np.ndarray, y: np.ndarray, c: Any, r: Any, theta: float) -> np.ndarray:
    u = (x - c[0]) * np.cos(theta) + (y - c[1]) * np.sin(theta)
    v = -(x - c[0]) * np.sin(theta) + (y - c[1]) * np.cos(theta)
    return (u / r[0]) ** 2 + (v / r[1]) ** 2 <= 1.0


class _Painter:
    """Paints tissue labels into a volume (later strokes cover earlier ones)."""

    def __init__(self, shape: tuple[int, int, int]):
        self.tissue = np.zeros(shape, np.uint8)

    def __call__(self, where: np.ndarray, label: int, only: int | None = None) -> None:
        where = np.broadcast_to(where, self.tissue.shape)
        if only is not None:
            where = where & (self.tissue == only)
        self.tissue[where] = label


def _full(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(a, shape).copy()


def _head_and_neck(paint: _Painter, x: np.ndarray, y: np.ndarray, z: np.ndarray, lm: dict[str, float]) -> None:
    """Skin, subcutaneous fat, the cranial vault and brain, and the neck below the nasopharynx."""
    zr, zs = lm["roof"], lm["skull"]
    low = np.minimum(z, 0.0)
    rx, ry = 73.0 + 0.2 * low, 93.0 + 0.2 * low
    face = (((x / rx) ** 2 + (y / ry) ** 2) <= 1.0) & (z < zs)
    cranium = _ellipsoid(x, y, z, (0, -6, zr), (70, 86, 75))
    paint(face | cranium, _FAT)
    paint(((((x / (rx - 7)) ** 2 + (y / (ry - 7)) ** 2) <= 1.0) & (z < zs)) | _ellipsoid(x, y, z, (0, -6, zr),
                                                                                         (63, 79, 68)), _MUSCLE)
    paint(_ellipsoid(x, y, z, (0, -6, zr), (63, 79, 68)) & (z >= zs), _BONE)
    paint(_ellipsoid(x, y, z, (0, -6, zr), (58, 74, 63)) & (z >= zs), _BRAIN)


def _neck_structures(paint: _Painter, x: np.ndarray, y: np.ndarray, z: np.ndarray, lm: dict[str, float]) -> None:
    """Below the skull base: spine, deep spaces, jaw, parotids, vessels."""
    zf, zr = lm["floor"], lm["roof"]
    lo = z < zr
    cy = -46.0 + 0.15 * z  # spinal canal
    vy = -23.0 + 0.3 * np.minimum(z, zr)  # clivus / C1-C2 body, sloping forward as it rises
    paint(_ellipse(x, y, (0, cy), (16, 15)) & (y < cy + 4) & lo, _BONE)
    paint(_ellipse(x, y, (0, cy), (11, 10)) & lo, _CSF)
    paint(_ellipse(x, y, (0, cy), (6.5, 5.5)) & lo, _BRAIN)
    paint(_ellipse(x, y, (0, vy), (12.5, 9.5)) & lo, _BONE)
    paint(_ellipse(x, y, (0, vy), (9.0, 6.5)) & lo, _MARROW)
    paint((np.abs(x) < 2.0) & (y < cy - 16) & lo, _FAT, only=_MUSCLE)  # nuchal ligament
    for sx in (-1.0, 1.0):
        paint((np.abs(sx * x - 22 - 0.35 * (y + 70)) < 1.7) & (y < -58) & lo, _FAT, only=_MUSCLE)  # muscle plane
        paint(_ellipsoid(x, y, z, (sx * 19, -30, zf - 4), (6, 8, 9)), _BONE)  # C1 lateral mass
        paint(_ellipsoid(x, y, z, (sx * 19, -30, zf - 4), (4, 6, 7)), _MARROW)
        paint(_ellipsoid(x, y, z, (sx * 53, -14, -6), (12, 16, 30)) & lo, _GLAND)  # parotid
        paint(_ellipsoid(x, y, z, (sx * 46, 40, -8), (8, 10, 16)), _FAT)  # buccal fat
        for c, r in (((sx * 34, 14, -6), (6, 13, 26)), ((sx * 42, 26, 8), (5.5, 9, 10))):  # pterygoids
            paint(_ellipsoid(x, y, z, c, (r[0] + 2.5, r[1] + 2.5, r[2] + 2)) & lo, _FAT)
            paint(_ellipsoid(x, y, z, c, r) & lo, _MUSCLE)
        ramus = _ellipse(x, y, (sx * 50, 14), (5, 14)) & (z < zr - 6) & (z > -62)
        paint(ramus, _BONE)
        paint(_ellipse(x, y, (sx * 50, 14), (2.6, 10)) & ramus, _MARROW)
        paint(_ellipse(x, y, (sx * 26, -15), (9, 8)) & lo, _FAT)  # carotid space
        paint(_ellipse(x, y, (sx * 23, -11), (3.2, 3.2)) & lo, _VESSEL)  # internal carotid artery
        paint(_ellipse(x, y, (sx * 30, -19), (4.2, 4.2)) & lo, _VESSEL)  # internal jugular vein
        paint(_ellipsoid(x, y, z, (sx * 24, 8, 0), (6.5, 14, 26)) & lo, _FAT)  # parapharyngeal fat
        paint(_ellipsoid(x, y, z, (sx * 8.5, -7, -8), (8.5, 7.5, 34)) & lo, _FAT)  # prevertebral fat
    for sx in (-1.0, 1.0):
        paint(_ellipsoid(x, y, z, (sx * 8.5, -7, -8), (6, 5.5, 32)) & lo, _MUSCLE)  # longus capitis
    oro = z < zf
    paint(_superellipse(x, y, (0, 7), (18, 14)) & oro & (z > zf - 45), _MUCOSA)  # oropharyngeal wall
    for sx in (-1.0, 1.0):
        paint(_ellipsoid(x, y, z, (sx * 12, 8, zf - 16), (5, 6, 12)), _MUCOSA)  # palatine tonsils
    paint(_superellipse(x, y, (0, 7), (10, 6)) & oro, _AIR)
    paint(_ellipsoid(x, y, z, (0, 18, zf - 8), (11, 4.5, 10)), _MUCOSA)  # soft palate
    paint((np.abs(x) < 24) & (y > 20) & (y < 72) & (z > zf - 4) & (z < zf + 2), _BONE)  # hard palate
    jaw = _ellipse(x, y, (0, 28), (50, 54)) & ~_ellipse(x, y, (0, 28), (44, 48)) & (y > 14) & (z < -36)
    paint(jaw, _BONE)


def _skull_base(paint: _Painter, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                lm: dict[str, float]) -> dict[str, np.ndarray]:
    """Between the nasopharyngeal roof and the top of the skull base; returns the foramina ovale per side."""
    zr, zs = lm["roof"], lm["skull"]
    sb = (z >= zr) & (z < zs)
    paint(_ellipsoid(x, y, z, (0, -52, zs + 4), (42, 28, 22)) & (z >= zr + 2), _BRAIN)  # posterior fossa
    foramina = {}
    for sx, side in ((-1.0, "left"), (1.0, "right")):
        paint(_ellipsoid(x, y, z, (sx * 38, 0, zs + 2), (24, 31, 18)) & (z >= zr), _BONE)  # middle fossa floor
        paint(_ellipsoid(x, y, z, (sx * 38, 0, zs + 2), (21, 28, 15)), _BRAIN)  # temporal lobe
        paint(_ellipsoid(x, y, z, (sx * 47, -32, zr + 4), (10, 12, 13)), _BONE)  # mastoid
        paint(_ellipsoid(x, y, z, (sx * 47, -32, zr + 4), (6, 8, 9)), _AIR)  # mastoid air cells
        paint(_rotated_ellipse(x, y, (sx * 31, -20), (22, 6), sx * 0.7) & sb, _BONE)  # petrous ridge
        foramina[side] = _ellipse(x, y, (sx * 22, 4), (4.2, 4.2)) & sb
    paint(_ellipse(x, y, (0, 2), (27, 33)) & sb, _BONE)  # basisphenoid / basiocciput
    paint(_ellipse(x, y, (0, -10), (12, 12)) & sb, _MARROW)  # clivus
    paint(_ellipsoid(x, y, z, (0, 20, zr + 9), (12, 9, 9)) & (z >= zr), _AIR)  # sphenoid sinus
    paint(foramina["left"] | foramina["right"], _MUSCLE)  # foramina ovale (V3 in fat)
    for sx in (-1.0, 1.0):
        paint(_ellipse(x, y, (sx * 23, -11), (3.2, 3.2)) & sb & (z < zr + 8), _VESSEL)  # petrous carotid
    return foramina


def _nose_and_nasopharynx(paint: _Painter, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                           lm: dict[str, float]) -> dict[str, np.ndarray]:
    """Nasal cavity, maxillary sinuses and the nasopharynx; returns the airway and the fossae."""
    zf, zr = lm["floor"], lm["roof"]
    for sx in (-1.0, 1.0):
        paint(_ellipsoid(x, y, z, (sx * 31, 46, 6), (15.5, 18.5, 22)), _BONE)
        paint(_ellipsoid(x, y, z, (sx * 31, 46, 6), (13, 16, 20)), _AIR)  # maxillary sinus
    nasal = _ellipse(x, y, (0, 50), (13, 26)) & (z >= zf) & (z < zr)
    paint(nasal, _AIR)
    paint(nasal & (np.abs(x) < 2.2), _MUCOSA)  # septum
    for sx in (-1.0, 1.0):
        for zt in (zf + 9, zf + 22):
            paint(_ellipsoid(x, y, z, (sx * 10, 48, zt), (4, 19, 5)) & nasal, _MUCOSA)  # turbinates
    mid = (zf + zr) / 2
    paint(_superellipse(x, y, (0, 12), (16, 13)) & (z >= zf - 2) & (z < zr), _MUCOSA)  # pharyngeal walls
    dome = zr - 3.0 - 6.0 * (x / 12.0) ** 2
    airway = _superellipse(x, y, (0, 12), (12, 9)) & (z >= zf - 2) & (z < dome)
    airway = airway | ((np.abs(x) < 10) & (y > 18) & (y < 27) & (z >= zf) & (z < dome))  # choanae
    fossae = {side: _ellipsoid(x, y, z, (sx * 13.5, 4.5, mid), (4, 3.2, (zr - zf) / 2 - 2))
              for sx, side in ((-1.0, "left"), (1.0, "right"))}
    paint(airway | fossae["left"] | fossae["right"], _AIR)
    for sx in (-1.0, 1.0):
        paint(_ellipsoid(x, y, z, (sx * 12.5, 15, mid + 3), (3.5, 4, (zr - zf) / 2 - 4)), _MUCOSA)  # torus
    return {"airway": airway, **{f"fossa_{k}": v for k, v in fossae.items()}}


def _regions(x: np.ndarray, y: np.ndarray, z: np.ndarray, shape: tuple[int, int, int], lm: dict[str, float],
             tissue: np.ndarray, air: dict, foramina: dict) -> dict[str, np.ndarray]:
    """The walls and extension regions the tumour spec names (full boolean volumes)."""
    zf, zr, zs = lm["floor"], lm["roof"], lm["skull"]
    choanae = 23.0
    np_level = (z >= zf) & (z < zr)
    airway = _full(air["airway"] | air["fossa_left"] | air["fossa_right"], shape)
    pps = {side: _full(_ellipsoid(x, y, z, (sx * 24, 8, 0), (7.5, 15, 27)) & np_level & (y < choanae), shape)
           for sx, side in ((-1.0, "left"), (1.0, "right"))}
    zone = _full(_superellipse(x, y, (0, 12), (21, 18)) & np_level & (y < choanae), shape)
    zone &= ~airway & ~pps["left"] & ~pps["right"]
    top = float(z[z < zr].max()) if (z < zr).any() else zr  # the highest nasopharyngeal slice is roof, however thick
    roof = zone & _full((z >= min(zr - 7.0, top)) & (np.abs(x) < 11), shape)
    posterior = zone & ~roof & _full((y < 2) & (np.abs(x) < 10), shape)
    lateral = zone & ~roof & ~posterior
    sb = (z >= zr) & (z < zs)
    ext = {
        "nasal_cavity": _full(_ellipse(x, y, (0, 50), (14, 27)) & (y >= choanae) & np_level, shape),
        "oropharynx": _full(_superellipse(x, y, (0, 7), (20, 16)) & (z < zf) & (z > zf - 30) & (y < choanae),
                            shape),
        "parapharyngeal_space": pps["left"] | pps["right"],
        "skull_base": _full(_ellipse(x, y, (0, 2), (27, 33)) & sb & ~(foramina["left"] | foramina["right"]), shape),
        "intracranial": (tissue == _BRAIN) & _full(z >= zr, shape),
    }
    outside = np.logical_or.reduce(list(ext.values()))  # walls and extension regions do not overlap
    walls = {
        "left_wall": ((lateral & _full(x < 0, shape)) | _full(air["fossa_left"], shape)) & ~outside,
        "right_wall": ((lateral & _full(x > 0, shape)) | _full(air["fossa_right"], shape)) & ~outside,
        "roof": roof & ~outside,
        "posterior_wall": posterior & ~outside,
    }
    return {**walls, **ext, "parapharyngeal_left": pps["left"], "parapharyngeal_right": pps["right"],
            "foramen_left": _full(foramina["left"], shape), "foramen_right": _full(foramina["right"], shape),
            "airway": airway}


def _tumour_lobes(spec: TumourSpec, lm: dict[str, float], rng: np.random.Generator, min_rz: float
                  ) -> dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]]:
    """Ellipsoids (centre, radii in canonical mm) the tumour grows from, per wall / extension."""
    sx, r = spec.sign, spec.radius_mm
    zf, zr, zs = lm["floor"], lm["roof"], lm["skull"]
    zmid = (zf + zr) / 2 + float(rng.normal(0.0, 2.0))
    core = (sx * 14.0, 6.0, zmid)
    primary: list[tuple[tuple[float, ...], tuple[float, ...]]] = [(core, (r, 0.85 * r, max(1.1 * r, min_rz)))]
    for _ in range(int(rng.integers(2, 5))):
        off = rng.normal(0.0, 0.35 * r, size=3)
        radii = r * rng.uniform(0.45, 0.8, size=3)
        primary.append((tuple(np.add(core, off)), (radii[0], radii[1], max(radii[2], min_rz))))
    return {
        f"{spec.side}_wall": primary,
        "roof": [((sx * 4.0, 11.0, zr - 4.0), (0.8 * r, 0.7 * r, max(8.0, min_rz)))],
        "posterior_wall": [((sx * 4.0, -1.0, zmid), (0.8 * r, 6.0, max(0.9 * r, min_rz)))],
        "parapharyngeal_space": [((sx * 23.0, 8.0, zmid), (7.0, 0.7 * r + 4.0, max(0.8 * r, min_rz)))],
        "nasal_cavity": [((sx * 6.0, 30.0, zmid + 4.0), (7.0, 0.6 * r + 4.0, max(0.7 * r, min_rz)))],
        "oropharynx": [((sx * 9.0, 7.0, zf - 10.0), (8.0, 7.0, max(12.0, min_rz)))],
        "skull_base": [((sx * 7.0, -4.0, zr + 8.0), (0.6 * r + 4.0, 0.6 * r + 4.0, max(10.0, min_rz)))],
        "intracranial": [((sx * 20.0, 2.0, zs + 4.0), (8.0, 10.0, max(9.0, min_rz))),
                         ((sx * 22.0, 4.0, (zr + zs) / 2), (6.0, 6.0, (zs - zr) / 2 + 4.0)),
                         ((sx * 18.0, 5.0, zr - 6.0), (6.0, 6.0, max(8.0, min_rz)))],
    }


def _grow_tumour(x: np.ndarray, y: np.ndarray, z: np.ndarray, shape: tuple[int, int, int], spec: TumourSpec,
                 regions: dict[str, np.ndarray], lm: dict[str, float],
                 rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """The tumour mask: the spec's lobes, kept inside the regions it names and covering each of them."""
    lobes = _tumour_lobes(spec, lm, rng, min_rz=1.2 * spacing[2])
    named = list(spec.walls) + list(spec.extensions)
    allowed = np.zeros(shape, bool)
    for name in named:
        allowed |= regions[f"parapharyngeal_{spec.side}" if name == "parapharyngeal_space" else name]
    if "intracranial" in spec.extensions and "skull_base" not in spec.extensions:
        allowed |= regions[f"foramen_{spec.side}"]  # perineural spread through the foramen ovale
    tumour = np.zeros(shape, bool)
    for name in named:
        for c, r in lobes[name]:
            tumour |= _ellipsoid(x, y, z, c, r)
    tumour &= allowed
    for name in named:  # every named part shows in the mask, however small the draw
        part = regions[f"parapharyngeal_{spec.side}" if name == "parapharyngeal_space" else name]
        if not (tumour & part).any():
            c, r = lobes[name][0]
            grown = part & _ellipsoid(x, y, z, c, tuple(2.0 * v for v in r))
            if not grown.any():  # the nearest voxels of the part to the lobe's centre
                idx = np.argwhere(part)
                d = sum(((idx[:, i] - (shape[i] - 1) / 2) * spacing[i] - c[i]) ** 2 for i in range(2))
                grown = np.zeros(shape, bool)
                grown[tuple(idx[np.argsort(d)[:3]].T)] = True
            tumour |= grown
    return tumour


def _necrotic_core(tumour: np.ndarray, spec: TumourSpec, spacing: tuple[float, float, float]) -> np.ndarray:
    """The necrotic core: the tumour's deepest voxels (at least one), about 0.45 of the core radius."""
    depth = ndimage.distance_transform_edt(tumour, sampling=spacing)
    core = depth >= max(0.45 * spec.radius_mm, 0.5 * depth.max(), min(spacing[:2]) * 1.01)
    if not core.any():
        core = np.zeros_like(tumour)
        core[np.unravel_index(int(np.argmax(depth)), depth.shape)] = True
    return core & tumour


def _landmarks(rng: np.random.Generator) -> dict[str, float]:
    """One study's jitter: scale, shift and the levels of the nasopharyngeal floor, roof and skull base."""
    return {"scale": float(1.0 + rng.normal(0.0, 0.035)), "dx": float(rng.normal(0.0, 1.5)),
            "dy": float(rng.normal(0.0, 2.0)), "floor": float(-14.0 + rng.normal(0.0, 2.0)),
            "roof": float(20.0 + rng.normal(0.0, 2.0)), "skull": float(38.0 + rng.normal(0.0, 2.0))}


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (128, 128, 32),
    fov_mm: tuple[float, float, float] = (200.0, 200.0, 120.0),
    t_stage: int | None = None,
    tumour: TumourSpec | None = None,
) -> Phantom:
    """Draw one study's anatomy and grow its tumour.

    Args:
        rng: the random generator (one per study, for determinism).
        shape: voxel grid (X, Y, Z).
        fov_mm: field of view in mm; spacing = fov / shape.
        t_stage: 1-4 (default 2); with ``tumour`` it must agree with ``tumour.t_stage``.
        tumour: the patient's tumour; drawn from ``rng`` and ``t_stage`` when ``None``.
    """
    if tumour is None:
        stage = 2 if t_stage is None else int(t_stage)
        if stage not in T_STAGE_TUMOUR_RADIUS_MM:
            raise ValueError(f"t_stage must be 1-4, got {t_stage}")
        tumour = draw_tumour(rng, stage)
    elif t_stage is not None and int(t_stage) != tumour.t_stage:
        raise ValueError(f"t_stage {t_stage} disagrees with the tumour spec's T{tumour.t_stage}")
    spacing = cast(tuple[float, float, float], tuple(f / n for f, n in zip(fov_mm, shape)))
    lm = _landmarks(rng)
    gx, gy, gz = _grid(shape, spacing)
    x, y, z = (gx - lm["dx"]) / lm["scale"], (gy - lm["dy"]) / lm["scale"], gz  # canonical anatomy frame
    paint = _Painter(shape)
    _head_and_neck(paint, x, y, z, lm)
    _neck_structures(paint, x, y, z, lm)
    foramina = _skull_base(paint, x, y, z, lm)
    air = _nose_and_nasopharynx(paint, x, y, z, lm)
    tissue = paint.tissue
    regions = _regions(x, y, z, shape, lm, tissue, air, foramina)
    mask = _grow_tumour(x, y, z, shape, tumour, regions, lm, rng, spacing)
    necrosis = _necrotic_core(mask, tumour, spacing) if tumour.necrosis else np.zeros(shape, bool)
    tissue[mask] = _TUMOUR
    tissue[necrosis] = _NECROSIS
    regions["necrosis"] = necrosis
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing)]
    landmarks = {"nasopharynx_floor_z": lm["floor"], "nasopharynx_roof_z": lm["roof"],
                 "skull_base_top_z": lm["skull"], "choanae_y": 23.0 * lm["scale"] + lm["dy"]}
    return Phantom(tissue=tissue, mask=mask.astype(np.uint8), affine=affine, t_stage=tumour.t_stage,
                   regions=regions, tumour=tumour, landmarks={k: round(v, 3) for k, v in landmarks.items()})


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
    lut = np.array(_INTENSITY[sequence], np.float32)
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
