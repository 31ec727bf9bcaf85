"""Experiment tracking for the training bundles through MONAI's bundle tracking (MLflow).

``python -m monai.bundle run ... --tracking hicur_monai/training/mlflow.json`` patches the bundle's
trainer and validator with MONAI's :class:`~monai.handlers.MLFlowHandler` (the file is MONAI's
default MLflow settings with three changes): the training loss is read by :func:`scalar_loss`, which
takes both the dict output of the HCMAE trainer and the decollated list of MONAI's supervised
trainer; at the end the run logs the executed config and the bundle's pictures and history files
(its ``tracking_artifacts`` key) through :func:`run_artifacts` (MONAI's own reference to the config
file is wrong when ``output_dir`` is given as a plain path); and it logs the bundle's ``tracking_params``.
Only rank 0 logs under DDP.
The store is a local SQLite file by default (``<output_dir>/mlruns.db``; MLflow 3 no longer takes
a plain-folder store); ``--tracking_uri`` and ``--experiment_name`` override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["MLFLOW_SETTINGS", "run_artifacts", "scalar_loss"]

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


def run_artifacts(output_dir: str, extra: Any = ()) -> list[str]:
    """The files a tracked run logs at the end: the newest executed config MONAI wrote into ``output_dir``
    (``config_<time>.json``) and ``extra`` (the bundle's pictures and history files; missing ones are skipped
    by the handler)."""
    configs = sorted(Path(output_dir).glob("config_*.json"))
    return [str(c) for c in configs[-1:]] + [str(x) for x in extra]
