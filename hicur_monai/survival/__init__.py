"""Time-to-event prognosis: Efron loss, Cox PH and DeepSurv fitters, metrics, report, workflow.

Submodules (imported on use, so ``import hicur_monai.survival`` stays light):
:mod:`~hicur_monai.survival.losses`, :mod:`~hicur_monai.survival.models`,
:mod:`~hicur_monai.survival.metrics`, :mod:`~hicur_monai.survival.features`,
:mod:`~hicur_monai.survival.image_features` (features from the Stage I / II checkpoints),
:mod:`~hicur_monai.survival.workflow`, :mod:`~hicur_monai.survival.report`,
:mod:`~hicur_monai.survival.binary`, :mod:`~hicur_monai.survival.cli`.
"""

from __future__ import annotations

__all__: list[str] = []
