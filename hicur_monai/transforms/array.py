"""Array transforms of the toolkit (the dictionary twins are in :mod:`.dictionary`).

They fill the gaps between MONAI's own transforms for the HiCur-NPC modalities:

* :class:`LoadMedicalImage`: one loader for DICOM files and series, NIfTI, NRRD and
  PNG/JPEG, choosing the MONAI reader from the file's content, not only its name.
* :class:`ScaleIntensityByModality`: CT Hounsfield windowing, MRI robust percentile
  scaling, endoscopy RGB to [0, 1], chosen by modality.
* :class:`ExtractSlices`: 3D volume to 2D slices (all, or the range a mask covers) with the
  slice position kept in the metadata, so masks can be re-assembled in 3D later.
* :class:`EnsureRGB`: grey to 3 channels (and RGBA to RGB).
* :class:`RandColorJitter`: brightness / contrast / saturation / hue jitter for RGB images
  (torchvision's functional ops, driven by MONAI's random state).
* :class:`NormalizeModelInput`: the model-input normalisation of the original system
  (:data:`MODEL_INPUT_MEAN`, :data:`MODEL_INPUT_STD`: the one place these constants live).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from monai.config import DtypeLike
from monai.data import MetaTensor, get_track_meta
from monai.data.image_reader import NumpyReader, PydicomReader
from monai.transforms import (
    LoadImage,
    NormalizeIntensity,
    RandomizableTransform,
    ScaleIntensityRange,
    Transform,
)
from monai.utils import convert_to_tensor

from hicur_monai.modality import CT, ENDOSCOPY, MRI, canonical_modality

__all__ = [
    "IMAGE_FORMATS",
    "sniff_format",
    "LoadMedicalImage",
    "ScaleIntensityByModality",
    "ExtractSlices",
    "slice_range_from_mask",
    "EnsureRGB",
    "RandColorJitter",
    "NormalizeModelInput",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_MRI_PERCENTILES",
    "STORED_MAX_KEY",
    "STORED_GREY_MAX",
    "STORED_RGB_MAX",
    "MODEL_INPUT_MEAN",
    "MODEL_INPUT_STD",
]

#: data-dict key (and curation manifest column) of the stored value of normalised intensity 1.0: an image
#: that carries it was already normalised (``hicur curate`` wrote it quantised) and is only divided by it
STORED_MAX_KEY = "value_max"
#: stored value of normalised 1.0 in curated grey (MRI / CT) images: uint16
STORED_GREY_MAX = 65535
#: stored value of normalised 1.0 in curated RGB (endoscopy) images: uint8
STORED_RGB_MAX = 255

#: format name -> MONAI reader class name
IMAGE_FORMATS: dict[str, str] = {
    "dicom": "PydicomReader",
    "nifti": "NibabelReader",
    "nrrd": "NrrdReader",
    "png": "PILReader",
    "jpeg": "PILReader",
    "npy": "NumpyReader",
}

#: soft-tissue window (level, width) in Hounsfield units
DEFAULT_CT_WINDOW: tuple[float, float] = (40.0, 400.0)
#: robust scaling percentiles for MRI
DEFAULT_MRI_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: per-channel mean of the original system's model-input normalisation, ``(x - mean) / std``, applied to
#: 3-channel images in [0, 1] (after ScaleIntensityByModality and EnsureRGB) by every network of the toolkit
MODEL_INPUT_MEAN: tuple[float, float, float] = (0.530, 0.313, 0.316)
#: per-channel standard deviation of that normalisation
MODEL_INPUT_STD: tuple[float, float, float] = (0.337, 0.237, 0.243)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def sniff_format(path: str | os.PathLike) -> str:
    """Return the image format of ``path`` (one of :data:`IMAGE_FORMATS`).

    The file's magic bytes win over its extension (a JPEG named ``.png`` is a JPEG); a
    directory is read as a DICOM series.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the format is not one the toolkit reads, or the file is empty.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty file (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(352)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b") and p.name.lower().endswith((".nii.gz", ".nii")):
        return "nifti"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    if head[:4] in (b"n+2\x00",) or (len(head) >= 8 and head[4:8] == b"n+2\x00"):
        return "nifti"
    name = p.name.lower()
    if name.endswith(".dcm"):
        return "dicom"  # DICOM without preamble (legacy); the reader decides
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    raise ValueError(f"{p}: not a DICOM, NIfTI, NRRD, PNG, JPEG or NPY file")


class _PrunedPydicomReader(PydicomReader):
    """MONAI's PydicomReader, with the same pruned metadata built without converting the whole header.

    ``PydicomReader(prune_metadata=True)`` turns every element of the header into JSON and then
    keeps five tags (orientation, position, spacing, functional groups); for single-slice
    files that conversion costs several times the pixel decoding. The result is identical.
    """

    _KEEP = ((0x0020, 0x0037), (0x0020, 0x0032), (0x0028, 0x0030), (0x5200, 0x9229), (0x5200, 0x9230))

    def _get_meta_dict(self, img: Any) -> dict:
        if not self.prune_metadata:
            return super()._get_meta_dict(img)
        out = {}
        for tag in self._KEEP:
            if tag in img:
                el = img[tag]
                out[f"{tag[0]:04X}{tag[1]:04X}"] = el.to_json_dict(bulk_data_element_handler=None,
                                                                   bulk_data_threshold=1024)
        return out


class LoadMedicalImage(Transform):
    """Load a medical image or DICOM series as a channel-first :class:`~monai.data.MetaTensor`.

    One loader for every format of the toolkit: the format is sniffed from the content
    (:func:`sniff_format`) and the matching MONAI reader is used (PyDICOM for DICOM files
    and series folders, NiBabel for NIfTI, pynrrd for NRRD, PIL for PNG/JPEG, NumPy for
    NPY arrays, which are channel-first ``(C, X, Y[, Z])`` as ``hicur curate`` writes them). The
    metadata gains ``"format"``. Spatial axes follow MONAI's convention (the first
    spatial axis is the image's x / column axis for 2D files).

    Args:
        dtype: output dtype.
        ensure_channel_first: add / move the channel axis to the front.

    Raises:
        ValueError: naming the file, when it cannot be read or contains NaN / inf.
    """

    def __init__(self, dtype: DtypeLike = np.float32, ensure_channel_first: bool = True) -> None:
        self.dtype = dtype
        self.ensure_channel_first = ensure_channel_first
        self._loaders: dict[str, LoadImage] = {}

    def _loader(self, reader: str) -> LoadImage:
        if reader not in self._loaders:
            if reader == "PydicomReader":
                rd: Any = _PrunedPydicomReader()
            elif reader == "NumpyReader":
                rd = NumpyReader(channel_dim=0)
            else:
                rd = reader
            self._loaders[reader] = LoadImage(
                reader=rd, image_only=True, dtype=self.dtype, ensure_channel_first=self.ensure_channel_first,
            )
        return self._loaders[reader]

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        fmt = sniff_format(filename)
        try:
            img = self._loader(IMAGE_FORMATS[fmt])(str(filename))
        except Exception as err:  # the readers raise many types; say which file and why
            raise ValueError(f"{filename}: cannot read as {fmt}: {type(err).__name__}: {err}") from err
        if not torch.isfinite(img).all():
            raise ValueError(f"{filename}: image contains NaN or infinite values")
        if fmt == "dicom" and img.ndim == 4 and not Path(filename).is_dir() and self.ensure_channel_first:
            img = _frames_last(img)  # one file with 3 spatial axes is a multi-frame DICOM
        img.meta["format"] = fmt
        return img


def _frames_last(img: MetaTensor) -> MetaTensor:
    """Put the frames of a multi-frame DICOM on the last spatial axis: ``(C, X=columns, Y=rows, Z=frames)``.

    MONAI's PydicomReader swaps the first two axes of ``(frames, rows, columns)``, giving
    ``(rows, frames, columns)`` for multi-frame files; volumes everywhere else in the toolkit
    are ``(X, Y, Z)``. Multi-frame files often lack per-frame positions, so the affine is the
    in-plane voxel order with unit spacing (the geometry is not known).
    """
    data = img.as_tensor().permute(0, 3, 1, 2).contiguous()
    meta = dict(img.meta)
    affine = torch.eye(4, dtype=torch.float64)
    meta["spatial_shape"] = tuple(int(s) for s in data.shape[1:])
    meta.pop("affine", None)
    meta["original_affine"] = affine.clone()
    return MetaTensor(data, affine=affine, meta=meta)


def _source(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<array>"))


class ScaleIntensityByModality(Transform):
    """Scale intensities to [0, 1] the way each modality needs.

    * ``ct``: Hounsfield window ``(level, width)``, clipped (soft tissue 40/400 by default).
    * ``mri``: robust percentile scaling over the whole volume (0.5-99.5 by default), clipped.
    * ``endoscopy``: 8-bit RGB divided by ``rgb_max`` (255), clipped.

    An image that is already normalised and stored quantised (``hicur curate``'s outputs: uint16
    grey x :data:`STORED_GREY_MAX`, uint8 RGB x :data:`STORED_RGB_MAX`) is not scaled again by
    its modality's rule: called with ``stored_max``, any modality is divided by it and clipped.

    Args:
        modality: fixed modality; when ``None`` it must be given at call time.
        ct_window: (level, width) in HU.
        mri_percentiles: (lower, upper) percentiles.
        rgb_max: the value that maps to 1 for endoscopy images.
    """

    def __init__(
        self,
        modality: str | None = None,
        ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
        mri_percentiles: Sequence[float] = DEFAULT_MRI_PERCENTILES,
        rgb_max: float = 255.0,
    ) -> None:
        self.modality = canonical_modality(modality) if modality else None
        level, width = float(ct_window[0]), float(ct_window[1])
        if width <= 0:
            raise ValueError(f"ct_window width must be > 0, got {width}")
        self.ct_window = (level, width)
        lo, hi = float(mri_percentiles[0]), float(mri_percentiles[1])
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"mri_percentiles must satisfy 0 <= lower < upper <= 100, got {mri_percentiles}")
        self.mri_percentiles = (lo, hi)
        self.rgb_max = float(rgb_max)
        self._ct = ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0,
                                       clip=True)

    def __call__(self, img: torch.Tensor | np.ndarray, modality: str | None = None,
                 stored_max: float | None = None) -> torch.Tensor:
        """Scale ``img`` by its modality's rule, or by ``stored_max`` (an already-normalised, quantised image).

        Raises:
            ValueError: no modality, a non-positive ``stored_max``, or a constant MRI image.
        """
        if stored_max is not None:
            smax = float(stored_max)
            if not smax > 0:
                raise ValueError(f"{_source(img)}: stored_max must be > 0, got {stored_max!r}")
            img_t = convert_to_tensor(img, track_meta=get_track_meta())
            return torch.clamp(img_t.float() / smax, 0.0, 1.0)
        mod = canonical_modality(modality) if modality else self.modality
        if mod is None:
            raise ValueError(f"{_source(img)}: no modality given to ScaleIntensityByModality")
        if mod == CT:
            return cast(torch.Tensor, self._ct(img))  # MONAI's transforms return a tensor for any input
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if mod == MRI:
            return self.apply_window(img_t, *self.mri_window(img_t))
        if mod == ENDOSCOPY:
            return torch.clamp(img_t / self.rgb_max, 0.0, 1.0)
        raise ValueError(f"{_source(img)}: no intensity rule for modality {mod!r}")  # pragma: no cover

    def window(self, img: torch.Tensor | np.ndarray, modality: str | None = None) -> tuple[float, float]:
        """The intensities the modality's rule maps to 0 and 1 (clipped outside them).

        CT: the fixed Hounsfield window; MRI: the percentiles of ``img`` (:meth:`mri_window`);
        endoscopy: ``(0, rgb_max)``. For CT and MRI the rule is ``apply_window(img, *window(img))``
        exactly, so a caller may compute the window once (a whole volume's) and apply it to parts,
        or to a table of the values an integer image can take.

        Raises:
            ValueError: no modality, or a constant MRI image.
        """
        mod = canonical_modality(modality) if modality else self.modality
        if mod == CT:
            level, width = self.ct_window
            return level - width / 2, level + width / 2
        if mod == MRI:
            return self.mri_window(img)
        if mod == ENDOSCOPY:
            return 0.0, self.rgb_max
        raise ValueError(f"{_source(img)}: no modality given to ScaleIntensityByModality")

    @staticmethod
    def apply_window(img: torch.Tensor | np.ndarray, lower: float, upper: float) -> torch.Tensor:
        """``lower`` -> 0, ``upper`` -> 1, linearly, clipped (MONAI's ``ScaleIntensityRange``)."""
        out = ScaleIntensityRange(a_min=lower, a_max=upper, b_min=0.0, b_max=1.0, clip=True)(img)
        return cast(torch.Tensor, out)  # MONAI's transforms return a tensor for any input

    def mri_window(self, img: torch.Tensor | np.ndarray) -> tuple[float, float]:
        """The MRI rule's ``(lower, upper)`` intensities: the ``mri_percentiles`` of the whole image.

        Integer images of values in ``[0, 65535]`` (e.g. a DICOM ``pixel_array``) take their order
        statistics from a histogram (linear time) instead of a sort; the values are the same, since
        such integers are exact in float32.

        Raises:
            ValueError: the image is constant between the percentiles.
        """
        flat: Any
        if isinstance(img, torch.Tensor):
            flat = img.detach().reshape(-1)
        else:
            flat = np.ravel(np.asarray(img))
        if flat.shape[0] > 16_000_000:  # torch.quantile's size limit; a strided sample is plenty
            flat = flat[:: flat.shape[0] // 8_000_000 + 1]
        qs = [p / 100.0 for p in self.mri_percentiles]
        arr = flat.cpu().numpy() if isinstance(flat, torch.Tensor) else flat
        if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2 and arr.size and int(arr.min()) >= 0:
            lo, hi = _linear_quantiles_from_counts(_value_counts(arr), qs)
        else:
            lo, hi = _linear_quantiles(torch.as_tensor(flat).float(), qs)
        if hi <= lo:
            raise ValueError(
                f"{_source(img)}: MRI intensities are constant between the {self.mri_percentiles} percentiles "
                f"({lo:g}); cannot scale an empty or constant image"
            )
        return lo, hi


def _interpolated_order_statistics(n: int, value_at: Any, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles (``torch.quantile``'s default) of ``n`` sorted values, read through
    ``value_at(indices) -> values`` (an index into a sorted array, or a search in a histogram's cumulative counts)."""
    pos = np.asarray(qs, dtype=np.float64) * (n - 1)
    k = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    a = np.asarray(value_at(k), dtype=np.float64)
    b = np.asarray(value_at(np.minimum(k + 1, n - 1)), dtype=np.float64)
    return [float(x) for x in a + (b - a) * (pos - k)]


def _linear_quantiles(flat: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """``torch.quantile(flat, qs)`` (linear interpolation) from one NumPy sort: NumPy's vectorised
    sort is several times faster than ``torch.quantile`` on the CPU (2 vs 8 ms for 512 x 512)."""
    v = np.sort(flat.cpu().numpy(), kind="quicksort")
    return _interpolated_order_statistics(v.size, lambda idx: v[idx], qs)


def _value_counts(arr: np.ndarray) -> np.ndarray:
    """``np.bincount`` of a non-negative integer array of at most 16 bits.

    Counted by ``torch.bincount`` (about 2.5x faster than NumPy's, which first converts to
    int64); ``uint16`` data above 32767, which torch cannot count, goes to NumPy.
    """
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype == np.uint16:
        if int(flat.max()) > np.iinfo(np.int16).max:
            return np.bincount(flat)
        flat = flat.view(np.int16)  # same bits, all values below 2**15
    return torch.bincount(torch.from_numpy(flat)).numpy()


def _linear_quantiles_from_counts(counts: np.ndarray, qs: Sequence[float]) -> list[float]:
    """:func:`_linear_quantiles` of the values ``0..len(counts)-1`` repeated ``counts`` times (a histogram)."""
    cum = np.cumsum(counts)
    # the i-th sorted value is the first value whose cumulative count exceeds i
    return _interpolated_order_statistics(int(cum[-1]), lambda idx: np.searchsorted(cum, idx, side="right"), qs)


def slice_range_from_mask(mask: torch.Tensor | np.ndarray, axis: int = -1, margin: int = 0) -> tuple[int, int]:
    """The ``[start, stop)`` slice range along spatial ``axis`` where ``mask`` is non-zero, widened by ``margin``.

    Args:
        mask: channel-first mask ``(C, *spatial)``.
        axis: spatial axis (negative counts from the end).

    Raises:
        ValueError: the mask is empty.
    """
    m = convert_to_tensor(mask, track_meta=False)
    sp = m.ndim - 1
    ax = axis % sp
    other = [d for d in range(m.ndim) if d != ax + 1]
    present = (m != 0).any(dim=tuple(other)) if other else (m != 0)
    idx = torch.nonzero(present).flatten()
    if idx.numel() == 0:
        raise ValueError(f"{_source(mask)}: mask is empty; no slice range can be derived from it")
    n = m.shape[ax + 1]
    return max(0, int(idx.min()) - margin), min(n, int(idx.max()) + 1 + margin)


def _slice_affine(affine: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """In-plane (3x3) affine of slice ``index`` along spatial ``axis`` of a 4x4 affine."""
    a = affine.clone().double()
    a[:3, 3] = a[:3, 3] + a[:3, axis] * index
    keep = [d for d in range(3) if d != axis]
    out = torch.eye(3, dtype=torch.float64)
    out[:2, :2] = a[keep][:, keep]
    out[:2, 2] = a[keep, 3]
    return out


class ExtractSlices(Transform):
    """Cut a channel-first 3D volume ``(C, X, Y, Z)`` into 2D slices ``(C, X, Y)``.

    Each slice is a MetaTensor whose metadata gains ``slice_index``, ``slice_axis``,
    ``source_affine`` (the volume's 4x4 affine) and ``source_spatial_shape``, and whose
    affine is the in-plane 3x3 affine of that slice.

    Args:
        axis: spatial axis to slice along (default: the last, axial for RAS volumes).
        start: first slice (inclusive); ``None`` for 0.
        stop: last slice (exclusive); ``None`` for all.
        step: take every ``step``-th slice.
        pass_2d: return a 2D image ``(C, X, Y)`` as its only slice (``slice_index`` 0) instead of
            raising, so one pipeline serves mixed 2D / 3D data lists.
    """

    def __init__(
        self, axis: int = -1, start: int | None = None, stop: int | None = None, step: int = 1, pass_2d: bool = True
    ) -> None:
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.axis, self.start, self.stop, self.step, self.pass_2d = axis, start, stop, step, pass_2d

    def __call__(
        self, img: torch.Tensor | np.ndarray, start: int | None = None, stop: int | None = None
    ) -> list[MetaTensor]:
        img_t = convert_to_tensor(img, track_meta=True)
        if img_t.ndim == 3 and self.pass_2d:
            if isinstance(img_t, MetaTensor):
                img_t.meta["slice_index"] = 0
            return [img_t]
        if img_t.ndim != 4:
            raise ValueError(
                f"{_source(img)}: ExtractSlices needs a channel-first 3D volume (C, X, Y, Z), "
                f"got shape {tuple(img_t.shape)}"
            )
        ax = self.axis % 3
        n = img_t.shape[ax + 1]
        lo = self.start if start is None else start
        hi = self.stop if stop is None else stop
        lo = 0 if lo is None else max(0, lo)
        hi = n if hi is None else min(n, hi)
        meta = dict(getattr(img_t, "meta", {}) or {})
        affine = img_t.affine if isinstance(img_t, MetaTensor) else torch.eye(4, dtype=torch.float64)
        out = []
        for k in range(lo, hi, self.step):
            if isinstance(img_t, MetaTensor):
                data = img_t.as_tensor().select(ax + 1, k).clone()
            else:
                data = img_t.select(ax + 1, k)
            m = dict(meta)
            m.update(
                slice_index=k,
                slice_axis=ax,
                source_affine=affine.clone(),
                source_spatial_shape=tuple(int(s) for s in img_t.shape[1:]),
                spatial_shape=tuple(int(s) for s in data.shape[1:]),
            )
            m.pop("affine", None)
            m.pop("original_affine", None)
            out.append(MetaTensor(data, affine=_slice_affine(affine, ax, k), meta=m))
        return out


class EnsureRGB(Transform):
    """Make a channel-first image 3-channel: grey is repeated, RGBA drops alpha, RGB is kept.

    Raises:
        ValueError: for any other channel count.
    """

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=True)
        c = img_t.shape[0]
        if c == 3:
            return img_t
        if c == 1:
            return img_t.repeat(3, *([1] * (img_t.ndim - 1)))
        if c == 4:
            return img_t[:3]
        raise ValueError(f"{_source(img)}: cannot make {c} channels into RGB (expected 1, 3 or 4)")


class RandColorJitter(RandomizableTransform):
    """Random brightness, contrast, saturation and hue jitter of a 3-channel image in [0, 1].

    Factors are drawn from MONAI's random state (so ``set_random_state`` / ``set_determinism``
    make it repeatable) and applied with torchvision's functional colour ops.

    Args:
        prob: probability of applying the jitter.
        brightness, contrast, saturation: factor drawn from ``[1 - v, 1 + v]``.
        hue: shift drawn from ``[-v, v]`` (``0 <= v <= 0.5``).
    """

    def __init__(
        self, prob: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
        hue: float = 0.1
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._factors: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)
        self._order = [0, 1, 2, 3]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        u = self.R.uniform
        self._factors = (
            u(1 - self.brightness, 1 + self.brightness),
            u(1 - self.contrast, 1 + self.contrast),
            u(1 - self.saturation, 1 + self.saturation),
            u(-self.hue, self.hue),
        )
        self._order = list(self.R.permutation(4))

    def __call__(self, img: torch.Tensor | np.ndarray, randomize: bool = True) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as tvf

        if randomize:
            self.randomize()
        img_t = convert_to_tensor(img, track_meta=True)
        if not self._do_transform:
            return img_t
        if img_t.ndim != 3 or img_t.shape[0] != 3:
            raise ValueError(f"{_source(img)}: RandColorJitter needs a (3, H, W) image, got {tuple(img_t.shape)}")
        out = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        ops = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
        for i in self._order:
            out = ops[i](out, self._factors[i])
        out = out.clamp(0.0, 1.0)
        if isinstance(img_t, MetaTensor):
            return MetaTensor(out, meta=img_t.meta, applied_operations=img_t.applied_operations)
        return out


class NormalizeModelInput(NormalizeIntensity):
    """MONAI's ``NormalizeIntensity`` with the toolkit's model-input statistics, channel-wise:
    ``(x - MODEL_INPUT_MEAN[c]) / MODEL_INPUT_STD[c]`` for each channel ``c`` of a 3-channel image.

    Args:
        mean: per-channel subtrahend (default :data:`MODEL_INPUT_MEAN`).
        std: per-channel divisor (default :data:`MODEL_INPUT_STD`).
        dtype: output dtype.
    """

    def __init__(self, mean: Sequence[float] = MODEL_INPUT_MEAN, std: Sequence[float] = MODEL_INPUT_STD,
                 dtype: DtypeLike = np.float32) -> None:
        super().__init__(subtrahend=list(mean), divisor=list(std), channel_wise=True, dtype=dtype)
