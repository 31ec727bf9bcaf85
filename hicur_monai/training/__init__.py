"""Training glue shared by the bundles: engines, handlers, data lists, feature extraction and probes."""

from __future__ import annotations

from hicur_monai.training import distributed, tracking
from hicur_monai.training.data import PretrainSampled, SelectSliced, pretrain_items, split_by_patient, volume_depth
from hicur_monai.training.engine import MaskedImageEvaluator, MaskedImageTrainer, mask_generator, output_value, unwrap
from hicur_monai.training.features import extract_features, linear_probe, load_features, probe_report
from hicur_monai.training.handlers import (
    AtomicCheckpointSaver,
    EncoderExport,
    LossHistory,
    ReconstructionFigure,
    ResumeFromCheckpoint,
    denormalize,
    latest_checkpoint,
)
from hicur_monai.training.memory import enable_huge_pages, limit_heap_retention, release_free_heap
from hicur_monai.training.optim import AdamWInBackward, adamw, is_in_backward, param_groups

__all__ = [
    "AdamWInBackward",
    "AtomicCheckpointSaver",
    "EncoderExport",
    "LossHistory",
    "ResumeFromCheckpoint",
    "MaskedImageEvaluator",
    "MaskedImageTrainer",
    "PretrainSampled",
    "ReconstructionFigure",
    "adamw",
    "SelectSliced",
    "denormalize",
    "distributed",
    "tracking",
    "extract_features",
    "is_in_backward",
    "latest_checkpoint",
    "enable_huge_pages",
    "limit_heap_retention",
    "release_free_heap",
    "linear_probe",
    "load_features",
    "mask_generator",
    "output_value",
    "param_groups",
    "pretrain_items",
    "probe_report",
    "split_by_patient",
    "unwrap",
    "volume_depth",
]
