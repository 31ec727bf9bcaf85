"""One patient's primary tumour: the single source of truth the MRI, both reports and the frame follow.

:func:`draw_tumour` turns a patient's clinical row (T, N, skull base, nodes) and a random
stream into a :class:`TumourSpec`: the side it arises on (a lateral wall, the fossa of
Rosenmüller), the walls it involves, where it extends, its size and whether it has a
necrotic core. :mod:`.volumes` grows the tumour mask to fit the spec (and checks it does),
:mod:`.mri_report` writes the radiology report from it, and :func:`endoscopy_findings`
gives the nasopharyngoscopy findings grid the frame is drawn from. So the mask, the two
reports, the frame and the clinical row agree by construction.

Extension follows the AJCC 7th-edition T categories: T1 confined to the nasopharynx (or the
nasal cavity / oropharynx), T2 parapharyngeal extension, T3 bony skull base, T4
intracranial. The skull-base and intracranial flags come from the clinical row
(``Skull Base``, ``Intracranial or Cranial Nerve``), so the table and the images agree.

The necrotic core is the cohort's image-borne prognostic factor: more likely with higher T
(:data:`NECROSIS_PROBABILITY`), so correlated with T stage but not determined by it, and
it enters the hazard with the log HR declared in ``clinical/truth.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hicur_monai.data.nasopharynx import MAIN_REGIONS, empty_grid

__all__ = [
    "EXTENSIONS",
    "NECROSIS_PROBABILITY",
    "T_STAGE_TUMOUR_RADIUS_MM",
    "TumourSpec",
    "draw_tumour",
    "endoscopy_findings",
]

#: tumour core radius (mm) by T stage 1-4: bigger tumours for higher T
T_STAGE_TUMOUR_RADIUS_MM = {1: 9.0, 2: 12.0, 3: 15.0, 4: 19.0}

#: where a primary tumour may extend beyond the nasopharyngeal walls
EXTENSIONS: tuple[str, ...] = ("nasal_cavity", "oropharynx", "parapharyngeal_space", "skull_base", "intracranial")

#: probability of a necrotic core by T stage (the image-borne prognostic factor)
NECROSIS_PROBABILITY = {1: 0.08, 2: 0.22, 3: 0.42, 4: 0.62}

#: probability that the tumour is exophytic (a visible mass at endoscopy) rather than submucosal
_EXOPHYTIC_PROBABILITY = {1: 0.6, 2: 0.75, 3: 0.85, 4: 0.9}


@dataclass(frozen=True)
class TumourSpec:
    """A primary nasopharyngeal tumour, as the MRI, both reports and the endoscopy frame show it.

    Attributes:
        side: ``"left"`` or ``"right"`` (the patient's side; world x < 0 is left in RAS).
        walls: nasopharyngeal walls involved (keys of :data:`~hicur_monai.data.nasopharynx.MAIN_REGIONS`);
            always the lateral wall of ``side`` (the fossa of Rosenmüller), where it arises.
        extensions: subset of :data:`EXTENSIONS`.
        radius_mm: core radius the mask is grown from (set by T stage, +-15%).
        necrosis: a necrotic core (non-enhancing on T1C): the image-borne prognostic factor.
        exophytic: a mass visible at endoscopy (else submucosal: a bulge, suspicious only).
        t_stage, n_stage: the clinical row's 7th-edition stages.
        rp_node_sides, neck_node_sides: retropharyngeal / cervical nodal sides (0, 1 ipsilateral, 2 bilateral).
        nodal_necrosis: necrotic nodes (the clinical row's ``All Lymph Node Necrosis``).
        lower_neck: nodes in the lower neck / supraclavicular fossa.
    """

    side: str
    walls: tuple[str, ...]
    extensions: tuple[str, ...]
    radius_mm: float
    necrosis: bool
    exophytic: bool
    t_stage: int
    n_stage: int = 0
    rp_node_sides: int = 0
    neck_node_sides: int = 0
    nodal_necrosis: bool = False
    lower_neck: bool = False

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {self.side!r}")
        if f"{self.side}_wall" not in self.walls or not set(self.walls) <= set(MAIN_REGIONS):
            raise ValueError(f"walls must include {self.side}_wall and be among {MAIN_REGIONS}: {self.walls}")
        if not set(self.extensions) <= set(EXTENSIONS):
            raise ValueError(f"unknown extensions {sorted(set(self.extensions) - set(EXTENSIONS))}")
        if self.t_stage not in T_STAGE_TUMOUR_RADIUS_MM:
            raise ValueError(f"t_stage must be 1-4, got {self.t_stage}")

    @property
    def sign(self) -> float:
        """+1 for the patient's right (world +x in RAS), -1 for the left."""
        return 1.0 if self.side == "right" else -1.0

    @property
    def nominal_volume_ml(self) -> float:
        """Volume of a sphere of ``radius_mm`` (the mask's measured volume is in the report's sidecar)."""
        return float(4.0 / 3.0 * np.pi * self.radius_mm**3 / 1000.0)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["walls"], out["extensions"] = list(self.walls), list(self.extensions)
        return out


def _bern(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def draw_tumour(
    rng: np.random.Generator,
    t_stage: int,
    n_stage: int = 0,
    skull_base: bool | None = None,
    intracranial: bool | None = None,
    rp_node_sides: int = 0,
    neck_node_sides: int = 0,
    nodal_necrosis: bool = False,
    lower_neck: bool = False,
) -> TumourSpec:
    """Draw one patient's tumour from the clinical row.

    Args:
        rng: the patient's random stream.
        t_stage, n_stage: 7th-edition stages (T 1-4, N 0-3).
        skull_base, intracranial: the clinical row's flags (``None``: T3+ / T4, as the staging implies).
        rp_node_sides, neck_node_sides, nodal_necrosis, lower_neck: the clinical row's nodal columns.
    """
    t = int(t_stage)
    if t not in T_STAGE_TUMOUR_RADIUS_MM:
        raise ValueError(f"t_stage must be 1-4, got {t_stage}")
    skull_base = t >= 3 if skull_base is None else bool(skull_base)
    intracranial = t == 4 if intracranial is None else bool(intracranial)
    side = "left" if rng.random() < 0.5 else "right"
    radius = T_STAGE_TUMOUR_RADIUS_MM[t] * float(rng.uniform(0.85, 1.15))
    ext = []
    if _bern(rng, 0.3 if t == 1 else 0.35):
        ext.append("nasal_cavity")
    if _bern(rng, 0.15):
        ext.append("oropharynx")
    if t == 2 or (t >= 3 and _bern(rng, 0.85)):
        ext.append("parapharyngeal_space")
    if skull_base:
        ext.append("skull_base")
    if intracranial:
        ext.append("intracranial")
    walls = [f"{side}_wall"]
    if _bern(rng, 0.15 + 0.15 * (t - 1) + (0.25 if skull_base else 0.0)):
        walls.append("roof")
    if _bern(rng, 0.3 + 0.1 * (t - 1)):
        walls.append("posterior_wall")
    return TumourSpec(
        side=side, walls=tuple(walls), extensions=tuple(e for e in EXTENSIONS if e in ext), radius_mm=round(radius, 3),
        necrosis=_bern(rng, NECROSIS_PROBABILITY[t]), exophytic=_bern(rng, _EXOPHYTIC_PROBABILITY[t]),
        t_stage=t, n_stage=int(n_stage), rp_node_sides=int(rp_node_sides), neck_node_sides=int(neck_node_sides),
        nodal_necrosis=bool(nodal_necrosis), lower_neck=bool(lower_neck),
    )


def endoscopy_findings(spec: TumourSpec, rng: np.random.Generator) -> dict[str, dict[str, str]]:
    """The nasopharyngoscopy findings grid of the patient's examination.

    Every involved wall shows the tumour: a ``present`` neoplasm when exophytic, an
    ``uncertain`` one with swelling (a submucosal bulge) otherwise. Necrotic tumours ulcerate
    more often. Background inflammation (congestion, secretion, swelling) is drawn independently.
    """
    grid = empty_grid()
    status = "present" if spec.exophytic else "uncertain"
    lateral = f"{spec.side}_wall"
    for wall in spec.walls:
        grid[wall]["neoplasm"] = status
    if not spec.exophytic:
        grid[lateral]["swelling"] = "present"
    else:
        if _bern(rng, 0.55 if spec.necrosis else 0.2):
            grid[lateral]["ulceration"] = "present"
        if _bern(rng, 0.25):
            grid[lateral]["bleeding"] = "present"
    if _bern(rng, 0.35):
        for wall in rng.choice(MAIN_REGIONS, size=int(rng.integers(1, 3)), replace=False):
            grid[str(wall)]["congestion"] = "present"
    if _bern(rng, 0.2):
        grid[str(rng.choice(MAIN_REGIONS))]["secretion"] = "present"
    if _bern(rng, 0.15):
        other = [w for w in MAIN_REGIONS if w not in spec.walls]
        grid[str(rng.choice(other))]["swelling"] = "present"
    return grid
