"""The per-file curation pipeline (runs in the worker processes).

``process_file`` turns one discovered path into manifest rows: one input row, plus one
row per output image. It never raises: every failure becomes a rejected row with a reason
code, and messages are scrubbed of the absolute path.

Every file is read once. DICOM: the header is parsed once (pixel data deferred) and that
same dataset serves identification, the shape checks, the optional de-identified header
and the pixel decode (single-frame grey images: pydicom's ``pixel_array`` with the DICOM
rescale, as MONAI's ``PydicomReader`` does). 8-bit RGB PNG / JPEG frames are decoded once
with PIL and written as decoded (for 8-bit input, ``ScaleIntensityByModality`` then
quantisation back to 8 bits is the identity). Everything else (NIfTI / NRRD volumes,
multi-frame and colour DICOM, 16-bit or palette PNGs) goes through
:class:`~hicur_monai.transforms.LoadMedicalImage`, is oriented to LPS (3D; so axial slices
look like radiological-convention DICOM images) and cut with
:class:`~hicur_monai.transforms.ExtractSlices`. Intensities are always normalised with
:class:`~hicur_monai.transforms.ScaleIntensityByModality`.

Each 2D image is written atomically as an uncompressed NPY array, channel-first ``(C, X, Y)``
(MONAI's axis order): uint16 = normalised x 65535 for MRI/CT, uint8 RGB for endoscopy; with
``keep_dicom_header`` the de-identified header goes beside it (``<image>.dicom.json``). Or
as a PNG (``image_format="png"``, header and metadata in text chunks). Content hashes are
xxh3-128.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hicur_monai.data.curation.deid import (
    Pseudonymizer,
    deidentify_dataset,
    header_json,
    path_sensitive_values,
    read_header,
)
from hicur_monai.data.curation.dicom_values import integer, number, values
from hicur_monai.data.curation.discover import Found
from hicur_monai.data.curation.identify import Identity, default_patient_key, identify_by_rules, identify_dicom
from hicur_monai.data.curation.manifest import new_row, source_columns
from hicur_monai.data.curation.qc import check_image, check_shape, is_constant
from hicur_monai.data.curation.reasons import ACCEPTED, REJECTED, CurationReject
from hicur_monai.data.curation.rules import Rules
from hicur_monai.modality import CT, ENDOSCOPY, MRI
from hicur_monai.transforms.array import STORED_GREY_MAX, STORED_RGB_MAX
from hicur_monai.utils.io import atomic_open, atomic_write_chunks

__all__ = [
    "CurateConfig",
    "DEFAULT_MAX_DECODED_MB",
    "IMAGE_FORMATS",
    "INPUT_FORMATS",
    "process_file",
    "process_batch",
    "init_worker",
    "run_in_worker",
    "run_batch_in_worker",
    "encode_png",
    "encode_npy",
    "npy_header",
    "perceptual_hash",
    "phash_of_32",
    "content_hash",
    "file_hash",
]

#: output formats of curated images
IMAGE_FORMATS = ("npy", "png")
#: input formats curation reads (``npy`` is an output format only)
INPUT_FORMATS = ("dicom", "nifti", "nrrd", "png", "jpeg")
#: pHash input: images are box-averaged to this many pixels on each side first (imagehash's own DCT size)
PHASH_SIZE = 32
#: default limit of the decoded size of one file (voxels x channels x 4 bytes, MiB): 512 x 512 x 512 float32
DEFAULT_MAX_DECODED_MB = 512
#: files up to this size are read into memory once (hash and DICOM parse); larger ones are streamed
READ_WHOLE_BYTES = 64 << 20


@dataclass
class CurateConfig:
    """Everything a worker needs (the salt travels in memory only, never to disk).

    Attributes:
        out_dir: curation output folder.
        rules: parsed rules file.
        salt: the pseudonymisation key.
        shard: ``"i/n"``.
        min_size: smallest accepted in-plane side (pixels).
        max_side: largest accepted side (pixels / slices).
        max_voxels: largest accepted voxel count of one file.
        max_decoded_bytes: largest decoded size of one file (voxels x channels x 4 bytes, float32), checked
            from the header before any decoding.
        redact_source_paths: write ``redacted:<source_id>`` instead of every source path.
        image_format: ``"npy"`` (uncompressed, default) or ``"png"``.
        png_compress_level: zlib level of written PNGs (1 = fast, 9 = small).
        keep_dicom_header: also store the PS3.15-de-identified DICOM header (DICOM JSON) beside each image
            (``<image>.dicom.json``; in a ``dicom`` text chunk for PNG).
    """

    out_dir: str
    rules: Rules
    salt: str
    shard: str = "0/1"
    min_size: int = 32
    max_side: int = 8192
    max_voxels: int = 1 << 29
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_MB << 20
    redact_source_paths: bool = False
    image_format: str = "npy"
    png_compress_level: int = 1
    keep_dicom_header: bool = False

    def __post_init__(self) -> None:
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")


class _State:
    def __init__(self, cfg: CurateConfig) -> None:
        from hicur_monai.transforms import LoadMedicalImage

        self.cfg = cfg
        self.pseudo = Pseudonymizer(cfg.salt)
        self.loader = LoadMedicalImage(dtype=np.float32)
        self.folders: set[str] = set()
        self.tables: dict[tuple[str, float, float], np.ndarray] = {}  # CT lookup tables


_STATE: _State | None = None


def init_worker(cfg: CurateConfig) -> None:
    """Process-pool initialiser: one loader per worker, one thread, quiet reader warnings."""
    global _STATE
    import logging

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # reader warnings can name files; the manifest says what matters
    logging.getLogger("monai").setLevel(logging.ERROR)
    _STATE = _State(cfg)


def run_in_worker(found: Found) -> list[dict[str, Any]]:
    """The pool's task: :func:`process_file` with the worker's state."""
    assert _STATE is not None, "init_worker was not called"
    return process_file(found, _STATE)


def run_batch_in_worker(batch: list[Found]) -> list[list[dict[str, Any]]]:
    """The pool's batched task: :func:`process_batch` with the worker's state."""
    assert _STATE is not None, "init_worker was not called"
    return process_batch(batch, _STATE)


def process_batch(batch: list[Found], st: _State) -> list[list[dict[str, Any]]]:
    """:func:`process_file` for several files (one inter-process round trip for all)."""
    return [process_file(f, st) for f in batch]


def _scrub(msg: str, found: Found) -> str:
    out = str(msg)
    for s in sorted({found.path, os.path.dirname(found.path)}, key=len, reverse=True):
        if s and len(s) > 1:
            out = out.replace(s, "<file>")
    return out[:300]


def encode_png(arr: np.ndarray, text: dict[str, str], compress_level: int = 1) -> bytes:
    """PNG bytes of a ``(rows, columns)`` uint16 or ``(rows, columns, 3)`` uint8 display array, with text chunks."""
    import io

    from PIL import Image, PngImagePlugin

    img = Image.fromarray(np.ascontiguousarray(arr))
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def npy_header(display: np.ndarray) -> bytes:
    """The NPY (format 1.0) header :func:`encode_npy` writes for a C-contiguous display array.

    The stored array is channel-first in MONAI's axis order, ``(C, X, Y)`` with X the columns:
    the transposed view of the display array, which the header declares ``fortran_order``, so
    the display array's bytes follow the header as they are. Headers are cached per dtype and shape.
    """
    key = (display.dtype.str, display.shape)
    hdr = _NPY_HEADERS.get(key)
    if hdr is None:
        import io

        shape = (1, display.shape[1], display.shape[0]) if display.ndim == 2 else display.shape[::-1]
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(display.dtype), "fortran_order": True, "shape": shape})
        hdr = _NPY_HEADERS[key] = buf.getvalue()
    return hdr


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def encode_npy(fh: Any, arr: np.ndarray) -> None:
    """Write a ``(rows, columns[, 3])`` display array as NPY to the open binary file ``fh``
    (:func:`npy_header`, then the array's bytes: the same file ``np.save`` writes for the
    channel-first transposed view)."""
    disp = np.ascontiguousarray(arr)
    fh.write(npy_header(disp))
    fh.write(memoryview(disp).cast("B"))


def _box_grey(display: np.ndarray) -> np.ndarray:
    """Box means of a grey integer ``(rows, columns)`` array over a :data:`PHASH_SIZE` grid, as uint8.

    The array is cut into ``PHASH_SIZE x PHASH_SIZE`` boxes of ``rows // PHASH_SIZE`` x
    ``columns // PHASH_SIZE`` pixels (the last ``< PHASH_SIZE`` rows / columns are left out)
    and each box's mean is scaled from the dtype's range to 0..255. Integer sums: exact.
    """
    n = PHASH_SIZE
    fy, fx = display.shape[0] // n, display.shape[1] // n
    rows = display[: fy * n, : fx * n].reshape(n, fy, fx * n)
    acc = rows[:, 0].astype(np.uint32)  # fy row adds over contiguous rows: no full-size temporary
    for k in range(1, fy):
        acc += rows[:, k]
    sums = acc.reshape(n, n, fx).sum(axis=2, dtype=np.uint64)
    scale = 255.0 / (np.iinfo(display.dtype).max * fy * fx)
    return np.rint(sums * scale).astype(np.uint8)


def phash_of_32(grey: np.ndarray) -> str:
    """``str(imagehash.phash(Image.fromarray(grey)))`` of a ``(32, 32)`` uint8 image, without its image round trips.

    The same steps as ``imagehash.phash`` (hash size 8, high-frequency factor 4) once the image is
    32 x 32 grey: DCT-II along the columns then the rows, the low 8 x 8 frequencies compared with
    their median, the 64 bits as 16 hex digits (``tests/test_curation_fast.py`` checks equality).
    """
    from scipy.fft import dct

    low = dct(dct(grey.astype(np.float64), axis=0), axis=1)[:8, :8].ravel()
    s = np.sort(low)
    return np.packbits(low > (s[31] + s[32]) / 2).tobytes().hex()  # the median of 64 values


def perceptual_hash(display: Any) -> str:
    """64-bit pHash (hex) of a display array (``(rows, columns)`` uint8 / uint16, ``(rows, columns, 3)`` uint8)
    or of the PIL image it was decoded from.

    The image is box-averaged to :data:`PHASH_SIZE` x :data:`PHASH_SIZE` (grey: exact integer
    box means in NumPy, scaled to 8 bits; RGB: PIL ``Image.reduce`` then ITU-R 601-2 luma), and
    hashed as ``imagehash.phash`` hashes that 32 x 32 image (:func:`phash_of_32`: the signs of
    the low 8 x 8 DCT frequencies about their median). The cost is one pass over the pixels;
    images below 32 pixels on a side go to ``imagehash.phash`` as they are (it resizes them).
    """
    from PIL import Image

    n = PHASH_SIZE
    if not isinstance(display, Image.Image) and display.ndim == 2:
        if min(display.shape) >= n:
            return phash_of_32(_box_grey(display))
        if display.dtype != np.uint8:
            display = (display.astype(np.float64) * (255.0 / np.iinfo(display.dtype).max)).round().astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(display))
    else:
        img = display if isinstance(display, Image.Image) else Image.fromarray(np.ascontiguousarray(display))
        fx, fy = img.size[0] // n, img.size[1] // n
        if fx and fy and (fx > 1 or fy > 1):
            img = img.reduce((fx, fy), box=(0, 0, fx * n, fy * n))
        if img.mode != "L":
            img = img.convert("L")
        if img.size == (n, n):
            return phash_of_32(np.asarray(img))
    import imagehash

    return str(imagehash.phash(img))


def content_hash(display: np.ndarray) -> str:
    """xxh3-128 (hex) of a display array's dtype, shape and C-order bytes."""
    import xxhash

    h = xxhash.xxh3_128(f"{display.dtype}{display.shape}".encode())
    h.update(np.ascontiguousarray(display))
    return h.hexdigest()


def _bytes_hash(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def file_hash(path: str) -> str:
    """xxh3-128 (hex) of a file's bytes (read in 1 MiB blocks)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _reading_reason(msg: str) -> str:
    m = msg.lower()
    if "nan" in m and "infinite" in m:
        return "non_finite"
    if any(k in m for k in ("truncat", "eof", "end of file", "doesn't match the expected length",
                            "does not match the expected", "unexpected end", "premature", "not enough",
                            "buffer is too small", "compressed file ended", "image file is truncated")):
        return "truncated"
    return "unreadable"


def _read_reject(err: Exception, found: Found) -> CurationReject:
    reason = _reading_reason(str(err))
    detail = {"non_finite": "image contains NaN or infinite values", "truncated": "file is cut short"}.get(
        reason, _scrub(f"{type(err).__name__}: {err}", found))
    return CurationReject(reason, detail)


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


@dataclass
class _Slice:
    """One output image: the display array (``(rows, columns)`` uint16 or ``(rows, columns, 3)`` uint8)."""

    index: int | None
    display: np.ndarray | None  # None: constant slice (rejected)
    value_max: int
    width: int
    height: int
    channels: int
    spacing: tuple[float, float]
    phash: str | None = None  # precomputed from the decoded PIL image (same value, no copy)


def process_file(found: Found, st: _State) -> list[dict[str, Any]]:
    """Curate one path into manifest rows (never raises).

    pydicom's value validation is off while it runs: it only warns (and curation silences
    reader warnings, which can name files), and its regular expressions cost more than the rest
    of the header handling.
    """
    from pydicom import config as dicom_config

    mode = dicom_config.settings.reading_validation_mode
    dicom_config.settings.reading_validation_mode = dicom_config.IGNORE
    try:
        return _process_file(found, st)
    finally:
        dicom_config.settings.reading_validation_mode = mode


def _process_file(found: Found, st: _State) -> list[dict[str, Any]]:
    cfg, pseudo = st.cfg, st.pseudo
    sid = pseudo.source_id(found.rel)
    base = {**source_columns(found.rel, sid, cfg.redact_source_paths), "shard": cfg.shard}
    row = new_row(row_type="input", **base)
    images: list[dict[str, Any]] = []
    try:
        if found.problem:
            raise CurationReject(found.problem, found.detail)
        match = cfg.rules.match(found.rel)
        if match is not None and match.exclude:
            raise CurationReject("excluded_by_rule", f"rule {match.rule}: {match.exclude}")
        size = os.path.getsize(found.path)
        if size == 0:
            raise CurationReject("empty_file", "0 bytes")
        content: bytes | None = None
        try:
            if size <= READ_WHOLE_BYTES:  # read once: hashed and (DICOM) parsed from memory
                with open(found.path, "rb") as fh:
                    content = fh.read()
                row["file_hash"] = _bytes_hash(content)
            else:
                row["file_hash"] = file_hash(found.path)
        except PermissionError:
            raise CurationReject("permission_denied", "no read permission") from None
        from hicur_monai.transforms import sniff_format

        try:
            fmt = sniff_format(found.path)
        except ValueError:
            fmt = ""
        if fmt not in INPUT_FORMATS:
            raise CurationReject("not_an_image", "content is not DICOM, NIfTI, NRRD, PNG or JPEG")
        row["format"] = fmt
        if fmt == "dicom":
            ident, patient, slices, header_text = _dicom(found, st, match, row, base, content)
        elif fmt in ("png", "jpeg"):
            ident, patient, slices = _picture(found, st, fmt, match, row, content)
            header_text = None
        else:
            try:
                shape, channels = _probe(found.path, fmt)
            except Exception as err:  # noqa: BLE001
                raise CurationReject(_reading_reason(str(err)), f"{fmt} header: {type(err).__name__}") from None
            ident = identify_by_rules(fmt, found.rel, match, channels)
            if fmt == "nifti" and len(shape) == 4 and shape[3] == 1:
                shape = shape[:3]
            check_shape(shape, cfg)
            patient = pseudo.patient(ident.patient_key)
            _identity_columns(row, ident, patient, found, pseudo)
            if _streams(fmt, shape, ident):
                slices = _nifti_streamed(found, st, ident)
            else:
                slices = _general(found, st, ident, fmt, None, 1, 255.0)
            header_text = None
        images = _write(slices, st, ident, fmt, base, patient, row, header_text)
        n_ok = sum(1 for r in images if r["status"] == ACCEPTED)
        row.update(status=ACCEPTED, n_images=n_ok)
        if not n_ok:
            row.update(status=REJECTED, reason="constant_image", detail="every slice is constant")
    except CurationReject as rej:
        row.update(status=REJECTED, reason=rej.reason, detail=_scrub(rej.detail, found))
        images = []
    except Exception as err:  # noqa: BLE001 - a bad file must never stop the run
        row.update(status=REJECTED, reason="internal_error", detail=_scrub(f"{type(err).__name__}: {err}", found))
        images = []
    return [row, *images]


def _identity_columns(row: dict[str, Any], ident: Identity, patient: str, found: Found, pseudo: Pseudonymizer) -> None:
    row.update(patient=patient, modality=ident.modality, sequence=ident.sequence or "",
               group_id=pseudo.group(ident.group_key or found.rel),
               acq_params=json.dumps(ident.acq, sort_keys=True) if ident.acq else "")


def _dicom(found: Found, st: _State, match: Any, row: dict[str, Any], base: dict[str, Any], content: bytes | None
           ) -> tuple[Identity, str, list[_Slice], str | None]:
    """A DICOM file: one parse (from ``content`` when the file was read whole, else with the pixel
    data deferred) for identification, checks, decoding and the optional header."""
    import io

    import pydicom

    cfg, pseudo = st.cfg, st.pseudo
    try:
        ds = read_header(found.path) if content is None else pydicom.dcmread(io.BytesIO(content), force=False)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad files
        raise CurationReject(_reading_reason(str(err)), f"DICOM header: {type(err).__name__}") from None
    ident = identify_dicom(ds, cfg.rules, match)
    if not ident.patient_key:  # no PatientID / PatientName: the rule's or the folder's patient
        ident.patient_key = default_patient_key(found.rel)
    secrets = path_sensitive_values(ds)
    low = found.rel.lower()
    if any(s.lower() in low for s in secrets):
        redacted = source_columns(found.rel, base["source_id"], True)  # the path names a patient
        base.update(redacted)
        row.update(redacted)
    if _dicom_truncated(ds, os.path.getsize(found.path)):
        raise CurationReject("truncated", "pixel data runs past the end of the file")
    rows_, cols_ = integer(ds, "Rows", 0), integer(ds, "Columns", 0)
    frames = integer(ds, "NumberOfFrames", 1) or 1
    samples = integer(ds, "SamplesPerPixel", 1) or 1
    check_shape((cols_, rows_) + ((frames,) if frames > 1 else ()), cfg, samples)
    slope, intercept = _rescale(ds)
    patient = pseudo.patient(ident.patient_key)
    _identity_columns(row, ident, patient, found, pseudo)
    bits = integer(ds, "BitsStored", 8) or 8
    rgb_max = float(2**bits - 1) if ident.modality == ENDOSCOPY else 255.0
    slices: list[_Slice] | None = None
    if samples == 1 and frames == 1:
        slices = _dicom_grey(found, st, ds, ident, slope, intercept)  # the common case: decode from the parsed dataset
    header_text = None
    if cfg.keep_dicom_header:
        deidentify_dataset(ds, pseudo, patient)
        header_text = header_json(ds)
    del ds
    if slices is None:
        slices = _general(found, st, ident, "dicom", frames if frames > 1 else None, samples, rgb_max)
    return ident, patient, slices, header_text


def _rescale(ds: Any) -> tuple[float, float]:
    """DICOM ``(RescaleSlope, RescaleIntercept)``, 1 and 0 when absent.

    Raises:
        CurationReject: ``non_finite`` when either is NaN or infinite (every pixel would be).
    """
    slope, intercept = number(ds, "RescaleSlope"), number(ds, "RescaleIntercept")
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise CurationReject("non_finite", f"DICOM rescale slope {slope} / intercept {intercept} is not a finite number")
    return slope, intercept


def _dicom_grey(found: Found, st: _State, ds: Any, ident: Identity, slope: float, intercept: float) -> list[_Slice]:
    """A single-frame grey DICOM image decoded from its already-parsed dataset.

    The pixels are pydicom's ``pixel_array`` with the DICOM rescale (slope, intercept) applied,
    as MONAI's ``PydicomReader`` gives them, kept in display order ``(rows, columns)``: the
    modality normalisation is element-wise (CT) or global (MRI percentiles), so it does not
    depend on the axis order, and the transposition MONAI's axis convention needs is left to
    the writer (a view). CT goes through a lookup table (:func:`_ct_table`).
    """
    try:
        px = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - the decoders raise many types
        raise _read_reject(err, found) from None
    if px.ndim != 2:
        raise CurationReject("wrong_dimensionality", f"decoded array of shape {tuple(px.shape)}; expected a 2D image")
    check_image(px[None], ident.modality, st.cfg)  # integer pixels: finite by construction; constant is checked
    rows, cols = (int(s) for s in px.shape)
    if ident.modality == CT and px.dtype.kind in "ui" and px.dtype.itemsize <= 2:
        # CT's rule is element-wise: the quantised output is a function of the stored value, tabulated once per
        # (dtype, slope, intercept) by the same steps below applied to every possible stored value
        lut = _ct_table(st, px.dtype, slope, intercept)
        index = px.view(np.uint16 if px.dtype.itemsize == 2 else np.uint8)
        out = np.take(lut, index)  # a gather: 2x faster than lut[index] for 16-bit indices
        disp = None if is_constant(out) else out
        return [_Slice(None, disp, STORED_GREY_MAX, cols, rows, 1, _pixel_spacing(ds))]
    if (ident.modality == MRI and slope == 1.0 and intercept == 0.0 and px.dtype.kind in "ui"
            and px.dtype.itemsize <= 2 and (px.dtype.kind == "u" or int(px.min()) >= 0)):
        # MRI's window depends on the image (its percentiles, from a histogram of the integer pixels), then the
        # rule is element-wise: the values 0..max are scaled by the shared transform once and looked up
        index = px.view(np.uint16 if px.dtype.itemsize == 2 else np.uint8)  # non-negative: same bit pattern
        lut = _mri_table(index)
        out = np.take(lut, index)
        disp = None if is_constant(out) else out
        return [_Slice(None, disp, STORED_GREY_MAX, cols, rows, 1, _pixel_spacing(ds))]
    norm = _rescale_normalise(px, slope, intercept, ident.modality)
    return [_slice_of(None, norm[0], cols, rows, 1, _pixel_spacing(ds), owned=True)]


def _rescale_normalise(px: np.ndarray, slope: float, intercept: float, modality: str) -> np.ndarray:
    """DICOM rescale (float32) then :class:`~hicur_monai.transforms.ScaleIntensityByModality`: ``(1, rows, columns)``."""
    import torch
    from monai.data import get_track_meta, set_track_meta

    from hicur_monai.transforms import ScaleIntensityByModality

    if slope != 1.0:
        img = np.multiply(px, np.float32(slope), dtype=np.float32)
        if intercept != 0.0:
            img += np.float32(intercept)
    else:  # the usual case (CT: intercept only; MR: neither): one pass
        img = np.add(px, np.float32(intercept), dtype=np.float32)
    t = torch.from_numpy(img[None])  # a tensor in, a tensor out: no conversions inside the transform
    track = get_track_meta()
    set_track_meta(False)  # plain tensors: no metadata to carry for a 2D slice, and no MetaTensor overhead
    try:
        norm = ScaleIntensityByModality(modality)(t)
    except ValueError:
        raise CurationReject("constant_image", "intensities are constant between the scaling percentiles") from None
    finally:
        set_track_meta(track)
    return norm.detach().cpu().numpy() if hasattr(norm, "detach") else np.asarray(norm)


def _ct_table(st: _State, dtype: np.dtype, slope: float, intercept: float) -> np.ndarray:
    """uint16 output of every stored value of ``dtype`` (indexed by the value's unsigned bit pattern).

    Each entry is what the direct path gives for that value: DICOM rescale, the shared CT window
    (``ScaleIntensityByModality("ct")``), quantisation to :data:`STORED_GREY_MAX` steps.
    """
    key = (np.dtype(dtype).str, slope, intercept)
    lut = st.tables.get(key)
    if lut is None:
        unsigned = np.uint16 if np.dtype(dtype).itemsize == 2 else np.uint8
        values = np.arange(np.iinfo(unsigned).max + 1, dtype=unsigned).view(dtype)  # bit pattern -> value
        norm = _rescale_normalise(values[None], slope, intercept, CT)
        lut = _quantise(norm[0], owned=True)[0].reshape(-1)  # (1, N) grey array -> the N table entries
        st.tables[key] = lut
    return lut


def _mri_table(index: np.ndarray) -> np.ndarray:
    """uint16 output of the values ``0..index.max()`` under the MRI rule with ``index``'s own window.

    Same values as ``ScaleIntensityByModality("mri")`` on the float image then quantisation: the
    window (percentiles) is the transform's :meth:`~hicur_monai.transforms.ScaleIntensityByModality.mri_window`
    and each table entry goes through its :meth:`~hicur_monai.transforms.ScaleIntensityByModality.apply_window`.
    """
    import torch
    from monai.data import get_track_meta, set_track_meta

    from hicur_monai.transforms import ScaleIntensityByModality

    try:
        lo, hi = ScaleIntensityByModality(MRI).mri_window(index)
    except ValueError:
        raise CurationReject("constant_image", "intensities are constant between the scaling percentiles") from None
    values = torch.arange(int(index.max()) + 1, dtype=torch.float32)[None]
    track = get_track_meta()
    set_track_meta(False)
    try:
        norm = ScaleIntensityByModality.apply_window(values, lo, hi)
    finally:
        set_track_meta(track)
    norm = norm.numpy() if hasattr(norm, "numpy") else np.asarray(norm)
    return _quantise(np.ascontiguousarray(norm, dtype=np.float32), owned=True)[0].reshape(-1)


def _pixel_spacing(ds: Any) -> tuple[float, float]:
    ps = values(ds, "PixelSpacing")
    return (float(ps[1]), float(ps[0])) if ps is not None and len(ps) == 2 and min(map(float, ps)) > 0 else (1.0, 1.0)


def _spacing(affine: np.ndarray) -> tuple[float, float]:
    n = affine.shape[0] - 1
    sp = np.linalg.norm(affine[:n, :n], axis=0)
    return (float(sp[0]) if sp.size > 0 and sp[0] > 0 else 1.0, float(sp[1]) if sp.size > 1 and sp[1] > 0 else 1.0)


def _slice_of(index: int | None, disp: np.ndarray, width: int, height: int, channels: int,
              spacing: tuple[float, float], owned: bool = False) -> _Slice:
    """A normalised display-order slice (``(rows, columns)`` or ``(rows, columns, 3)``) -> uint16 / uint8.

    The values are ``ScaleIntensityByModality``'s, which clips to [0, 1]; they are rounded to
    the nearest of 65535 (grey) or 255 (RGB) steps. A slice that is constant once quantised is
    kept as ``display=None`` (an ``empty_slice`` row). ``owned``: ``disp`` may be overwritten.
    """
    out, vmax = _quantise(disp, owned)
    return _Slice(index, None if is_constant(out) else out, vmax, width, height, channels, spacing)


def _quantise(disp: np.ndarray, owned: bool = False) -> tuple[np.ndarray, int]:
    """Normalised ``[0, 1]`` values -> (uint16 x :data:`STORED_GREY_MAX` if 2D, else uint8 x :data:`STORED_RGB_MAX`,
    that maximum), rounded to the nearest step. ``owned``: ``disp`` may be overwritten."""
    vmax = STORED_GREY_MAX if disp.ndim == 2 else STORED_RGB_MAX
    if owned and disp.dtype == np.float32 and disp.flags.c_contiguous:
        q = np.multiply(disp, np.float32(vmax), out=disp)  # the transform's fresh output: scaled in place
    else:
        q = np.multiply(disp, np.float32(vmax), dtype=np.float32, order="C")
    np.rint(q, out=q)
    return q.astype(np.uint16 if disp.ndim == 2 else np.uint8), vmax


def _quantised(index: int | None, a: np.ndarray, spacing: tuple[float, float]) -> _Slice:
    """A normalised ``(C, X, Y)`` slice in [0, 1] -> its display array (uint16 grey or uint8 RGB)."""
    channels, width, height = (int(s) for s in a.shape)
    disp = a[0].T if channels == 1 else a[:3].transpose(2, 1, 0)
    return _slice_of(index, disp, width, height, channels, spacing)


def _picture(found: Found, st: _State, fmt: str, match: Any, row: dict[str, Any], content: bytes | None = None
             ) -> tuple[Identity, str, list[_Slice]]:
    """A PNG / JPEG file: one open for the header checks and the decode (from ``content``, the file's bytes
    already read for the file hash, when there)."""
    import io

    from PIL import Image

    cfg, pseudo = st.cfg, st.pseudo
    try:
        im = Image.open(io.BytesIO(content) if content is not None else found.path)
    except Exception as err:  # noqa: BLE001
        raise CurationReject(_reading_reason(str(err)), f"{fmt} header: {type(err).__name__}") from None
    with im:
        shape, channels = (int(im.size[0]), int(im.size[1])), len(im.getbands())
        ident = identify_by_rules(fmt, found.rel, match, channels)
        check_shape(shape, cfg, channels)
        patient = pseudo.patient(ident.patient_key)
        _identity_columns(row, ident, patient, found, pseudo)
        if ident.modality != ENDOSCOPY or im.mode not in ("RGB", "RGBA"):
            im.close()
            return ident, patient, _general(found, st, ident, fmt, None, 1, 255.0)
        try:
            a = np.asarray(im)
        except Exception as err:  # noqa: BLE001
            raise _read_reject(err, found) from None
        if a.ndim != 3 or a.dtype != np.uint8:
            raise CurationReject("wrong_dimensionality", f"decoded array of shape {a.shape}; expected an RGB image")
        if a.shape[2] == 4:
            a = np.ascontiguousarray(a[..., :3])
        check_image(a.transpose(2, 1, 0), ident.modality, cfg)
        ph = perceptual_hash(im if im.mode == "RGB" else Image.fromarray(a))  # check_image: not constant
    # 8-bit RGB: ScaleIntensityByModality (x / 255, clipped) and quantisation back to 8 bits (x 255, rounded)
    # give back the input values exactly (tests/test_curation.py checks it): the decoded array is the output
    sl = _Slice(None, a, STORED_RGB_MAX, int(a.shape[1]), int(a.shape[0]), 3, (1.0, 1.0), ph)
    return ident, patient, [sl]


def _probe(path: str, fmt: str) -> tuple[tuple[int, ...], int | None]:
    """Spatial shape and channel count from the header only (no pixel decode)."""
    if fmt == "nifti":
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(path).shape)
        return shape, None
    if fmt == "nrrd":
        import nrrd

        hdr = nrrd.read_header(path)
        return tuple(int(s) for s in hdr["sizes"]), None
    return (), None


def _general(found: Found, st: _State, ident: Identity, fmt: str, frames: int | None, samples: int,
             rgb_max: float) -> list[_Slice]:
    """Any image through the toolkit loader: volumes are oriented to LPS and sliced; all is normalised."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from hicur_monai.transforms import ExtractSlices, ScaleIntensityByModality

    cfg = st.cfg
    try:
        t = st.loader(found.path)
    except ValueError as err:
        raise _read_reject(err, found) from None
    # DICOM colour images may come as (1, 3, X, Y) or (1, X, Y, 3): make them (3, X, Y)
    if fmt == "dicom" and t.ndim == 4 and t.shape[0] == 1 and samples in (3, 4) and frames is None:
        a = t.as_tensor()[0]
        a = a if a.shape[0] == samples else a.permute(2, 0, 1)
        t = MetaTensor(a.contiguous(), affine=t.affine, meta=t.meta)
    spatial = tuple(int(s) for s in t.shape[1:])
    if len(spatial) == 3 and spatial[-1] == 1 and frames is None:
        t = t[..., 0]
        spatial = spatial[:2]
    check_image(t, ident.modality, cfg)
    norm = ScaleIntensityByModality(ident.modality, rgb_max=rgb_max)
    try:
        t = norm(t)
    except ValueError:
        raise CurationReject("constant_image", "intensities are constant between the scaling percentiles") from None
    pieces: list[tuple[int | None, Any]]
    if len(spatial) == 2:
        pieces = [(None, t)]
    else:
        axis = 2
        if frames is not None:  # multi-frame DICOM: cut along the frame axis
            cands = [i for i, s in enumerate(spatial) if s == frames]
            if not cands:
                raise CurationReject("wrong_dimensionality", "multi-frame DICOM whose frame axis is not found")
            axis = cands[-1]
        else:
            t = Orientation(axcodes="LPS")(t)
        start, stop = _slice_range(found, st, ident, tuple(int(x) for x in t.shape[1:]), axis, frames is None)
        pieces = [(int(s.meta["slice_index"]), s) for s in ExtractSlices(axis=axis, start=start, stop=stop)(t)]
    out = []
    for k, s in pieces:
        a = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        aff = s.affine.numpy() if isinstance(s, MetaTensor) else np.eye(3)
        out.append(_quantised(k, a, _spacing(aff)))
    return out


def _write(slices: Iterable[_Slice], st: _State, ident: Identity, fmt: str, base: dict[str, Any], patient: str,
           in_row: dict[str, Any], header_text: str | None) -> list[dict[str, Any]]:
    """Hash, pHash and write every slice (atomically); one manifest row each."""
    cfg = st.cfg
    mod = ident.modality
    rel_folder = f"images/{mod}/{ident.sequence or 'all'}/{patient}"
    folder = os.path.join(cfg.out_dir, rel_folder)
    if folder not in st.folders:
        os.makedirs(folder, exist_ok=True)
        st.folders.add(folder)
    ext = cfg.image_format
    rows: list[dict[str, Any]] = []
    for sl in slices:
        k = sl.index
        r = new_row(row_type="image", **base, format=fmt, patient=patient, modality=mod, sequence=ident.sequence or "",
                    group_id=in_row["group_id"], slice_index=k, acq_params=in_row["acq_params"],
                    width=sl.width, height=sl.height, channels=1 if sl.channels == 1 else 3,
                    spacing_x=sl.spacing[0], spacing_y=sl.spacing[1])
        if sl.display is None:
            r.update(status=REJECTED, reason="empty_slice", detail="constant slice")
            rows.append(r)
            continue
        r["value_max"] = sl.value_max
        name = f"{base['source_id']}.{ext}" if k is None else f"{base['source_id']}_s{k:04d}.{ext}"
        rel_out = f"{rel_folder}/{name}"
        path = os.path.join(folder, name)
        r.update(output_path=rel_out, image_hash=content_hash(sl.display),
                 phash=sl.phash or perceptual_hash(sl.display), status=ACCEPTED)
        if ext == "npy":
            if header_text is not None:  # the header first: an image never exists without it
                atomic_write_chunks(path + ".dicom.json", [header_text.encode()])
            disp = np.ascontiguousarray(sl.display)
            atomic_write_chunks(path, [npy_header(disp), disp])  # made durable by the part commit
        else:
            text = {"hicur": json.dumps({"source_id": base["source_id"], "patient": patient, "modality": mod,
                                         "sequence": ident.sequence or "", "slice_index": k,
                                         "value_max": sl.value_max, "spacing": list(sl.spacing)})}
            if header_text is not None:
                text["dicom"] = header_text
            with atomic_open(path, "wb", fsync=False) as fh:
                fh.write(encode_png(sl.display, text, cfg.png_compress_level))
        rows.append(r)
    return rows


def _slice_range(found: Found, st: _State, ident: Identity, shape: tuple[int, ...], axis: int, orient: bool
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
        mpath = Path(found.path).parent / spec.mask
        try:
            mask = st.loader(str(mpath))
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


def _streams(fmt: str, shape: tuple[int, ...], ident: Identity) -> bool:
    """Whether a file is read by :func:`_nifti_streamed`: a 3D NIfTI grey volume above :data:`volumes.STREAM_BYTES`."""
    from hicur_monai.data.curation import volumes

    return (fmt == "nifti" and len(shape) == 3 and min(shape) > 1 and ident.modality != ENDOSCOPY
            and int(np.prod(shape, dtype=np.int64)) * 4 > volumes.STREAM_BYTES)


def _nifti_streamed(found: Found, st: _State, ident: Identity) -> Iterator[_Slice]:
    """A large NIfTI volume with one float32 copy in memory (:mod:`.volumes`), normalised and cut one slice
    at a time; the same values as :func:`_general` (the window is the whole volume's). Every check runs
    before the first slice is yielded, so a rejection never leaves images behind."""
    import torch
    from monai.data import get_track_meta, set_track_meta

    from hicur_monai.data.curation import volumes
    from hicur_monai.data.curation.volumes import NonFiniteVolume, lps_view
    from hicur_monai.transforms import ScaleIntensityByModality

    try:
        vol, affine = volumes.read_nifti_float32(found.path)
    except NonFiniteVolume:
        raise CurationReject("non_finite", "image contains NaN or infinite values") from None
    except Exception as err:  # noqa: BLE001 - nibabel raises many types on damaged files
        raise _read_reject(err, found) from None
    if is_constant(vol):
        raise CurationReject("constant_image", "every pixel has the same value")
    scale = ScaleIntensityByModality(ident.modality)
    window = None
    if ident.modality == MRI:
        try:
            window = scale.mri_window(torch.from_numpy(vol[None]))  # the whole volume's window (a view, no copy)
        except ValueError:
            raise CurationReject("constant_image", "intensities are constant between the scaling percentiles") from None
    view, oriented = lps_view(vol, affine)
    start, stop = _slice_range(found, st, ident, tuple(int(x) for x in view.shape), 2, True)
    aff2 = np.eye(3)
    aff2[:2, :2] = oriented[:2, :2]
    spacing = _spacing(aff2)

    block = max(1, volumes.SLAB_BYTES // (int(view.shape[0]) * int(view.shape[1]) * 4))

    def cut() -> Iterator[_Slice]:
        track = get_track_meta()
        set_track_meta(False)
        try:
            for b in range(start, stop, block):  # a block of slices copied at once: whole cache lines, not a gather
                chunk = np.ascontiguousarray(np.moveaxis(view[:, :, b:min(stop, b + block)], 2, 0))
                for j, k in enumerate(range(b, b + chunk.shape[0])):
                    s = torch.from_numpy(chunk[j][None])
                    norm = scale.apply_window(s, *window) if window is not None else scale(s)
                    yield _quantised(k, norm.numpy(), spacing)
        finally:
            set_track_meta(track)

    return cut()
