"""The curation manifest: schema, part files, final tables, splits, summary, reading.

One row per input file (``row_type == "input"``) and one per output image
(``row_type == "image"``). Workers' rows are committed in Parquet *part files* (written
atomically, a batch of whole files at a time), which is what ``--resume`` and
``hicur curate merge`` read; the final ``manifest.parquet`` / ``manifest.csv`` are built
from them after de-duplication and splitting. Column meanings are in ``docs/curation.md``
and :data:`COLUMNS`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hicur_monai.data.curation.reasons import ACCEPTED, DUPLICATE, REJECTED
from hicur_monai.utils.csv_safe import neutralize_arrow_strings, restore_neutralized
from hicur_monai.utils.io import atomic_open, atomic_write_json

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "new_row",
    "path_columns",
    "source_columns",
    "source_path_bytes",
    "write_part",
    "read_parts",
    "assign_splits",
    "split_of",
    "summarize",
    "format_summary",
    "write_manifest",
    "load_manifest",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "manifest.parquet"

#: column -> (arrow type, meaning)
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "row_type": (pa.string(), "'input' (one per discovered path) or 'image' (one per output image)"),
    "source_path": (pa.string(), "input path relative to the source's parent folder, or 'redacted:<source_id>'; "
                                 "a byte of the name that is not valid UTF-8 shows as \\xNN (see source_path_hex)"),
    "source_path_hex": (pa.string(), "the path's bytes in hex when they are not valid UTF-8 (source_path_bytes() gives "
                                     "them back); empty otherwise and when redacted"),
    "source_id": (pa.string(), "keyed hash of the relative source path (16 hex); joins image rows to their input row"),
    "format": (pa.string(), "dicom, nifti, nrrd, png, jpeg; empty when unknown"),
    "patient": (pa.string(), "pseudonymous patient id (P + 16 hex, keyed by the salt); empty when unknown"),
    "modality": (pa.string(), "endoscopy, mri or ct; empty when unknown"),
    "sequence": (pa.string(), "T1, T2 or T1C for MRI; empty otherwise"),
    "group_id": (pa.string(),
                 "keyed id of the series (DICOM) or volume file; near duplicates are not sought within a group"),
    "slice_index": (pa.int32(), "index of the slice in the oriented volume (image rows of 3D inputs); null for 2D"),
    "n_images": (pa.int32(), "input rows: images written for this file"),
    "output_path": (pa.string(), "image rows: the image file (NPY or PNG), relative to the output folder"),
    "file_hash": (pa.string(), "input rows: xxh3-128 of the input file's bytes (hex)"),
    "image_hash": (pa.string(), "image rows: xxh3-128 of the written pixel array (dtype, shape, row-major bytes; hex)"),
    "phash": (pa.string(), "image rows: 64-bit perceptual hash (imagehash.phash bits of the 32 x 32 box-averaged "
                           "normalised image), hex"),
    "width": (pa.int32(), "image width in pixels (first spatial axis, MONAI convention)"),
    "height": (pa.int32(), "image height in pixels"),
    "channels": (pa.int32(), "1 (grey, 16-bit) or 3 (RGB, 8-bit)"),
    "spacing_x": (pa.float64(), "pixel spacing along the width in mm (1.0 when unknown)"),
    "spacing_y": (pa.float64(), "pixel spacing along the height in mm"),
    "value_max": (pa.int32(), "the stored value of normalised intensity 1.0: 65535 (grey) or 255 (RGB)"),
    "acq_params": (pa.string(), "JSON of kept DICOM acquisition parameters (TR, TE, field strength, kVp, ...)"),
    "status": (pa.string(), "accepted, rejected or duplicate"),
    "reason": (pa.string(), "reason code for rejected / duplicate rows (see the reasons table)"),
    "detail": (pa.string(), "a sentence on what is wrong; never an absolute path or a header value"),
    "duplicate_of": (pa.string(), "duplicate rows: output_path (images) or source_id (inputs) of the kept one"),
    "split": (pa.string(), "train, val or test for accepted rows (by patient); empty otherwise"),
    "shard": (pa.string(), "'i/n' shard that processed the file"),
}
SCHEMA = pa.schema([(k, t) for k, (t, _m) in COLUMNS.items()])
_INT_COLS = [k for k, (t, _m) in COLUMNS.items() if pa.types.is_integer(t)]
_FLOAT_COLS = [k for k, (t, _m) in COLUMNS.items() if pa.types.is_floating(t)]


def new_row(**values: Any) -> dict[str, Any]:
    """A manifest row with every column present (empty strings / nulls for the rest)."""
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown manifest columns {sorted(unknown)}")
    row: dict[str, Any] = {k: (None if k in _INT_COLS or k in _FLOAT_COLS else "") for k in COLUMNS}
    row.update(values)
    return row


def path_columns(rel: str) -> dict[str, str]:
    """``source_path`` and ``source_path_hex`` of a relative path as discovery gives it (``os.fsdecode`` form).

    A name whose bytes are not valid UTF-8 arrives with surrogate escapes, which neither Parquet
    nor CSV can hold: ``source_path`` then shows each such byte as ``\\xNN`` and
    ``source_path_hex`` keeps the exact bytes (:func:`source_path_bytes`).
    """
    if rel.isascii():
        return {"source_path": rel, "source_path_hex": ""}
    raw = os.fsencode(rel)
    try:
        return {"source_path": raw.decode("utf-8"), "source_path_hex": ""}
    except UnicodeDecodeError:
        return {"source_path": raw.decode("utf-8", "backslashreplace"), "source_path_hex": raw.hex()}


def source_columns(rel: str, source_id: str, redact: bool) -> dict[str, str]:
    """``source_path``, ``source_path_hex`` and ``source_id`` of a row (``redact``: the id only)."""
    if redact:
        return {"source_path": f"redacted:{source_id}", "source_path_hex": "", "source_id": source_id}
    return {**path_columns(rel), "source_id": source_id}


def source_path_bytes(row: Any) -> bytes | None:
    """The exact bytes of a manifest row's source path (relative to the source's parent folder);
    ``None`` when the path is redacted. ``os.fsdecode`` of them is the name ``os.scandir`` gives."""
    path, hexed = str(row["source_path"]), row.get("source_path_hex") or ""
    if path.startswith("redacted:"):
        return None
    return bytes.fromhex(str(hexed)) if hexed else path.encode("utf-8")


def _text_safe(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose strings UTF-8 can encode (a lone surrogate from a file name in a reader's message
    becomes ``\\udcNN`` text), so one odd message never stops a part from being written."""
    def safe(v: Any) -> Any:
        return v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v

    return [{k: safe(v) for k, v in r.items()} for r in rows]


def write_part(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows to one Parquet part file atomically."""
    try:
        table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    except UnicodeEncodeError:
        table = pa.Table.from_pylist(_text_safe(rows), schema=SCHEMA)
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return Path(path)


def read_parts(paths: Iterable[str | os.PathLike], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Concatenate part (or manifest) files into one DataFrame with the manifest's columns.

    Raises:
        ValueError: naming a file that is not a readable manifest part.
    """
    tables = []
    for p in paths:
        try:
            t = pq.read_table(p, columns=list(columns) if columns else None)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            raise ValueError(f"{p}: not a readable manifest part ({type(err).__name__}: {err})") from None
        missing = set(columns or COLUMNS) - set(t.column_names)
        if missing == {"source_path_hex"}:  # a part of a run from before the column existed: all names were text
            t = t.append_column("source_path_hex", pa.array([""] * len(t), pa.string()))
            missing = set()
        if missing:
            raise ValueError(f"{p}: manifest part lacks columns {sorted(missing)}")
        tables.append(t.select(list(columns or COLUMNS)))
    if not tables:
        empty = SCHEMA.empty_table()
        return empty.to_pandas() if columns is None else empty.select(list(columns)).to_pandas()
    return pa.concat_tables(tables).to_pandas()


def split_of(patient: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Deterministic patient-level split: the patient pseudonym's hash picks train / val / test.

    Depends on nothing but the pseudonym, so every shard, resume and merge agrees, and a
    patient can never be in two splits.
    """
    u = int.from_bytes(hashlib.sha256(f"split\x00{patient}".encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def assign_splits(df: pd.DataFrame, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> pd.DataFrame:
    """Fill ``split`` for accepted rows with a patient (in place; returns ``df``)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    df["split"] = ""
    mask = (df["status"] == ACCEPTED) & (df["patient"] != "")
    cache: dict[str, str] = {}
    df.loc[mask, "split"] = [cache.setdefault(p, split_of(p, fractions)) for p in df.loc[mask, "patient"]]
    return df


def _reason_counts(rows: pd.DataFrame, status: str) -> dict[str, int]:
    """Rows of ``status`` per reason, in reason order."""
    return {k: int(v) for k, v in rows[rows["status"] == status]["reason"].value_counts().sort_index().items()}


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Counts per modality and sequence (like the original's data table), per status, reason and split."""
    inputs = df[df["row_type"] == "input"]
    images = df[df["row_type"] == "image"]
    acc = images[images["status"] == ACCEPTED]
    per: list[dict[str, Any]] = []
    for (mod, seq), g in acc.groupby(["modality", "sequence"], sort=True):
        per.append({
            "modality": mod, "sequence": seq or "", "images": int(len(g)), "patients": int(g["patient"].nunique()),
            "input_files": int(g["source_id"].nunique()),
            **{f"images_{s}": int((g["split"] == s).sum()) for s in ("train", "val", "test")},
        })
    patients_by_split = {s: int(acc.loc[acc["split"] == s, "patient"].nunique()) for s in ("train", "val", "test")}
    return {
        "inputs": {
            "total": int(len(inputs)),
            **{s: int((inputs["status"] == s).sum()) for s in (ACCEPTED, REJECTED, DUPLICATE)},
        },
        "images": {
            "total": int(len(images)),
            **{s: int((images["status"] == s).sum()) for s in (ACCEPTED, REJECTED, DUPLICATE)},
        },
        "by_modality": per,
        "accepted_images_total": int(len(acc)),
        "patients": int(acc["patient"].nunique()),
        "patients_by_split": patients_by_split,
        "rejected_inputs_by_reason": _reason_counts(inputs, REJECTED),
        "rejected_images_by_reason": _reason_counts(images, REJECTED),
        "duplicates_by_reason": _reason_counts(df, DUPLICATE),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The per-modality table as text (printed at the end of a run)."""
    lines = [f"{'modality':<10} {'sequence':<8} {'images':>9} {'patients':>8} {'train':>8} {'val':>7} {'test':>7}"]
    for r in summary["by_modality"]:
        lines.append(f"{r['modality']:<10} {r['sequence'] or '-':<8} {r['images']:>9} {r['patients']:>8} "
                     f"{r['images_train']:>8} {r['images_val']:>7} {r['images_test']:>7}")
    lines.append(f"{'total':<19} {summary['accepted_images_total']:>9} {summary['patients']:>8}")
    i = summary["inputs"]
    lines.append(f"inputs: {i['total']} files, {i[ACCEPTED]} accepted, {i[REJECTED]} rejected, "
                 f"{i[DUPLICATE]} duplicate; "
                 f"images: {summary['images'][DUPLICATE]} duplicate, {summary['images'][REJECTED]} rejected")
    if summary["rejected_inputs_by_reason"]:
        rejected = summary["rejected_inputs_by_reason"]
        lines.append("rejected inputs: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    return "\n".join(lines)


def write_manifest(df: pd.DataFrame, out_dir: str | os.PathLike, name: str = "manifest",
                   summary: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.parquet``, ``<name>.csv`` and ``<name>-summary.json`` atomically; returns their paths.

    ``summary``: :func:`summarize` of ``df`` when the caller has it already (else computed here).
    """
    out = Path(out_dir)
    table = pa.Table.from_pandas(df[list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    paths = {"parquet": out / f"{name}.parquet", "csv": out / f"{name}.csv", "summary": out / f"{name}-summary.json"}
    with atomic_open(paths["parquet"], "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    with atomic_open(paths["csv"], "wb") as fh:  # the same table as CSV (Arrow's writer: ~10x pandas' speed)
        # file names come from the data: no cell may run as a spreadsheet formula (reversible, see load_manifest)
        pacsv.write_csv(neutralize_arrow_strings(table), fh, pacsv.WriteOptions(quoting_style="needed"))
    atomic_write_json(paths["summary"], summarize(df) if summary is None else summary)
    return paths


def load_manifest(path: str | os.PathLike, status: str | None = "accepted", split: str | None = None,
                  modality: str | None = None) -> list[dict[str, Any]]:
    """Image rows of a curation manifest as MONAI-style data dicts.

    Args:
        path: ``manifest.parquet`` (or ``.csv``), or the curation output folder.
        status: keep rows of this status (``None``: all image rows).
        split: keep rows of this split (``train``, ``val``, ``test``).
        modality: keep rows of this modality.

    Returns:
        ``[{"image": <absolute NPY / PNG path>, "modality", "sequence", "patient", "split", "slice_index",
        "source_id", "channels", "value_max", "spacing": (x, y)}, ...]`` in manifest order.

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: unknown status / split.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.exists():
        raise FileNotFoundError(f"{p}: no curation manifest (run `hicur curate` first)")
    if status is not None and status not in (ACCEPTED, REJECTED, DUPLICATE):
        raise ValueError(f"status must be accepted, rejected, duplicate or None, got {status!r}")
    if split is not None and split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val, test or None, got {split!r}")
    if p.suffix == ".csv":
        df = restore_neutralized(pd.read_csv(p, dtype=str, keep_default_na=False))
    else:
        df = pq.read_table(p).to_pandas()
    df = df[df["row_type"] == "image"]
    if status is not None:
        df = df[df["status"] == status]
    if split is not None:
        df = df[df["split"] == split]
    if modality is not None:
        df = df[df["modality"] == modality]
    root = p.parent.absolute()

    def num(v: Any, cast: type) -> Any:
        return None if v is None or v == "" or (isinstance(v, float) and v != v) else cast(float(v))

    return [
        {
            "image": str(root / r["output_path"]),
            "modality": r["modality"],
            "sequence": r["sequence"] or None,
            "patient": r["patient"],
            "split": r["split"],
            "slice_index": num(r["slice_index"], int),
            "source_id": r["source_id"],
            "channels": num(r["channels"], int),
            "value_max": num(r["value_max"], int),
            "spacing": (num(r["spacing_x"], float), num(r["spacing_y"], float)),
        }
        for r in df.to_dict("records")
    ]


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
