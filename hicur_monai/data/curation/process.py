"""The per-file curation pipeline (runs in the worker processes).

``process_file`` turns one discovered path into manifest rows: one input row, plus one row per
output image. It never raises: every failure becomes a rejected row with a reason code, and
messages are scrubbed of the absolute path. The steps live in their own modules: the readers
(:mod:`.readers`: decode, identify, check), the normalisation (:mod:`.normalise`: the shared
``ScaleIntensityByModality``), the hashes (:mod:`.hashing`) and the writer (:mod:`.writer`).
Every file is read once: files up to :data:`READ_WHOLE_BYTES` are read into memory, hashed and
(DICOM, PNG, JPEG) decoded from those bytes; larger ones are hashed as a stream.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from hicur_monai.data.curation.context import (
    DEFAULT_MAX_DECODED_MB,
    IMAGE_FORMATS,
    INPUT_FORMATS,
    CurateConfig,
    FileContext,
    WorkerState,
)
from hicur_monai.data.curation.discover import Found
from hicur_monai.data.curation.hashing import bytes_hash, file_hash
from hicur_monai.data.curation.manifest import new_row, source_columns
from hicur_monai.data.curation.readers import ReadResult, read_dicom, read_picture, read_volume
from hicur_monai.data.curation.reasons import ACCEPTED, REJECTED, CurationReject
from hicur_monai.data.curation.writer import write_images

__all__ = [
    "CurateConfig",
    "DEFAULT_MAX_DECODED_MB",
    "IMAGE_FORMATS",
    "INPUT_FORMATS",
    "READ_WHOLE_BYTES",
    "WorkerState",
    "init_worker",
    "process_batch",
    "process_file",
    "run_batch_in_worker",
    "run_in_worker",
]

#: files up to this size are read into memory once (hash and DICOM parse); larger ones are streamed
READ_WHOLE_BYTES = 64 << 20

_STATE: WorkerState | None = None


def init_worker(cfg: CurateConfig) -> None:
    """Process-pool initialiser: one loader per worker, one thread, quiet reader warnings."""
    global _STATE
    import logging

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # reader warnings can name files; the manifest says what matters
    logging.getLogger("monai").setLevel(logging.ERROR)
    _STATE = WorkerState(cfg)


def run_in_worker(found: Found) -> list[dict[str, Any]]:
    """The pool's task: :func:`process_file` with the worker's state."""
    assert _STATE is not None, "init_worker was not called"
    return process_file(found, _STATE)


def run_batch_in_worker(batch: list[Found]) -> list[list[dict[str, Any]]]:
    """The pool's batched task: :func:`process_batch` with the worker's state."""
    assert _STATE is not None, "init_worker was not called"
    return process_batch(batch, _STATE)


def process_batch(batch: list[Found], st: WorkerState) -> list[list[dict[str, Any]]]:
    """:func:`process_file` for several files (one inter-process round trip for all)."""
    return [process_file(f, st) for f in batch]


def process_file(found: Found, st: WorkerState) -> list[dict[str, Any]]:
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


def _process_file(found: Found, st: WorkerState) -> list[dict[str, Any]]:
    cfg = st.cfg
    sid = st.pseudo.source_id(found.rel)
    base = {**source_columns(found.rel, sid, cfg.redact_source_paths), "shard": cfg.shard}
    ctx = FileContext(found, base, new_row(row_type="input", **base))
    row = ctx.row
    images: list[dict[str, Any]] = []
    try:
        fmt, match, content = _open(ctx, st)
        ident, patient, slices, header_text = _read(ctx, st, fmt, match, content)
        images = write_images(slices, st, ident, fmt, ctx.base, patient, row, header_text)
        n_ok = sum(1 for r in images if r["status"] == ACCEPTED)
        row.update(status=ACCEPTED, n_images=n_ok)
        if not n_ok:
            row.update(status=REJECTED, reason="constant_image", detail="every slice is constant")
    except CurationReject as rej:
        row.update(status=REJECTED, reason=rej.reason, detail=ctx.scrub(rej.detail))
        images = []
    except Exception as err:  # noqa: BLE001 - a bad file must never stop the run
        row.update(status=REJECTED, reason="internal_error", detail=ctx.scrub(f"{type(err).__name__}: {err}"))
        images = []
    return [row, *images]


def _open(ctx: FileContext, st: WorkerState) -> tuple[str, Any, bytes | None]:
    """The checks before decoding: discovery's problem, exclusion rules, empty file; the file hash (and
    the bytes of a file up to :data:`READ_WHOLE_BYTES`); the format from the content.

    Returns:
        ``(format, matching rule or None, the file's bytes or None)``.
    """
    from hicur_monai.transforms import sniff_format

    found, row = ctx.found, ctx.row
    if found.problem:
        raise CurationReject(found.problem, found.detail)
    match = st.cfg.rules.match(found.rel)
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
            row["file_hash"] = bytes_hash(content)
        else:
            row["file_hash"] = file_hash(found.path)
    except PermissionError:
        raise CurationReject("permission_denied", "no read permission") from None
    try:
        fmt = sniff_format(found.path)
    except ValueError:
        fmt = ""
    if fmt not in INPUT_FORMATS:
        raise CurationReject("not_an_image", "content is not DICOM, NIfTI, NRRD, PNG or JPEG")
    row["format"] = fmt
    return fmt, match, content


def _read(ctx: FileContext, st: WorkerState, fmt: str, match: Any, content: bytes | None) -> ReadResult:
    """The reader of ``fmt``."""
    if fmt == "dicom":
        return read_dicom(ctx, st, match, content)
    if fmt in ("png", "jpeg"):
        return read_picture(ctx, st, fmt, match, content)
    return read_volume(ctx, st, fmt, match)
