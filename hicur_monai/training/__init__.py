"""Training: generic engines and handlers, and the stage-I (HCMAE pretraining) glue.

Generic (any bundle):

* :mod:`~hicur_monai.training.engine`: MONAI engines for networks that compute their own
  self-supervised losses, seeded mask generators, ``output_transform`` helpers.
* :mod:`~hicur_monai.training.handlers`: atomic resumable checkpoints, loss history.
* :mod:`~hicur_monai.training.optim`: AdamW parameter groups and a fused AdamW.
* :mod:`~hicur_monai.training.distributed`, :mod:`~hicur_monai.training.tracking`: DDP and
  experiment tracking.

Stage I (``bundles/hcmae_pretrain``):

* :mod:`~hicur_monai.training.data`: image datalists (one item per 2D image or slice).
* :mod:`~hicur_monai.training.hcmae`: the bundle's pipeline, figure/export handlers, evaluation.
* :mod:`~hicur_monai.training.features`: frozen features and linear probes.

Opt-in, never imported here: :mod:`hicur_monai.training.cpu_lean` (CPU memory/speed tuning
for the ``cpu_lean.json`` overlay). Patient splits live in :mod:`hicur_monai.data.splits`.
"""

from __future__ import annotations

from hicur_monai.training import distributed, tracking
from hicur_monai.training.data import PretrainSampled, SelectSliced, pretrain_items, volume_depth
from hicur_monai.training.engine import (
    MaskedImageEvaluator,
    MaskedImageTrainer,
    mask_generator,
    output_value,
    scalar_outputs,
    unwrap,
)
from hicur_monai.training.features import extract_features, linear_probe, load_features, probe_report
from hicur_monai.training.handlers import AtomicCheckpointSaver, LossHistory, ResumeFromCheckpoint, latest_checkpoint
from hicur_monai.training.hcmae import (
    EncoderExport,
    PretrainEvaluation,
    ReconstructionFigure,
    denormalize,
    pretrain_transforms,
)
from hicur_monai.training.optim import adamw, param_groups

__all__ = [
    "AtomicCheckpointSaver",
    "EncoderExport",
    "LossHistory",
    "MaskedImageEvaluator",
    "MaskedImageTrainer",
    "PretrainEvaluation",
    "PretrainSampled",
    "ReconstructionFigure",
    "ResumeFromCheckpoint",
    "SelectSliced",
    "adamw",
    "denormalize",
    "distributed",
    "extract_features",
    "latest_checkpoint",
    "linear_probe",
    "load_features",
    "mask_generator",
    "output_value",
    "param_groups",
    "pretrain_items",
    "pretrain_transforms",
    "probe_report",
    "scalar_outputs",
    "tracking",
    "unwrap",
    "volume_depth",
]
