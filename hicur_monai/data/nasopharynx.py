"""Canonical keys for nasopharyngoscopy findings, shared by every producer and consumer.

Only *keys* live here (region names, finding names, statuses). Wording never does: the
demo report generator keeps its phrasing in :mod:`hicur_monai.data.demo.endoscopy`, the
report parser keeps its patterns in YAML files under ``hicur_monai/data/patterns/``, and
text written from findings uses ``hicur_monai/data/prompts/phrasing.yaml``.

A findings record (the demo cohort's ``reports/<id>.json`` sidecar and the parser's output)
looks like::

    {
      "findings": {"left_wall": {"congestion": "present", "neoplasm": "absent", ...}, ...},
      "impression": {"category": "inflammation", "text": "Chronic nasopharyngitis."}
    }
"""

from __future__ import annotations

__all__ = [
    "MAIN_REGIONS",
    "SUBSITES",
    "REGIONS",
    "FINDINGS",
    "STATUSES",
    "IMPRESSION_CATEGORIES",
    "empty_grid",
    "category_from_grid",
]

#: the four walls every report is organised by (as in the original workflow)
MAIN_REGIONS: tuple[str, ...] = ("left_wall", "right_wall", "roof", "posterior_wall")
#: named sub-sites a report may mention in addition to the walls
SUBSITES: tuple[str, ...] = ("fossa_of_rosenmuller", "torus", "choanae", "nasal_cavity")
REGIONS: tuple[str, ...] = MAIN_REGIONS + SUBSITES

#: abnormal findings; "smooth/normal mucosa" is represented by all findings being absent
FINDINGS: tuple[str, ...] = ("congestion", "swelling", "neoplasm", "ulceration", "secretion", "bleeding")

#: a finding's status for a region; anything a report does not assert is "absent"
STATUSES: tuple[str, ...] = ("present", "uncertain", "absent")

#: impression categories, from least to most serious
IMPRESSION_CATEGORIES: tuple[str, ...] = ("normal", "inflammation", "suspected_neoplasm", "neoplasm")


def empty_grid(regions: tuple[str, ...] = MAIN_REGIONS) -> dict[str, dict[str, str]]:
    """A region x finding grid with every finding ``"absent"``."""
    return {r: {f: "absent" for f in FINDINGS} for r in regions}


def category_from_grid(grid: dict[str, dict[str, str]]) -> str:
    """The impression category a findings grid implies (walls only): any neoplasm present ->
    ``neoplasm``; uncertain -> ``suspected_neoplasm``; any other finding -> ``inflammation``;
    else ``normal``."""
    cells = [g for r, g in grid.items() if r in MAIN_REGIONS]
    if any(g.get("neoplasm") == "present" for g in cells):
        return "neoplasm"
    if any(g.get("neoplasm") == "uncertain" for g in cells):
        return "suspected_neoplasm"
    if any(s != "absent" for g in cells for s in g.values()):
        return "inflammation"
    return "normal"
