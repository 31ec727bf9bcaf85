"""Large NIfTI volumes with bounded memory: read slab by slab, oriented as views, cut slice by slice.

The toolkit loader holds a volume several times over while it is read, scaled, oriented and
cut (the file's own dtype, float32, the scaled copy, the oriented copy, every slice's copy:
about 5-8 bytes of memory per byte of float32 volume). For volumes above
:data:`STREAM_BYTES` curation instead keeps one float32 array (filled from
``nibabel``'s array proxy a slab of slices at a time, so the file's dtype is never held
whole), orients it to LPS with NumPy views (flips and a transposition, no copy) and
normalises and writes one slice at a time. The values are the loader path's, element by
element (``tests/test_curation_hardening.py`` compares both on the same files).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["STREAM_BYTES", "SLAB_BYTES", "read_nifti_float32", "lps_view"]

#: NIfTI volumes whose float32 size is above this many bytes are streamed (64 MiB: 256 x 256 x 256)
STREAM_BYTES = 64 << 20
#: bytes of float32 read from the file per slab
SLAB_BYTES = 16 << 20
#: MONAI ``Orientation``'s default labels: the axis codes name where each axis points in RAS+ world space
_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class NonFiniteVolume(ValueError):
    """The volume holds NaN or infinite values (once cast to float32, as the loader casts them)."""


def read_nifti_float32(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A 3D NIfTI volume (or ``(X, Y, Z, 1)``) as a C-ordered float32 ``(X, Y, Z)`` array and its 4x4 affine.

    The values are what MONAI's ``NibabelReader`` then ``LoadImage(dtype=float32)`` give
    (``np.asanyarray(img.dataobj)``, scaled by the header's slope and intercept, cast to
    float32); the file is read ``SLAB_BYTES`` of slices at a time through one open handle.

    Raises:
        NonFiniteVolume: a NaN or infinite value.
        Exception: whatever nibabel raises on a damaged file.
    """
    import nibabel as nib

    img: Any = nib.load(path, keep_file_open=True)  # a NIfTI image (typed as nibabel's base class)
    full = tuple(int(s) for s in img.shape)
    if len(full) < 3 or any(s != 1 for s in full[3:]):
        raise ValueError(f"expected a 3D volume, got shape {full}")
    shape, extra = full[:3], (0,) * (len(full) - 3)  # trailing axes of size 1: a channel the loader moves first
    buf = np.empty(shape, np.float32)
    step = max(1, SLAB_BYTES // (shape[0] * shape[1] * 4))
    for k in range(0, shape[2], step):
        part = buf[:, :, k:k + step]
        index = (slice(None), slice(None), slice(k, k + step), *extra)
        part[...] = np.asanyarray(img.dataobj[index])
        if not np.isfinite(part).all():
            raise NonFiniteVolume("image contains NaN or infinite values")
    affine = np.array(img.affine, dtype=np.float64, copy=True)
    del img
    return buf, affine


def lps_view(vol: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``vol`` oriented to LPS as MONAI's ``Orientation(axcodes="LPS")`` orients it, as a view, and its affine.

    The same orientation transform (``nibabel.orientations`` from the affine to the ``LPS``
    codes with MONAI's labels), applied with ``np.flip`` and ``transpose`` (views) instead
    of copies.
    """
    from nibabel import orientations as nio

    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("LPS", labels=_LABELS))
    view = vol
    flips = tuple(ax for ax in range(vol.ndim) if ornt[ax, 1] == -1)
    if flips:
        view = np.flip(view, axis=flips)
    view = view.transpose(np.argsort(ornt[:, 0]))
    return view, affine @ nio.inv_ornt_aff(ornt, vol.shape)
