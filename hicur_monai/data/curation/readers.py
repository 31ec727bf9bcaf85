"""Curation's readers: one input file -> its identity and its normalised 2D slices.

Every file is read once. DICOM (:func:`read_dicom`): the header is parsed once (pixel data
deferred) and that same dataset serves identification, the shape checks, the optional
de-identified header and the pixel decode (single-frame grey images: pydicom's ``pixel_array``
with the DICOM rescale, as MONAI's ``PydicomReader`` does). 8-bit RGB PNG / JPEG frames
(:func:`read_picture`) are decoded once with PIL and written as decoded (for 8-bit input,
``ScaleIntensityByModality`` then quantisation back to 8 bits is the identity). Large NIfTI
volumes are streamed (:func:`read_nifti_streamed`). Everything else (NIfTI / NRRD volumes,
multi-frame and colour DICOM, 16-bit or palette PNGs) goes through the toolkit loader
(:func:`read_with_loader`): :class:`~hicur_monai.transforms.LoadMedicalImage`, oriented to LPS
(3D; so axial slices look like radiological-convention DICOM images) and cut with
:class:`~hicur_monai.transforms.ExtractSlices`. Intensities always go through :mod:`.normalise`.

Each reader checks what it can from the header before decoding and records the file's identity
in its :class:`~.context.FileContext` as soon as it is known; a problem is a
:class:`~.reasons.CurationReject`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hicur_monai.data.curation import volumes
from hicur_monai.data.curation.context import FileContext, WorkerState
from hicur_monai.data.curation.deid import deidentify_dataset, header_json, path_sensitive_values, read_header
from hicur_monai.data.curation.dicom_values import integer, number, values
from hicur_monai.data.curation.hashing import perceptual_hash
from hicur_monai.data.curation.identify import Identity, default_patient_key, identify_by_rules, identify_dicom
from hicur_monai.data.curation.normalise import (
    CuratedSlice,
    display_slice,
    grey_display,
    modality_window,
    normalise_image,
    normalise_window,
)
from hicur_monai.data.curation.qc import check_image, check_shape, is_constant
from hicur_monai.data.curation.reasons import CurationReject
from hicur_monai.modality import ENDOSCOPY
from hicur_monai.transforms.array import STORED_GREY_MAX, STORED_RGB_MAX

__all__ = [
    "ReadResult",
    "read_dicom",
    "read_nifti_streamed",
    "read_picture",
    "read_volume",
    "read_with_loader",
    "reason_of_error",
    "reject_of_error",
    "slice_range",
]

#: what a reader gives: the identity, the patient pseudonym, the slices and the de-identified DICOM header (or None)
ReadResult = tuple[Identity, str, Iterable[CuratedSlice], str | None]


def reason_of_error(msg: str) -> str:
    """The reason code of a reader's error message: ``non_finite``, ``truncated`` or ``unreadable``."""
    m = msg.lower()
    if "nan" in m and "infinite" in m:
        return "non_finite"
    if any(k in m for k in ("truncat", "eof", "end of file", "doesn't match the expected length",
                            "does not match the expected", "unexpected end", "premature", "not enough",
                            "buffer is too small", "compressed file ended", "image file is truncated")):
        return "truncated"
    return "unreadable"


def reject_of_error(err: Exception, ctx: FileContext) -> CurationReject:
    """The rejection of a file whose decoding raised ``err`` (the detail scrubbed of the path)."""
    reason = reason_of_error(str(err))
    detail = {"non_finite": "image contains NaN or infinite values", "truncated": "file is cut short"}.get(
        reason, ctx.scrub(f"{type(err).__name__}: {err}"))
    return CurationReject(reason, detail)


def _header_reject(err: Exception, what: str) -> CurationReject:
    return CurationReject(reason_of_error(str(err)), f"{what} header: {type(err).__name__}")


# --- DICOM -------------------------------------------------------------------------------------


def _dicom_truncated(ds: Any, size: int) -> bool:
    """Whether the pixel data is shorter than its declared length (read in memory, or deferred)."""
    if "PixelData" not in ds:
        return False
    raw = ds.get_item("PixelData", keep_deferred=True)  # the raw element: its offset and length
    length = getattr(raw, "length", None)
    if length in (None, 0xFFFFFFFF):
        return False
    value = getattr(raw, "value", None)
    if value is not None:
        return len(value) < length
    tell = getattr(raw, "value_tell", None)
    return tell is not None and tell + length > size


def _rescale(ds: Any) -> tuple[float, float]:
    """DICOM ``(RescaleSlope, RescaleIntercept)``, 1 and 0 when absent.

    Raises:
        CurationReject: ``non_finite`` when either is NaN or infinite (every pixel would be).
    """
    slope, intercept = number(ds, "RescaleSlope"), number(ds, "RescaleIntercept")
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise CurationReject("non_finite",
                             f"DICOM rescale slope {slope} / intercept {intercept} is not a finite number")
    return slope, intercept


def _pixel_spacing(ds: Any) -> tuple[float, float]:
    ps = values(ds, "PixelSpacing")
    return (float(ps[1]), float(ps[0])) if ps is not None and len(ps) == 2 and min(map(float, ps)) > 0 else (1.0, 1.0)


def _parse_dicom(ctx: FileContext, content: bytes | None) -> Any:
    import pydicom

    try:
        if content is None:
            return read_header(ctx.found.path)
        return pydicom.dcmread(io.BytesIO(content), force=False)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad files
        raise _header_reject(err, "DICOM") from None


def read_dicom(ctx: FileContext, st: WorkerState, match: Any, content: bytes | None) -> ReadResult:
    """A DICOM file: one parse (from ``content`` when the file was read whole, else with the pixel
    data deferred) for identification, checks, decoding and the optional header."""
    cfg, found = st.cfg, ctx.found
    ds = _parse_dicom(ctx, content)
    ident = identify_dicom(ds, cfg.rules, match)
    if not ident.patient_key:  # no PatientID / PatientName: the rule's or the folder's patient
        ident.patient_key = default_patient_key(found.rel)
    low = found.rel.lower()
    if any(s.lower() in low for s in path_sensitive_values(ds)):
        ctx.redact_source()  # the path names a patient
    if _dicom_truncated(ds, os.path.getsize(found.path)):
        raise CurationReject("truncated", "pixel data runs past the end of the file")
    rows, cols = integer(ds, "Rows", 0), integer(ds, "Columns", 0)
    frames = integer(ds, "NumberOfFrames", 1) or 1
    samples = integer(ds, "SamplesPerPixel", 1) or 1
    check_shape((cols, rows) + ((frames,) if frames > 1 else ()), cfg, samples)
    slope, intercept = _rescale(ds)
    patient = ctx.identified(ident, st.pseudo)
    bits = integer(ds, "BitsStored", 8) or 8
    slices: list[CuratedSlice] | None = None
    if samples == 1 and frames == 1:  # the common case: decode from the parsed dataset
        slices = [_dicom_grey(ctx, st, ds, ident, slope, intercept)]
    header_text = None
    if cfg.keep_dicom_header:
        deidentify_dataset(ds, st.pseudo, patient)
        header_text = header_json(ds)
    del ds
    if slices is None:
        rgb_max = float(2**bits - 1) if ident.modality == ENDOSCOPY else 255.0
        slices = read_with_loader(ctx, st, ident, "dicom", frames if frames > 1 else None, samples, rgb_max)
    return ident, patient, slices, header_text


def _dicom_grey(ctx: FileContext, st: WorkerState, ds: Any, ident: Identity, slope: float, intercept: float
                ) -> CuratedSlice:
    """A single-frame grey DICOM image decoded from its already-parsed dataset.

    The pixels are kept in display order ``(rows, columns)``: the modality normalisation is
    element-wise (CT) or global (MRI percentiles), so it does not depend on the axis order, and
    the transposition MONAI's axis convention needs is left to the writer (a view).
    """
    try:
        px = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - the decoders raise many types
        raise reject_of_error(err, ctx) from None
    if px.ndim != 2:
        raise CurationReject("wrong_dimensionality", f"decoded array of shape {tuple(px.shape)}; expected a 2D image")
    check_image(px[None], ident.modality, st.cfg)  # integer pixels: finite by construction; constant is checked
    rows, cols = (int(s) for s in px.shape)
    out = grey_display(px, ident.modality, slope, intercept, st.tables)
    return CuratedSlice(None, None if is_constant(out) else out, STORED_GREY_MAX, cols, rows, 1, _pixel_spacing(ds))


# --- PNG / JPEG --------------------------------------------------------------------------------


def read_picture(ctx: FileContext, st: WorkerState, fmt: str, match: Any, content: bytes | None) -> ReadResult:
    """A PNG / JPEG file: one open for the header checks and the decode (from ``content``, the file's bytes
    already read for the file hash, when there)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(content) if content is not None else ctx.found.path)
    except Exception as err:  # noqa: BLE001
        raise _header_reject(err, fmt) from None
    with im:
        channels = len(im.getbands())
        ident = identify_by_rules(fmt, ctx.found.rel, match, channels)
        check_shape((int(im.size[0]), int(im.size[1])), st.cfg, channels)
        patient = ctx.identified(ident, st.pseudo)
        if ident.modality != ENDOSCOPY or im.mode not in ("RGB", "RGBA"):
            im.close()
            return ident, patient, read_with_loader(ctx, st, ident, fmt, None, 1, 255.0), None
        return ident, patient, [_rgb_frame(ctx, st, im, ident)], None


def _rgb_frame(ctx: FileContext, st: WorkerState, im: Any, ident: Identity) -> CuratedSlice:
    """An 8-bit RGB(A) endoscopy frame as decoded: ScaleIntensityByModality (x / 255, clipped) and
    quantisation back to 8 bits (x 255, rounded) give back the input values exactly
    (``tests/test_curation.py`` checks it), so the decoded array is the output."""
    from PIL import Image

    try:
        a = np.asarray(im)
    except Exception as err:  # noqa: BLE001
        raise reject_of_error(err, ctx) from None
    if a.ndim != 3 or a.dtype != np.uint8:
        raise CurationReject("wrong_dimensionality", f"decoded array of shape {a.shape}; expected an RGB image")
    if a.shape[2] == 4:
        a = np.ascontiguousarray(a[..., :3])
    check_image(a.transpose(2, 1, 0), ident.modality, st.cfg)
    ph = perceptual_hash(im if im.mode == "RGB" else Image.fromarray(a))  # check_image: not constant
    return CuratedSlice(None, a, STORED_RGB_MAX, int(a.shape[1]), int(a.shape[0]), 3, (1.0, 1.0), ph)


# --- NIfTI / NRRD ------------------------------------------------------------------------------


def _volume_shape(path: str, fmt: str) -> tuple[int, ...]:
    """Spatial shape from the header only (no pixel decode)."""
    if fmt == "nifti":
        import nibabel as nib

        image: Any = nib.load(path)  # a NIfTI image (typed as nibabel's base class)
        shape = tuple(int(s) for s in image.shape)
        return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if fmt == "nrrd":
        import nrrd

        return tuple(int(s) for s in nrrd.read_header(path)["sizes"])
    return ()


def read_volume(ctx: FileContext, st: WorkerState, fmt: str, match: Any) -> ReadResult:
    """A NIfTI / NRRD file: header checks, then streamed (large NIfTI) or through the toolkit loader."""
    try:
        shape = _volume_shape(ctx.found.path, fmt)
    except Exception as err:  # noqa: BLE001
        raise _header_reject(err, fmt) from None
    ident = identify_by_rules(fmt, ctx.found.rel, match, None)
    check_shape(shape, st.cfg)
    patient = ctx.identified(ident, st.pseudo)
    streamed = (fmt == "nifti" and len(shape) == 3 and min(shape) > 1 and ident.modality != ENDOSCOPY
                and int(np.prod(shape, dtype=np.int64)) * 4 > volumes.STREAM_BYTES)
    if streamed:
        return ident, patient, read_nifti_streamed(ctx, st, ident), None
    return ident, patient, read_with_loader(ctx, st, ident, fmt, None, 1, 255.0), None


# --- any image through the toolkit loader ------------------------------------------------------


def _affine_spacing(affine: np.ndarray) -> tuple[float, float]:
    n = affine.shape[0] - 1
    sp = np.linalg.norm(affine[:n, :n], axis=0)
    return (float(sp[0]) if sp.size > 0 and sp[0] > 0 else 1.0, float(sp[1]) if sp.size > 1 and sp[1] > 0 else 1.0)


def _load(ctx: FileContext, st: WorkerState, fmt: str, frames: int | None, samples: int) -> Any:
    """The toolkit loader's channel-first MetaTensor; DICOM colour as ``(3, X, Y)``, 2D as 2D."""
    from monai.data import MetaTensor

    try:
        t: Any = st.loader(ctx.found.path)
    except ValueError as err:
        raise reject_of_error(err, ctx) from None
    # DICOM colour images may come as (1, 3, X, Y) or (1, X, Y, 3): make them (3, X, Y)
    if fmt == "dicom" and t.ndim == 4 and t.shape[0] == 1 and samples in (3, 4) and frames is None:
        a = t.as_tensor()[0]
        a = a if a.shape[0] == samples else a.permute(2, 0, 1)
        t = MetaTensor(a.contiguous(), affine=t.affine, meta=t.meta)
    if t.ndim == 4 and t.shape[-1] == 1 and frames is None:
        t = t[..., 0]
    return t


def read_with_loader(ctx: FileContext, st: WorkerState, ident: Identity, fmt: str, frames: int | None, samples: int,
                     rgb_max: float) -> list[CuratedSlice]:
    """Any image through the toolkit loader: volumes are oriented to LPS and sliced; all is normalised."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from hicur_monai.transforms import ExtractSlices

    t = _load(ctx, st, fmt, frames, samples)
    check_image(t, ident.modality, st.cfg)
    t = normalise_image(t, ident.modality, rgb_max)
    pieces: list[tuple[int | None, Any]]
    if t.ndim == 3:
        pieces = [(None, t)]
    else:
        axis = 2
        if frames is not None:  # multi-frame DICOM: cut along the frame axis
            cands = [i for i, s in enumerate(t.shape[1:]) if s == frames]
            if not cands:
                raise CurationReject("wrong_dimensionality", "multi-frame DICOM whose frame axis is not found")
            axis = cands[-1]
        else:
            t = Orientation(axcodes="LPS")(t)
        start, stop = slice_range(ctx, st, ident, tuple(int(x) for x in t.shape[1:]), axis, frames is None)
        pieces = [(int(s.meta["slice_index"]), s) for s in ExtractSlices(axis=axis, start=start, stop=stop)(t)]
    out = []
    for k, s in pieces:
        a = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        aff = s.affine.numpy() if isinstance(s, MetaTensor) else np.eye(3)
        out.append(display_slice(k, a, _affine_spacing(aff)))
    return out


def slice_range(ctx: FileContext, st: WorkerState, ident: Identity, shape: tuple[int, ...], axis: int, orient: bool
                ) -> tuple[int, int]:
    """``[start, stop)`` of the slices to keep along spatial ``axis`` of a volume of spatial ``shape``:
    all, the rule's fixed range, or the rule's mask's extent (the mask beside the image, oriented
    like the image when ``orient``).

    Raises:
        CurationReject: ``mask_error`` or ``no_slices_in_range``.
    """
    from monai.transforms import Orientation

    from hicur_monai.transforms import slice_range_from_mask

    start, stop = 0, int(shape[axis])
    spec = ident.slices
    if spec is not None and spec.mask:
        mpath = Path(ctx.found.path).parent / spec.mask
        try:
            mask: Any = st.loader(str(mpath))
            if orient:
                mask = Orientation(axcodes="LPS")(mask)
        except Exception:  # noqa: BLE001
            raise CurationReject("mask_error", f"mask {spec.mask!r} beside the image cannot be read") from None
        if tuple(mask.shape[1:]) != tuple(shape):
            raise CurationReject("mask_error", f"mask shape {tuple(mask.shape[1:])} differs from image {tuple(shape)}")
        try:
            start, stop = slice_range_from_mask(mask, axis=axis, margin=spec.margin)
        except ValueError:
            raise CurationReject("no_slices_in_range", f"mask {spec.mask!r} is empty") from None
    elif spec is not None:
        start, stop = spec.fixed_range(stop)
    if stop <= start:
        raise CurationReject("no_slices_in_range", f"slice range [{start}, {stop}) is empty")
    return start, stop


# --- large NIfTI volumes -----------------------------------------------------------------------


def read_nifti_streamed(ctx: FileContext, st: WorkerState, ident: Identity) -> Iterator[CuratedSlice]:
    """A large NIfTI volume with one float32 copy in memory (:mod:`.volumes`), normalised and cut one slice
    at a time; the same values as :func:`read_with_loader` (the window is the whole volume's). Every check
    runs before the first slice is yielded, so a rejection never leaves images behind."""
    from hicur_monai.data.curation.volumes import NonFiniteVolume, lps_view

    try:
        vol, affine = volumes.read_nifti_float32(ctx.found.path)
    except NonFiniteVolume:
        raise CurationReject("non_finite", "image contains NaN or infinite values") from None
    except Exception as err:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise reject_of_error(err, ctx) from None
    if is_constant(vol):
        raise CurationReject("constant_image", "every pixel has the same value")
    import torch

    window = modality_window(torch.from_numpy(vol[None]), ident.modality)  # the whole volume's (a view, no copy)
    view, oriented = lps_view(vol, affine)
    start, stop = slice_range(ctx, st, ident, tuple(int(x) for x in view.shape), 2, True)
    aff2 = np.eye(3)
    aff2[:2, :2] = oriented[:2, :2]
    spacing = _affine_spacing(aff2)
    block = max(1, volumes.SLAB_BYTES // (int(view.shape[0]) * int(view.shape[1]) * 4))

    def cut() -> Iterator[CuratedSlice]:
        for b in range(start, stop, block):  # a block of slices copied at once: whole cache lines, not a gather
            chunk = np.ascontiguousarray(np.moveaxis(view[:, :, b:min(stop, b + block)], 2, 0))
            for j, k in enumerate(range(b, b + chunk.shape[0])):
                yield display_slice(k, normalise_window(chunk[j][None], window), spacing)

    return cut()
