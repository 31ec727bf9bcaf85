"""Pictures of segmentations: slices with the true (green) and predicted (red) contours.

:func:`contour_sheet` draws chosen slices of 3D volumes; :class:`ContourFigure` is an Ignite
handler for a MONAI evaluator that keeps the first volumes of each evaluation and writes
the sheet to a PNG (and to TensorBoard when a writer is given).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from hicur_monai.utils.io import atomic_open

__all__ = ["contour_sheet", "pick_slices", "ContourFigure"]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pick_slices(label: np.ndarray, pred: np.ndarray | None = None, n: int = 3, axis: int = -1) -> list[int]:
    """Up to ``n`` slice indices: the largest tumour areas of the label (or of the prediction), spread out."""
    lab = label.reshape(label.shape[-3:]) if label.ndim > 3 else label
    area = np.moveaxis(lab, axis, 0).reshape(lab.shape[axis], -1).sum(1)
    if area.max() == 0 and pred is not None:
        pr = pred.reshape(pred.shape[-3:]) if pred.ndim > 3 else pred
        area = np.moveaxis(pr, axis, 0).reshape(pr.shape[axis], -1).sum(1)
    order = [int(i) for i in np.argsort(-area, kind="stable")]
    if area.max() == 0:
        return [len(area) // 2]
    picked = sorted(order[: max(1, n)])
    return picked


def contour_sheet(
    images: Sequence[Any],
    labels: Sequence[Any | None],
    preds: Sequence[Any],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    slices_per_volume: int = 3,
    axis: int = -1,
    suptitle: str | None = None,
) -> Path:
    """Write a PNG of slices with true (green) and predicted (red) contours.

    Args:
        images: channel-first 3D volumes ``(C, X, Y, Z)`` (channel 0 is drawn) or 2D images.
        labels: ground-truth masks (or ``None``), same grid as the images.
        preds: predicted masks, same grid.
        path: output PNG (written atomically).
        titles: one title per volume.
        slices_per_volume: slices drawn per volume (the largest tumour areas).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not images:
        raise ValueError("contour_sheet: no images to draw")
    tiles = []
    for v, (img, lab, prd) in enumerate(zip(images, labels, preds)):
        im, pr = _np(img)[0], _np(prd)[0]
        lb = None if lab is None else _np(lab)[0]
        if im.ndim == 2:
            tiles.append((im, lb, pr, titles[v] if titles else ""))
            continue
        for k in pick_slices(lb if lb is not None else pr, pr, slices_per_volume, axis):
            lb_k = None if lb is None else np.take(lb, k, axis=axis)
            title = f"{titles[v] if titles else v} z={k}"
            tiles.append((np.take(im, k, axis=axis), lb_k, np.take(pr, k, axis=axis), title))
    ncols = min(6, len(tiles))
    nrows = (len(tiles) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (im, lb, pr, title) in zip(axes.flat, tiles):
        lo, hi = np.percentile(im, [0.5, 99.5])
        ax.imshow(np.rot90(im), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        if lb is not None and lb.max() > 0:
            ax.contour(np.rot90(lb), levels=[0.5], colors="lime", linewidths=0.9)
        if pr.max() > 0:
            ax.contour(np.rot90(pr), levels=[0.5], colors="red", linewidths=0.9)
        ax.set_title(title, fontsize=7)
    fig.suptitle(suptitle or "green: ground truth, red: prediction", fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


class ContourFigure:
    """Ignite handler: after each evaluation, draw the first ``n_volumes`` volumes with their contours.

    Args:
        output_file: PNG path (overwritten atomically each evaluation).
        n_volumes: volumes kept per evaluation.
        summary_writer: optional TensorBoard ``SummaryWriter`` (the sheet goes there as an image).
        tag: TensorBoard tag.
        global_epoch_transform: maps the evaluator's state to the step logged (default: the trainer
            epoch when the evaluator is run by a ``ValidationHandler``).
    """

    def __init__(self, output_file: str | os.PathLike, n_volumes: int = 4, summary_writer: Any = None,
                 tag: str = "contours") -> None:
        self.output_file = Path(output_file)
        self.n_volumes = int(n_volumes)
        self.writer = summary_writer
        self.tag = tag
        self._kept: list[tuple[Any, Any, Any, str]] = []
        self.calls = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _e: self._kept.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._draw)

    def _keep(self, engine: Engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for it in items:
            if len(self._kept) >= self.n_volumes or not isinstance(it, dict) or "pred" not in it:
                continue
            img = it["image"]
            name = Path(str(getattr(img, "meta", {}).get("filename_or_obj", len(self._kept)))).parent.name
            self._kept.append((_np(img), None if it.get("label") is None else _np(it["label"]), _np(it["pred"]), name))

    def _draw(self, engine: Engine) -> None:
        if not self._kept:
            return
        imgs, labs, preds, names = zip(*self._kept)
        contour_sheet(list(imgs), list(labs), list(preds), self.output_file, titles=list(names))
        self.calls += 1
        if self.writer is not None:
            from PIL import Image

            arr = np.asarray(Image.open(self.output_file).convert("RGB"))
            self.writer.add_image(self.tag, arr, global_step=self.calls, dataformats="HWC")
