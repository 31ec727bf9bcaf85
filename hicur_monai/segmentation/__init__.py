"""Stage-III segmentation glue: coarse-state cache, data lists, whole-volume inference, metrics, figures.

The network is :class:`hicur_monai.networks.fusion_seg.FusionSegNet`; the bundle is
``bundles/npc_segmentation``.
"""

from __future__ import annotations

from hicur_monai.segmentation.coarse import (
    SEGMENTATION_INSTRUCTION,
    CoarseStateCache,
    CoarseStatesd,
    TextEncoderStates,
    image_hash,
    keep_last,
    with_report,
)
from hicur_monai.segmentation.data import inference_items, read_datalist, segmentation_items
from hicur_monai.segmentation.figures import ContourFigure, contour_sheet, pick_slices
from hicur_monai.segmentation.handoff import (
    VLMStates,
    coarse_provider,
    describe_coarse,
    load_checked_network,
    read_vlm_config,
    vlm_checksum,
)
from hicur_monai.segmentation.inferer import VolumeSliceInferer
from hicur_monai.segmentation.metrics import (
    EvaluationSummary,
    PerSliceMetric,
    comparison_table,
    dice_by_sequence,
    read_metrics_csv,
)
from hicur_monai.segmentation.output import (
    SaveSegmentationd,
    mask_path,
    planned_inference_items,
    report_file,
    segmentation_postprocessing,
)
from hicur_monai.segmentation.pipeline import ReportTextd, batch_filenames, coarse_prepare_batch, flat_compose, optional

__all__ = [
    "EvaluationSummary",
    "ReportTextd",
    "VLMStates",
    "batch_filenames",
    "coarse_prepare_batch",
    "coarse_provider",
    "describe_coarse",
    "flat_compose",
    "keep_last",
    "load_checked_network",
    "optional",
    "read_vlm_config",
    "vlm_checksum",
    "with_report",
    "SEGMENTATION_INSTRUCTION",
    "CoarseStateCache",
    "CoarseStatesd",
    "ContourFigure",
    "PerSliceMetric",
    "SaveSegmentationd",
    "TextEncoderStates",
    "VolumeSliceInferer",
    "comparison_table",
    "dice_by_sequence",
    "contour_sheet",
    "image_hash",
    "inference_items",
    "mask_path",
    "pick_slices",
    "planned_inference_items",
    "read_datalist",
    "read_metrics_csv",
    "report_file",
    "segmentation_items",
    "segmentation_postprocessing",
]
