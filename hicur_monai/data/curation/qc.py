"""Quality-control checks of the curation pipeline, each failing with its own reason code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hicur_monai.data.curation.reasons import CurationReject
from hicur_monai.modality import ENDOSCOPY

__all__ = ["check_shape", "check_image", "is_constant"]


def check_shape(shape: Sequence[int], cfg: Any, channels: int = 1) -> None:
    """Reject absurd, wrong-dimensional and too-small shapes read from a header (before decoding).

    ``shape`` is the spatial shape (2D, or 3D with slices last; a trailing 4th axis > 1 is 4D).
    The decoded size, ``voxels x channels x 4`` bytes (float32, the type volumes are read as),
    must not exceed ``cfg.max_decoded_bytes``: a few-KB compressed file may declare gigabytes.

    Raises:
        CurationReject: ``wrong_dimensionality``, ``too_large`` or ``too_small``.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        return
    if len(shape) < 2 or len(shape) > 3:
        raise CurationReject("wrong_dimensionality",
                             f"{len(shape)}D data of shape {shape}; expected a 2D image or 3D volume")
    if any(s <= 0 for s in shape):
        raise CurationReject("wrong_dimensionality", f"shape {shape} has an empty axis")
    if max(shape) > cfg.max_side or int(np.prod(shape, dtype=np.int64)) > cfg.max_voxels:
        raise CurationReject("too_large",
                             f"shape {shape} exceeds the limits (side {cfg.max_side}, voxels {cfg.max_voxels})")
    decoded = int(np.prod(shape, dtype=np.int64)) * max(1, int(channels)) * 4
    if decoded > cfg.max_decoded_bytes:
        raise CurationReject("too_large",
                             f"shape {shape} x {channels} channels decodes to {decoded / (1 << 20):.0f} MiB, "
                             f"above the limit of {cfg.max_decoded_bytes / (1 << 20):.0f} MiB "
                             "(--max-decoded-mb)")
    if min(shape[:2]) < cfg.min_size:
        raise CurationReject("too_small", f"in-plane size {shape[:2]} is below the minimum {cfg.min_size}")


def is_constant(a: np.ndarray) -> bool:
    """True when every value of ``a`` is the same (empty, black, or flat images).

    A strided sample of about 1000 values is compared first: a real image differs there, and
    only images constant on the sample pay for the full comparison.
    """
    if a.size == 0:
        return True
    flat = np.ravel(a, order="K")  # a view for (transposed) contiguous arrays
    first = flat[0]
    if (flat[:: max(1, flat.size // 1024)] != first).any():
        return False
    return bool((flat == first).all())


def check_image(img: Any, modality: str, cfg: Any) -> None:
    """Checks on the decoded, channel-first image.

    Raises:
        CurationReject: ``wrong_dimensionality``, ``too_small``, ``too_large``, ``constant_image``.
    """
    shape = tuple(int(s) for s in img.shape)
    channels, spatial = shape[0], shape[1:]
    if len(spatial) not in (2, 3):
        raise CurationReject("wrong_dimensionality",
                             f"decoded array of shape {shape}; expected (C, X, Y) or (C, X, Y, Z)")
    if modality == ENDOSCOPY and (channels not in (3, 4) or len(spatial) != 2):
        raise CurationReject("wrong_dimensionality", f"endoscopy must be a 2D RGB image, got shape {shape}")
    if modality != ENDOSCOPY and channels != 1:
        raise CurationReject("wrong_dimensionality", f"{modality} must be single-channel, got {channels} channels")
    check_shape(spatial, cfg, channels)
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise CurationReject("non_finite", "image contains NaN or infinite values")
    if is_constant(a):
        raise CurationReject("constant_image", "every pixel has the same value")
