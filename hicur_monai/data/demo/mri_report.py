"""Free-text MRI radiology reports of the demo cohort, written from the tumour spec and the mask.

Each study gets ``reports/mri/<study>.txt`` (the report a radiologist would write: site and
side, walls, size, signal, necrosis, extension, nodes, impression with the radiological T/N)
and ``reports/mri/<study>.json`` (its ground truth: the spec, the extensions as a full
``{name: true/false}`` map, the nodes and the measurements taken from the mask). The wording
varies by study; what it says follows :class:`~hicur_monai.data.demo.tumour.TumourSpec`,
which the mask was grown to fit, so report, mask and clinical row agree.

The wording belongs to this generator only (no parser imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hicur_monai.data.demo.tumour import EXTENSIONS, TumourSpec

__all__ = ["mri_report", "measure_tumour"]

_WALL_WORDS = {
    "roof": ["the roof", "the nasopharyngeal vault", "the roof of the nasopharynx"],
    "posterior_wall": ["the posterior wall", "the posterior nasopharyngeal wall", "the posterior pharyngeal wall"],
}
_EXT_YES = {
    "nasal_cavity": ["It extends anteriorly through the choana into the {side} posterior nasal cavity.",
                     "Anterior extension into the nasal cavity."],
    "oropharynx": ["It extends inferiorly into the oropharynx.", "Inferior extension to the oropharyngeal wall."],
    "parapharyngeal_space": ["The {side} parapharyngeal space is infiltrated.",
                             "There is extension into the {side} parapharyngeal fat.",
                             "The tumour breaches the pharyngobasilar fascia into the {side} parapharyngeal space."],
    "skull_base": ["There is erosion of the skull base (clivus / basisphenoid) with marrow replacement.",
                   "Skull base invasion: the clivus shows loss of its normal marrow signal.",
                   "Bony skull base involvement is present."],
    "intracranial": ["There is intracranial extension into the {side} middle cranial fossa / cavernous sinus.",
                     "Intracranial extension is seen on the {side}.",
                     "The tumour extends intracranially on the {side}."],
}
_EXT_NO = {
    "nasal_cavity": ["The nasal cavity is clear.", "No extension into the nasal cavity."],
    "oropharynx": ["No extension to the oropharynx.", "The oropharynx is not involved."],
    "parapharyngeal_space": ["The parapharyngeal fat planes are preserved.", "No parapharyngeal extension."],
    "skull_base": ["The skull base is intact.", "No skull base erosion.", "Normal clival marrow signal."],
    "intracranial": ["No intracranial extension.", "There is no intracranial involvement."],
}
_HEADER = ["MRI NASOPHARYNX AND NECK", "MRI of the nasopharynx (T1, T2, post-contrast T1)",
           "Nasopharyngeal MRI with gadolinium", ""]
_TECHNIQUE = ["Technique: axial T1, T2 and contrast-enhanced T1 weighted images.",
              "Axial T1W, T2W and post-gadolinium T1W sequences were obtained.", ""]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def measure_tumour(mask: np.ndarray, affine: np.ndarray, necrosis: np.ndarray | None = None) -> dict[str, Any]:
    """Volume (mL), extent (mm, x/y/z) and centroid (world mm) of a tumour mask."""
    idx = np.argwhere(mask > 0)
    if not len(idx):
        raise ValueError("empty tumour mask: nothing to measure")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    extent = (idx.max(axis=0) - idx.min(axis=0) + 1) * spacing
    out = {"volume_ml": round(float(len(idx) * np.prod(spacing) / 1000.0), 3),
           "extent_mm": [round(float(v), 1) for v in extent],
           "centroid_mm": [round(float(v), 2) for v in world.mean(axis=0)],
           "voxels": int(len(idx))}
    if necrosis is not None:
        out["necrosis_voxels"] = int(np.count_nonzero(necrosis))
    return out


def _nodes_text(spec: TumourSpec, rng: np.random.Generator) -> str:
    side = spec.side
    parts = []
    if spec.rp_node_sides:
        where = "bilateral retropharyngeal" if spec.rp_node_sides == 2 else f"{side} retropharyngeal"
        parts.append(f"Enlarged {where} lymph node{'s' if spec.rp_node_sides == 2 else ''}.")
    if spec.neck_node_sides:
        where = "bilateral cervical" if spec.neck_node_sides == 2 else f"{side} cervical"
        level = ("levels II-IV and the supraclavicular fossa" if spec.lower_neck
                 else _pick(rng, ["level II", "levels II-III"]))
        parts.append(f"Enlarged {where} lymph nodes at {level}.")
    if parts and spec.nodal_necrosis:
        parts.append(_pick(rng, ["Some nodes show central necrosis.", "Nodal necrosis is present."]))
    if not parts:
        parts.append(_pick(rng, ["No enlarged retropharyngeal or cervical lymph nodes.",
                                 "No cervical or retropharyngeal lymphadenopathy."]))
    return "Lymph nodes: " + " ".join(parts)


def _nodes_truth(spec: TumourSpec) -> dict[str, Any]:
    def sides(n: int) -> str:
        return {0: "none", 1: spec.side, 2: "bilateral"}[int(n)]

    return {"retropharyngeal": sides(spec.rp_node_sides), "cervical": sides(spec.neck_node_sides),
            "lower_neck": spec.lower_neck, "necrosis": spec.nodal_necrosis}


def mri_report(spec: TumourSpec, measured: dict[str, Any], rng: np.random.Generator,
               study: str = "", patient: str = "") -> tuple[str, dict[str, Any]]:
    """The report text and its ground truth for one study.

    Args:
        spec: the patient's tumour.
        measured: :func:`measure_tumour` of the study's mask.
        rng: the report's wording stream.
    """
    side, other = spec.side, ("right" if spec.side == "left" else "left")
    walls = [_pick(rng, _WALL_WORDS[w]) for w in spec.walls if w in _WALL_WORDS]
    ex = measured["extent_mm"]
    size = f"{ex[0]:.0f} x {ex[1]:.0f} x {ex[2]:.0f} mm (volume about {measured['volume_ml']:.1f} mL)"
    lines = [h for h in (_pick(rng, _HEADER), _pick(rng, _TECHNIQUE)) if h]
    body = [_pick(rng, [
        f"An irregular soft-tissue mass arises from the {side} lateral wall of the nasopharynx, "
        f"effacing the {side} fossa of Rosenmüller.",
        f"There is an asymmetric mass centred on the {side} fossa of Rosenmüller (the {side} lateral "
        "nasopharyngeal wall).",
        f"A {side}-sided nasopharyngeal mass is seen, arising from the {side} pharyngeal recess.",
    ])]
    if walls:
        body.append("It involves " + " and ".join(walls) + ".")
    body.append(f"The {other} lateral wall is spared.")
    body.append(f"It measures about {size}.")
    body.append(_pick(rng, ["It is iso-intense to muscle on T1, hyper-intense on T2 and enhances after contrast.",
                            "Intermediate T1 and high T2 signal with avid enhancement."]))
    if spec.necrosis:
        body.append(_pick(rng, ["There is a central non-enhancing necrotic area.",
                                "A necrotic core is seen (no enhancement, high T2 signal)."]))
    for name in EXTENSIONS:
        options = _EXT_YES[name] if name in spec.extensions else _EXT_NO[name]
        body.append(_pick(rng, options).format(side=side))
    lines.append("Findings: " + " ".join(body))
    lines.append(_nodes_text(spec, rng))
    lines.append(f"Impression: {side}-sided nasopharyngeal carcinoma, radiological stage T{spec.t_stage} "
                 f"N{spec.n_stage} (AJCC 7th edition).")
    truth = {
        "study": study, "patient": patient, "modality": "mri",
        "side": side, "walls": list(spec.walls),
        "extensions": {name: name in spec.extensions for name in EXTENSIONS},
        "necrosis": spec.necrosis, "nodes": _nodes_truth(spec),
        "t_stage": spec.t_stage, "n_stage": spec.n_stage,
        "measured": measured, "tumour": spec.to_json(),
    }
    return "\n".join(lines) + "\n", truth
