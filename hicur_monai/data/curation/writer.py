"""Curation's writer: each curated 2D image to a file (atomically), one manifest row each.

Each image is written as an uncompressed NPY array, channel-first ``(C, X, Y)`` (MONAI's axis
order): uint16 = normalised x 65535 for MRI/CT, uint8 RGB for endoscopy; with
``keep_dicom_header`` the de-identified header goes beside it (``<image>.dicom.json``). Or as
a PNG (``image_format="png"``, header and metadata in text chunks). The NPY bytes are exactly
``np.save``'s for the channel-first array, written without a copy (:func:`npy_header`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from hicur_monai.data.curation.context import WorkerState
from hicur_monai.data.curation.hashing import content_hash, perceptual_hash
from hicur_monai.data.curation.identify import Identity
from hicur_monai.data.curation.manifest import new_row
from hicur_monai.data.curation.normalise import CuratedSlice
from hicur_monai.data.curation.reasons import ACCEPTED, REJECTED
from hicur_monai.utils.io import atomic_open, atomic_write_chunks

__all__ = ["encode_npy", "encode_png", "npy_header", "write_images"]

_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def encode_png(arr: np.ndarray, text: dict[str, str], compress_level: int = 1) -> bytes:
    """PNG bytes of a ``(rows, columns)`` uint16 or ``(rows, columns, 3)`` uint8 display array, with text chunks."""
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
        shape = (1, display.shape[1], display.shape[0]) if display.ndim == 2 else display.shape[::-1]
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(display.dtype), "fortran_order": True, "shape": shape})
        hdr = _NPY_HEADERS[key] = buf.getvalue()
    return hdr


def encode_npy(fh: Any, arr: np.ndarray) -> None:
    """Write a ``(rows, columns[, 3])`` display array as NPY to the open binary file ``fh``
    (:func:`npy_header`, then the array's bytes: the same file ``np.save`` writes for the
    channel-first transposed view)."""
    disp = np.ascontiguousarray(arr)
    fh.write(npy_header(disp))
    fh.write(disp.data.cast("B"))


def _output_folder(st: WorkerState, ident: Identity, patient: str) -> tuple[str, str]:
    """``images/<modality>/<sequence|all>/<patient>``, relative and absolute (created once per worker)."""
    rel_folder = f"images/{ident.modality}/{ident.sequence or 'all'}/{patient}"
    folder = os.path.join(st.cfg.out_dir, rel_folder)
    if folder not in st.folders:
        os.makedirs(folder, exist_ok=True)
        st.folders.add(folder)
    return rel_folder, folder


def _write_image(st: WorkerState, path: str, sl: CuratedSlice, meta: dict[str, Any], header_text: str | None) -> None:
    """One image file (atomically): NPY (the header file first: an image never exists without it) or PNG."""
    assert sl.display is not None
    if st.cfg.image_format == "npy":
        if header_text is not None:
            atomic_write_chunks(path + ".dicom.json", [header_text.encode()])
        disp = np.ascontiguousarray(sl.display)
        atomic_write_chunks(path, [npy_header(disp), disp])  # made durable by the part commit
        return
    text = {"hicur": json.dumps(meta)}
    if header_text is not None:
        text["dicom"] = header_text
    with atomic_open(path, "wb", fsync=False) as fh:
        fh.write(encode_png(sl.display, text, st.cfg.png_compress_level))


def write_images(slices: Iterable[CuratedSlice], st: WorkerState, ident: Identity, fmt: str, base: dict[str, Any],
                 patient: str, in_row: dict[str, Any], header_text: str | None) -> list[dict[str, Any]]:
    """Hash, pHash and write every slice (atomically); one manifest row each (constant slices: rejected)."""
    rel_folder, folder = _output_folder(st, ident, patient)
    ext = st.cfg.image_format
    rows: list[dict[str, Any]] = []
    for sl in slices:
        k = sl.index
        r = new_row(row_type="image", **base, format=fmt, patient=patient, modality=ident.modality,
                    sequence=ident.sequence or "", group_id=in_row["group_id"], slice_index=k,
                    acq_params=in_row["acq_params"], width=sl.width, height=sl.height,
                    channels=1 if sl.channels == 1 else 3, spacing_x=sl.spacing[0], spacing_y=sl.spacing[1])
        rows.append(r)
        if sl.display is None:
            r.update(status=REJECTED, reason="empty_slice", detail="constant slice")
            continue
        r["value_max"] = sl.value_max
        name = f"{base['source_id']}.{ext}" if k is None else f"{base['source_id']}_s{k:04d}.{ext}"
        r.update(output_path=f"{rel_folder}/{name}", image_hash=content_hash(sl.display),
                 phash=sl.phash or perceptual_hash(sl.display), status=ACCEPTED)
        meta = {"source_id": base["source_id"], "patient": patient, "modality": ident.modality,
                "sequence": ident.sequence or "", "slice_index": k, "value_max": sl.value_max,
                "spacing": list(sl.spacing)}
        _write_image(st, os.path.join(folder, name), sl, meta, header_text)
    return rows
