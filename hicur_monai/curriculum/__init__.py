"""The HiCur curriculum end to end: stage I -> II -> III in order, and the ablation table.

* :mod:`~hicur_monai.curriculum.budgets`: how much each stage trains (``tiny``, ``demo``, ``benchmark``).
* :mod:`~hicur_monai.curriculum.steps`: one step = one command + its inputs and outputs; a step whose
  outputs exist and whose inputs and command did not change is skipped.
* :mod:`~hicur_monai.curriculum.runner`: the stage steps, in order (``hicur curriculum run``).
* :mod:`~hicur_monai.curriculum.table`: the result files -> one Markdown table + one PNG chart.
"""

from __future__ import annotations

from hicur_monai.curriculum.budgets import BUDGETS, Budget, get_budget
from hicur_monai.curriculum.runner import curriculum_steps, run_curriculum
from hicur_monai.curriculum.steps import Step, StepOutcome, run_steps
from hicur_monai.curriculum.table import (
    PROGNOSIS_SETS,
    SEGMENTATION_VARIANTS,
    CurriculumResults,
    ablation_chart,
    ablation_markdown,
    load_results,
    write_ablation,
)

__all__ = [
    "BUDGETS",
    "Budget",
    "get_budget",
    "curriculum_steps",
    "run_curriculum",
    "Step",
    "StepOutcome",
    "run_steps",
    "PROGNOSIS_SETS",
    "SEGMENTATION_VARIANTS",
    "CurriculumResults",
    "ablation_chart",
    "ablation_markdown",
    "load_results",
    "write_ablation",
]
