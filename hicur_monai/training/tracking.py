"""Experiment tracking for the training bundles through MONAI's bundle tracking (MLflow).

``python -m monai.bundle run ... --tracking hicur_monai/training/mlflow.json`` patches the bundle's
trainer and validator with MONAI's :class:`~monai.handlers.MLFlowHandler` (the file is MONAI's
default MLflow settings with two changes): the training loss is read by :func:`scalar_loss`, which
takes both the dict output of the HCMAE trainer and the decollated list of MONAI's supervised
trainer, and at the end the run logs the executed config and the bundle's pictures and history
files (its ``tracking_artifacts`` key) and its ``tracking_params``. Only rank 0 logs under DDP.
The store is a local SQLite file by default (``<output_dir>/mlruns.db``; MLflow 3 no longer takes
a plain-folder store); ``--tracking_uri`` and ``--experiment_name`` override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["MLFLOW_SETTINGS", "scalar_loss"]

#: the settings file for ``--tracking``
MLFLOW_SETTINGS = str(Path(__file__).with_name("mlflow.json"))


def scalar_loss(output: Any) -> float:
    """The training loss of an engine output: a dict with ``loss``, or a decollated list of such dicts.

    Raises:
        KeyError: the output has no ``loss``.
    """
    if isinstance(output, (list, tuple)):
        output = output[0]
    loss = output["loss"]
    return float(loss.detach().mean()) if isinstance(loss, torch.Tensor) else float(loss)
