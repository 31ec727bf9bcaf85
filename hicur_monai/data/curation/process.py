"""The per-file curation pipeline (runs in the worker processes).

``process_file`` turns one discovered path into manifest rows: one input row, plus one
row per output image. It never raises: every failure becomes a rejected row with a reason
code, and messages are scrubbed of the absolute path. Images are read with the toolkit's
one loader (:class:`~hicur_monai.transforms.LoadMedicalImage`), normalised with
:class:`~hicur_monai.transforms.ScaleIntensityByModality`, 3D volumes are oriented to LPS
(so axial slices look like radiological-convention DICOM images) and cut with
:class:`~hicur_monai.transforms.ExtractSlices`, and each 2D image is written atomically as
a PNG: 16-bit grey (normalised value x 65535) for MRI/CT, 8-bit RGB for endoscopy.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
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
from hicur_monai.data.curation.discover import Found
from hicur_monai.data.curation.identify import Identity, default_patient_key, identify_by_rules, identify_dicom
from hicur_monai.data.curation.manifest import new_row
from hicur_monai.data.curation.qc import check_image, check_shape, is_constant
from hicur_monai.data.curation.reasons import ACCEPTED, REJECTED, CurationReject
from hicur_monai.data.curation.rules import Rules
from hicur_monai.modality import ENDOSCOPY
from hicur_monai.utils.io import atomic_open

__all__ = ["CurateConfig", "process_file", "init_worker", "run_in_worker", "encode_png", "perceptual_hash"]


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
        redact_source_paths: write ``redacted:<source_id>`` instead of every source path.
        png_compress_level: zlib level of the written PNGs (1 = fast, 9 = small).
    """

    out_dir: str
    rules: Rules
    salt: str
    shard: str = "0/1"
    min_size: int = 32
    max_side: int = 8192
    max_voxels: int = 1 << 29
    redact_source_paths: bool = False
    png_compress_level: int = 1


class _State:
    def __init__(self, cfg: CurateConfig) -> None:
        from hicur_monai.transforms import LoadMedicalImage

        self.cfg = cfg
        self.pseudo = Pseudonymizer(cfg.salt)
        self.loader = LoadMedicalImage(dtype=np.float32)
        self.out = Path(cfg.out_dir)


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


def _scrub(msg: str, found: Found) -> str:
    out = str(msg)
    for s in sorted({found.path, os.path.dirname(found.path)}, key=len, reverse=True):
        if s and len(s) > 1:
            out = out.replace(s, "<file>")
    return out[:300]


def encode_png(arr: np.ndarray, text: dict[str, str], compress_level: int = 1) -> bytes:
    """PNG bytes of a ``(X, Y)`` uint16 or ``(X, Y, 3)`` uint8 array (MONAI axis order), with text chunks."""
    import io

    from PIL import Image, PngImagePlugin

    img = Image.fromarray(np.ascontiguousarray(arr.T if arr.ndim == 2 else arr.transpose(1, 0, 2)))
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def perceptual_hash(norm: np.ndarray) -> str:
    """64-bit pHash (hex) of a normalised ``(X, Y)`` or ``(X, Y, 3)`` image in [0, 1]."""
    import imagehash
    from PIL import Image

    a = (np.clip(norm, 0, 1) * 255).astype(np.uint8)
    a = a.T if a.ndim == 2 else a.transpose(1, 0, 2)
    img = Image.fromarray(np.ascontiguousarray(a))
    if img.mode != "L":
        img = img.convert("L")
    return str(imagehash.phash(img))


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _probe(path: str, fmt: str) -> tuple[tuple[int, ...], int | None]:
    """Spatial shape and channel count from the header only (no pixel decode)."""
    if fmt == "nifti":
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(path).shape)
        return shape, None
    if fmt in ("png", "jpeg"):
        from PIL import Image

        with Image.open(path) as im:
            ch = len(im.getbands())
            return (int(im.size[0]), int(im.size[1])), ch
    if fmt == "nrrd":
        import nrrd

        hdr = nrrd.read_header(path)
        return tuple(int(s) for s in hdr["sizes"]), None
    return (), None


def _reading_reason(msg: str) -> str:
    m = msg.lower()
    if "nan" in m and "infinite" in m:
        return "non_finite"
    if any(k in m for k in ("truncat", "eof", "end of file", "doesn't match the expected length",
                            "does not match the expected", "unexpected end", "premature", "not enough",
                            "buffer is too small", "compressed file ended", "image file is truncated")):
        return "truncated"
    return "unreadable"


def _dicom_truncated(ds: Any, path: str) -> bool:
    if "PixelData" not in ds:
        return False
    raw = ds.get_item("PixelData")  # the raw (deferred) element: its offset and length, not its value
    tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", None)
    if tell is None or length in (None, 0xFFFFFFFF):
        return False
    return tell + length > os.path.getsize(path)


def process_file(found: Found, st: _State) -> list[dict[str, Any]]:
    """Curate one path into manifest rows (never raises)."""
    cfg, pseudo = st.cfg, st.pseudo
    sid = pseudo.source_id(found.rel)
    src = f"redacted:{sid}" if cfg.redact_source_paths else found.rel
    base = {"source_path": src, "source_id": sid, "shard": cfg.shard}
    row = new_row(row_type="input", **base)
    images: list[dict[str, Any]] = []
    try:
        if found.problem:
            raise CurationReject(found.problem, found.detail)
        match = cfg.rules.match(found.rel)
        if match is not None and match.exclude:
            raise CurationReject("excluded_by_rule", f"rule {match.rule}: {match.exclude}")
        if os.path.getsize(found.path) == 0:
            raise CurationReject("empty_file", "0 bytes")
        try:
            row["file_sha256"] = _file_sha256(found.path)
        except PermissionError:
            raise CurationReject("permission_denied", "no read permission") from None
        from hicur_monai.transforms import sniff_format

        try:
            fmt = sniff_format(found.path)
        except ValueError:
            raise CurationReject("not_an_image", "content is not DICOM, NIfTI, NRRD, PNG or JPEG") from None
        row["format"] = fmt
        header_text: str | None = None
        frames_axis_len: int | None = None
        samples = 1
        if fmt == "dicom":
            try:
                ds = read_header(found.path)
            except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad files
                raise CurationReject(_reading_reason(str(err)), f"DICOM header: {type(err).__name__}") from None
            ident = identify_dicom(ds, cfg.rules, match)
            if not ident.patient_key:  # no PatientID / PatientName: the rule's or the folder's patient
                ident.patient_key = default_patient_key(found.rel)
            secrets = path_sensitive_values(ds)
            low = found.rel.lower()
            if any(s.lower() in low for s in secrets):
                src = f"redacted:{sid}"  # the path itself carries an identifier of this file
                base["source_path"] = row["source_path"] = src
            if _dicom_truncated(ds, found.path):
                raise CurationReject("truncated", "pixel data runs past the end of the file")
            rows_, cols_ = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            check_shape((cols_, rows_) + ((frames,) if frames > 1 else ()), cfg)
            frames_axis_len = frames if frames > 1 else None
            patient = pseudo.patient(ident.patient_key)
            deidentify_dataset(ds, pseudo, patient)
            header_text = header_json(ds)
            bits = int(ds.get("BitsStored", 8) or 8)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            rgb_max = float(2**bits - 1) if ident.modality == ENDOSCOPY else 255.0
            del ds
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
            rgb_max = 255.0
        row.update(patient=patient, modality=ident.modality, sequence=ident.sequence or "",
                   group_id=pseudo.group(ident.group_key or found.rel),
                   acq_params=json.dumps(ident.acq, sort_keys=True) if ident.acq else "")
        try:
            img = st.loader(found.path)
        except ValueError as err:
            reason = _reading_reason(str(err))
            raise CurationReject(reason, _scrub(str(err), found) if reason == "unreadable" else
                                 ("image contains NaN or infinite values" if reason == "non_finite" else "file is cut short")) from None
        images = _images(found, st, ident, img, fmt, frames_axis_len, samples, rgb_max, base, patient, row, header_text)
        row.update(status=ACCEPTED, n_images=len([r for r in images if r["status"] == ACCEPTED]))
        if not any(r["status"] == ACCEPTED for r in images):
            row.update(status=REJECTED, reason="constant_image", detail="every slice is constant")
    except CurationReject as rej:
        row.update(status=REJECTED, reason=rej.reason, detail=_scrub(rej.detail, found))
        images = []
    except Exception as err:  # noqa: BLE001 - a bad file must never stop the run
        row.update(status=REJECTED, reason="internal_error", detail=_scrub(f"{type(err).__name__}: {err}", found))
        images = []
    return [row, *images]


def _images(found: Found, st: _State, ident: Identity, img: Any, fmt: str, frames: int | None, samples: int, rgb_max: float,
            base: dict[str, Any], patient: str, in_row: dict[str, Any], header_text: str | None) -> list[dict[str, Any]]:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from hicur_monai.transforms import ExtractSlices, ScaleIntensityByModality, slice_range_from_mask

    cfg = st.cfg
    t = img
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
    mod = ident.modality
    norm = ScaleIntensityByModality(mod, rgb_max=rgb_max)
    try:
        t = norm(t)
    except ValueError:
        raise CurationReject("constant_image", "intensities are constant between the scaling percentiles") from None
    slices: list[tuple[int | None, Any]]
    if len(spatial) == 2:
        slices = [(None, t)]
    else:
        axis = 2
        if frames is not None:  # multi-frame DICOM: cut along the frame axis
            cands = [i for i, s in enumerate(spatial) if s == frames]
            if not cands:
                raise CurationReject("wrong_dimensionality", "multi-frame DICOM whose frame axis is not found")
            axis = cands[-1]
        else:
            t = Orientation(axcodes="LPS")(t)
        start, stop = 0, int(t.shape[axis + 1])
        spec = ident.slices
        if spec is not None and spec.mask:
            mpath = Path(found.path).parent / spec.mask
            try:
                mask = st.loader(str(mpath))
                if frames is None:
                    mask = Orientation(axcodes="LPS")(mask)
            except Exception:  # noqa: BLE001
                raise CurationReject("mask_error", f"mask {spec.mask!r} beside the image cannot be read") from None
            if tuple(mask.shape[1:]) != tuple(t.shape[1:]):
                raise CurationReject("mask_error", f"mask shape {tuple(mask.shape[1:])} differs from image {tuple(t.shape[1:])}")
            try:
                start, stop = slice_range_from_mask(mask, axis=axis, margin=spec.margin)
            except ValueError:
                raise CurationReject("no_slices_in_range", f"mask {spec.mask!r} is empty") from None
        elif spec is not None:
            start, stop = spec.fixed_range(stop)
        if stop <= start:
            raise CurationReject("no_slices_in_range", f"slice range [{start}, {stop}) is empty")
        slices = [(int(s.meta["slice_index"]), s) for s in ExtractSlices(axis=axis, start=start, stop=stop)(t)]
    seq = ident.sequence or "all"
    folder = st.out / "images" / mod / seq / patient
    rows: list[dict[str, Any]] = []
    for k, s in slices:
        a = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        aff = s.affine.numpy() if isinstance(s, MetaTensor) else np.eye(3)
        sp = np.linalg.norm(aff[: aff.shape[0] - 1, : aff.shape[0] - 1], axis=0)
        r = new_row(row_type="image", **base, format=fmt, patient=patient, modality=mod, sequence=ident.sequence or "",
                    group_id=in_row["group_id"], slice_index=k, acq_params=in_row["acq_params"],
                    width=int(a.shape[1]), height=int(a.shape[2]), channels=int(a.shape[0]),
                    spacing_x=float(sp[0]) if sp.size > 0 and sp[0] > 0 else 1.0,
                    spacing_y=float(sp[1]) if sp.size > 1 and sp[1] > 0 else 1.0)
        if is_constant(a):
            r.update(status=REJECTED, reason="empty_slice", detail="constant slice")
            rows.append(r)
            continue
        if a.shape[0] == 1:
            arr = np.round(np.clip(a[0], 0, 1) * 65535).astype(np.uint16)
            r["value_max"] = 65535
        else:
            arr = np.round(np.clip(a[:3].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
            r["value_max"] = 255
        name = f"{base['source_id']}.png" if k is None else f"{base['source_id']}_s{k:04d}.png"
        rel_out = (folder / name).relative_to(st.out).as_posix()
        text = {"hicur": json.dumps({"source_id": base["source_id"], "patient": patient, "modality": mod,
                                     "sequence": ident.sequence or "", "slice_index": k, "value_max": r["value_max"]})}
        if header_text is not None:
            text["dicom"] = header_text
        h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
        r.update(output_path=rel_out, image_sha256=h.hexdigest(), phash=perceptual_hash(arr / float(r["value_max"])),
                 status=ACCEPTED)
        with atomic_open(st.out / rel_out, "wb", fsync=False) as fh:  # made durable by the part commit
            fh.write(encode_png(arr, text, cfg.png_compress_level))
        rows.append(r)
    return rows
