"""The demo cohort: synthetic NPC-like data plus real samples from installed packages."""

from __future__ import annotations

from hicur_monai.data.demo.cohort import PRESETS, CohortPreset, generate_demo_cohort, load_datalist

__all__ = ["PRESETS", "CohortPreset", "generate_demo_cohort", "load_datalist"]
