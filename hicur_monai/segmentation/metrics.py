"""Segmentation metrics: the original's per-slice Dice / IoU next to MONAI's per-volume 3D Dice / HD95.

:class:`PerSliceMetric` cuts binarised 3D predictions and labels into 2D slices and scores
each slice with MONAI's :func:`~monai.metrics.compute_dice` / :func:`~monai.metrics.compute_iou`,
over the slices the ground truth marks as tumour (the original's annotated slices). The
3D metrics are MONAI's :class:`~monai.metrics.DiceMetric` and
:class:`~monai.metrics.HausdorffDistanceMetric` (95th percentile), used through their Ignite
handlers in the bundle.

:func:`comparison_table` reads the ``metrics.csv`` that MONAI's ``MetricsSaver`` wrote for
each model and writes one Markdown table (fusion vs baseline), with the 3D Dice per MRI sequence
(:func:`dice_by_sequence`) when the per-volume file names name the sequence.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_iou

from hicur_monai.modality import SEQUENCES, canonical_sequence
from hicur_monai.utils.io import atomic_write_json, atomic_write_text

__all__ = ["EvaluationSummary", "PerSliceMetric", "comparison_table", "dice_by_sequence", "read_metrics_csv"]


class PerSliceMetric(CumulativeIterationMetric):
    """Mean per-slice Dice or IoU over the labelled slices of 3D volumes.

    Args:
        metric: ``"dice"`` or ``"iou"``.
        slice_axis: spatial axis of the slices (-1: axial).
        labelled_only: score only slices where the label has foreground (the original's
            annotated slices); ``False`` scores every slice (empty/empty counts as 1).
    """

    def __init__(self, metric: str = "dice", slice_axis: int = -1, labelled_only: bool = True) -> None:
        super().__init__()
        if metric not in ("dice", "iou"):
            raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
        self.metric, self.slice_axis, self.labelled_only = metric, slice_axis, labelled_only

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("PerSliceMetric needs labels")
        y_pred, y = torch.as_tensor(y_pred).float(), torch.as_tensor(y).float()
        if y_pred.shape != y.shape:
            raise ValueError(f"prediction {tuple(y_pred.shape)} and label {tuple(y.shape)} differ in shape")
        if y_pred.ndim == 5:  # (B, C, X, Y, Z) -> (B*S, C, X, Y)
            ax = 2 + (self.slice_axis % 3)
            y_pred = y_pred.movedim(ax, 1).flatten(0, 1)
            y = y.movedim(ax, 1).flatten(0, 1)
        fn = compute_dice if self.metric == "dice" else compute_iou
        scores = fn(y_pred, y, include_background=True, ignore_empty=False)
        keep = y.flatten(1).sum(1) > 0 if self.labelled_only else torch.ones(len(y), dtype=torch.bool)
        return scores.mean(1, keepdim=True)[keep]

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            return torch.tensor(float("nan"))
        return data[~torch.isnan(data)].mean()


def read_metrics_csv(path: str | os.PathLike) -> dict[str, float]:
    """The ``metrics.csv`` of MONAI's ``MetricsSaver`` (``name,value`` or ``name<TAB>value`` lines) as a dict."""
    out = {}
    with open(path, newline="") as fh:
        text = fh.read()
    delimiter = "\t" if "\t" in text else ","
    for row in csv.reader(text.splitlines(), delimiter=delimiter):
        if len(row) >= 2:
            try:
                out[row[0]] = float(row[1])
            except ValueError:
                continue
    return out


def _sequence_of(filename: str) -> str | None:
    """``T1``/``T2``/``T1C`` when a file's name (without its image extensions) names a sequence."""
    stem = Path(filename).name.split(".")[0]
    try:
        return canonical_sequence(stem)
    except ValueError:
        return None


def dice_by_sequence(raw_csv: str | os.PathLike) -> dict[str, float]:
    """Mean per-volume 3D Dice by MRI sequence, from ``MetricsSaver``'s ``val_mean_dice_3d_raw.csv``.

    Volumes are grouped by the sequence their file name names (``T1.nii.gz``, ``t1c.nrrd``...); volumes
    whose name names none are left out. Returns ``{"dice_3d_T1": ..., ...}`` for the sequences found.
    """
    groups: dict[str, list[float]] = {}
    lines = Path(raw_csv).read_text().splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    for row in csv.DictReader(lines, delimiter=delimiter):
        seq = _sequence_of(row.get("filename") or "")
        if seq is None:
            continue
        try:
            groups.setdefault(seq, []).append(float(row["mean"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{raw_csv}: volume {row.get('filename')!r} has no numeric 'mean' column") from e
    return {f"dice_3d_{seq}": sum(groups[seq]) / len(groups[seq]) for seq in SEQUENCES if seq in groups}


def comparison_table(runs: Mapping[str, str | os.PathLike], output_file: str | os.PathLike | None = None) -> str:
    """One Markdown table of the evaluation metrics of several models.

    Args:
        runs: model name -> folder (or file) with the ``metrics.csv`` of its evaluation.
        output_file: where to write the table (atomically); ``None``: only return it.
    """
    rows, names = {}, []
    for model, where in runs.items():
        p = Path(where)
        p = p / "metrics.csv" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no metrics.csv for model {model!r}; run its evaluation first")
        rows[model] = read_metrics_csv(p)
        raw = p.parent / "val_mean_dice_3d_raw.csv"
        if raw.is_file():
            rows[model].update(dice_by_sequence(raw))
        names += [k for k in rows[model] if k not in names]
    header = "| model | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    body = ""
    for model, vals in rows.items():
        cells = [("n/a" if k not in vals or math.isnan(vals[k]) else f"{vals[k]:.4f}") for k in names]
        body += f"| {model} | " + " | ".join(cells) + " |\n"
    table = header + body
    if output_file:
        atomic_write_text(output_file, table)
    return table


class EvaluationSummary:
    """Ignite handler: at the end of an evaluation, write ``summary.json`` (metrics + what the coarse states were).

    Args:
        output_file: the JSON file (``<eval_dir>/summary.json``), written atomically.
        coarse_states: the one-line description of the coarse states (``describe_coarse``), also printed,
            so every evaluation that used the stand-in says so.
    """

    def __init__(self, output_file: str | os.PathLike, coarse_states: str) -> None:
        self.output_file, self.coarse_states = Path(output_file), str(coarse_states)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        metrics = {k: _as_number(v) for k, v in engine.state.metrics.items()}
        atomic_write_json(self.output_file, {"metrics": metrics, "coarse_states": self.coarse_states})
        print(f"[evaluate] coarse_states: {self.coarse_states}")


def _as_number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v
