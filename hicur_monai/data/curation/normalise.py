"""Curation's one normalisation: the shared :class:`~hicur_monai.transforms.ScaleIntensityByModality`, quantised.

Every curated intensity is the transform's: a whole image or volume goes through the transform
itself (:func:`normalise_image`); everything cut or tabulated goes through its two halves, the
modality's window (:meth:`~hicur_monai.transforms.ScaleIntensityByModality.window`: CT's fixed
Hounsfield window, MRI's percentiles of the whole image or volume) and
:meth:`~hicur_monai.transforms.ScaleIntensityByModality.apply_window`, which together are the
rule exactly. Integer DICOM pixels take a table: the window applied once to every value the
pixels can take (:func:`window_table`), then one gather per image (:func:`grey_display`).

The normalised ``[0, 1]`` values are stored quantised (:func:`quantise`): uint16 x
:data:`~hicur_monai.transforms.array.STORED_GREY_MAX` for grey images, uint8 x
:data:`~hicur_monai.transforms.array.STORED_RGB_MAX` for RGB, rounded to the nearest step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from hicur_monai.data.curation.qc import is_constant
from hicur_monai.data.curation.reasons import CurationReject
from hicur_monai.modality import CT, MRI
from hicur_monai.transforms.array import STORED_GREY_MAX, STORED_RGB_MAX

__all__ = [
    "CuratedSlice",
    "ct_table",
    "display_slice",
    "grey_display",
    "modality_window",
    "mri_table",
    "normalise_array",
    "normalise_image",
    "normalise_window",
    "quantise",
    "rescale",
    "slice_from_display",
    "window_table",
]

_CONSTANT = "intensities are constant between the scaling percentiles"


@dataclass
class CuratedSlice:
    """One output image: the display array (``(rows, columns)`` uint16 or ``(rows, columns, 3)`` uint8).

    Attributes:
        index: slice index in the oriented volume; None for 2D inputs.
        display: the quantised image; None for a constant slice (an ``empty_slice`` row).
        value_max: the stored value of normalised 1.0.
        phash: the perceptual hash when the reader computed it already (same value, no copy).
    """

    index: int | None
    display: np.ndarray | None
    value_max: int
    width: int
    height: int
    channels: int
    spacing: tuple[float, float]
    phash: str | None = None


def _transform(modality: str, rgb_max: float = 255.0) -> Any:
    from hicur_monai.transforms import ScaleIntensityByModality

    return ScaleIntensityByModality(modality, rgb_max=rgb_max)


def normalise_image(img: Any, modality: str, rgb_max: float = 255.0) -> Any:
    """``ScaleIntensityByModality(modality, rgb_max=rgb_max)(img)`` (a whole image or volume).

    Raises:
        CurationReject: ``constant_image`` when MRI intensities are constant between the percentiles.
    """
    try:
        return _transform(modality, rgb_max)(img)
    except ValueError:
        raise CurationReject("constant_image", _CONSTANT) from None


def modality_window(img: Any, modality: str) -> tuple[float, float]:
    """The transform's window of ``img`` (:meth:`~hicur_monai.transforms.ScaleIntensityByModality.window`).

    Raises:
        CurationReject: ``constant_image`` when MRI intensities are constant between the percentiles.
    """
    try:
        return _transform(modality).window(img)
    except ValueError:
        raise CurationReject("constant_image", _CONSTANT) from None


@contextmanager
def _plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain tensors inside (no metadata to carry, no MetaTensor overhead)."""
    from monai.data import get_track_meta, set_track_meta

    track = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(track)


def _numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def normalise_array(img: np.ndarray, modality: str) -> np.ndarray:
    """:func:`normalise_image` of a 2D float32 array, as a NumPy array of the same shape."""
    import torch

    with _plain_tensors():
        return _numpy(normalise_image(torch.from_numpy(img[None]), modality))[0]


def normalise_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``apply_window(values, *window)`` on a float32 array, as a NumPy array of the same shape."""
    import torch

    from hicur_monai.transforms import ScaleIntensityByModality

    with _plain_tensors():
        return _numpy(ScaleIntensityByModality.apply_window(torch.from_numpy(values), *window))


def rescale(px: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """The DICOM rescale ``px * slope + intercept`` in float32 (as MONAI's ``PydicomReader`` applies it)."""
    if slope != 1.0:
        img = np.multiply(px, np.float32(slope), dtype=np.float32)
        if intercept != 0.0:
            img += np.float32(intercept)
        return img
    return np.add(px, np.float32(intercept), dtype=np.float32)  # the usual case (CT: intercept only): one pass


def quantise(norm: np.ndarray, owned: bool = False) -> tuple[np.ndarray, int]:
    """Normalised ``[0, 1]`` values -> (uint16 x STORED_GREY_MAX if 2D, else uint8 x STORED_RGB_MAX, that maximum),
    rounded to the nearest step. ``owned``: ``norm`` may be overwritten."""
    vmax = STORED_GREY_MAX if norm.ndim == 2 else STORED_RGB_MAX
    if owned and norm.dtype == np.float32 and norm.flags.c_contiguous:
        q = np.multiply(norm, np.float32(vmax), out=norm)  # the transform's fresh output: scaled in place
    else:
        q = np.multiply(norm, np.float32(vmax), dtype=np.float32, order="C")
    np.rint(q, out=q)
    return q.astype(np.uint16 if norm.ndim == 2 else np.uint8), vmax


def slice_from_display(index: int | None, disp: np.ndarray, width: int, height: int, channels: int,
                       spacing: tuple[float, float], owned: bool = False) -> CuratedSlice:
    """A normalised display-order slice (``(rows, columns)`` or ``(rows, columns, 3)``), quantised.

    A slice that is constant once quantised is kept as ``display=None`` (an ``empty_slice`` row).
    ``owned``: ``disp`` may be overwritten.
    """
    out, vmax = quantise(disp, owned)
    return CuratedSlice(index, None if is_constant(out) else out, vmax, width, height, channels, spacing)


def display_slice(index: int | None, a: np.ndarray, spacing: tuple[float, float]) -> CuratedSlice:
    """A normalised channel-first ``(C, X, Y)`` slice in [0, 1] -> its display array (uint16 grey or uint8 RGB)."""
    channels, width, height = (int(s) for s in a.shape)
    disp = a[0].T if channels == 1 else a[:3].transpose(2, 1, 0)
    return slice_from_display(index, disp, width, height, channels, spacing)


def window_table(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint16 display value of each of ``values`` (float32, 1D) under ``window``: normalised, then quantised."""
    norm = normalise_window(np.ascontiguousarray(values, dtype=np.float32)[None], window)
    return quantise(np.ascontiguousarray(norm, dtype=np.float32), owned=True)[0].reshape(-1)


def ct_table(tables: dict[tuple[str, float, float], np.ndarray], dtype: Any, slope: float, intercept: float
             ) -> np.ndarray:
    """uint16 output of every stored value of ``dtype`` (indexed by the value's unsigned bit pattern).

    Each entry is what the direct path gives for that value: DICOM rescale, the shared CT window,
    quantisation. Built once per (dtype, slope, intercept) and kept in ``tables``.
    """
    key = (np.dtype(dtype).str, slope, intercept)
    lut = tables.get(key)
    if lut is None:
        unsigned = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint8
        stored = np.arange(np.iinfo(unsigned).max + 1, dtype=unsigned).view(dtype)  # bit pattern -> value
        lut = tables[key] = window_table(rescale(stored, slope, intercept), modality_window(None, CT))
    return lut


def mri_table(index: np.ndarray) -> np.ndarray:
    """uint16 output of the values ``0..index.max()`` under the MRI rule with ``index``'s own window.

    Raises:
        CurationReject: ``constant_image`` when the image is constant between the percentiles.
    """
    return window_table(np.arange(int(index.max()) + 1, dtype=np.float32), modality_window(index, MRI))


def _tabulated(px: np.ndarray, modality: str, slope: float, intercept: float) -> bool:
    """Whether integer pixels go through a table: CT (element-wise rule) or MRI without rescale and
    without negative values (the table holds the values 0..max)."""
    if px.dtype.kind not in "ui" or px.dtype.itemsize > 2:
        return False
    if modality == CT:
        return True
    return (modality == MRI and slope == 1.0 and intercept == 0.0
            and (px.dtype.kind == "u" or int(px.min()) >= 0))


def grey_display(px: np.ndarray, modality: str, slope: float, intercept: float,
                 tables: dict[tuple[str, float, float], np.ndarray]) -> np.ndarray:
    """The uint16 display array of a grey ``(rows, columns)`` image of stored DICOM values.

    Integer CT and MRI pixels go through a table (:func:`ct_table`, cached in ``tables``;
    :func:`mri_table`, the image's own window), everything else through the rescale and the
    shared transform directly; both give the same values (``tests/test_curation.py`` compares them).

    Raises:
        CurationReject: ``constant_image``.
    """
    if _tabulated(px, modality, slope, intercept):
        index = px.view(np.uint16 if px.dtype.itemsize == 2 else np.uint8)  # the unsigned bit pattern
        lut = ct_table(tables, px.dtype, slope, intercept) if modality == CT else mri_table(index)
        return np.take(lut, index)  # a gather: 2x faster than lut[index] for 16-bit indices
    return quantise(normalise_array(rescale(px, slope, intercept), modality), owned=True)[0]
