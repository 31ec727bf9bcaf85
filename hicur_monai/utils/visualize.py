"""Pictures: contact sheets of images with optional mask contours.

One place for turning channel-first MONAI tensors into something a person looks at, used
by the demo, the pretraining reconstructions and the segmentation overlays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_display", "contact_sheet"]

_CAMERA_FORMATS = ("png", "jpeg")


def to_display(img: torch.Tensor | np.ndarray, fmt: str | None = None) -> np.ndarray:
    """A channel-first 2D image ``(C, X, Y)`` as an ``(H, W)`` or ``(H, W, 3)`` array in [0, 1] for display.

    MONAI keeps the first spatial axis as x (columns): camera images (``fmt`` png / jpeg) are
    transposed back to rows-first; volume slices (NIfTI / DICOM, RAS) are transposed and
    flipped so that anterior is at the top.

    Args:
        img: the image; values outside [0, 1] are min-max scaled.
        fmt: the loader's ``format`` metadata (``img.meta["format"]`` when present).
    """
    meta = getattr(img, "meta", None)
    fmt = fmt or (meta.get("format") if isinstance(meta, dict) else None)
    arr = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"to_display needs a (C, X, Y) image, got shape {arr.shape}")
    arr = np.transpose(arr, (2, 1, 0))  # (Y, X, C)
    if fmt not in _CAMERA_FORMATS:
        arr = arr[::-1]
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo + 1e-8)
    arr = np.ascontiguousarray(arr)
    return arr[..., 0] if arr.shape[-1] == 1 else arr[..., :3]


def contact_sheet(
    images: Sequence[torch.Tensor | np.ndarray],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    masks: Sequence[torch.Tensor | np.ndarray | None] | None = None,
    ncols: int = 6,
    suptitle: str | None = None,
    tile_inches: float = 2.2,
) -> Path:
    """Tile images into one PNG, with mask contours (red) where masks are given.

    Args:
        images: channel-first 2D images (see :func:`to_display`).
        path: output PNG (written atomically).
        titles: one title per tile.
        masks: one channel-first mask (or ``None``) per tile, same geometry as its image.
        ncols: tiles per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hicur_monai.utils.io import atomic_open

    if not images:
        raise ValueError("contact_sheet: no images to draw")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    height = tile_inches * nrows + (0.4 if suptitle else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile_inches * ncols, height), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        fmt = getattr(images[k], "meta", {}).get("format") if hasattr(images[k], "meta") else None
        shown = to_display(images[k], fmt)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        mask = masks[k] if masks is not None else None
        if mask is not None:
            m = to_display(mask, fmt)
            if m.ndim == 3:
                m = m[..., 0]
            if m.max() > 0:
                ax.contour(m, levels=[0.5], colors="red", linewidths=0.8)
        if titles is not None:
            ax.set_title(titles[k], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
