"""hicur curate loses nothing: per-entry discovery problems, file names of any bytes, links that
leave the source, sizes declared by headers, non-finite DICOM rescales (issue 16, item 2)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from curation_helpers import SALT, endoscopy_frame, write_rules

from hicur_monai.data.curation import curate

MRI_RULES = """\
version: 1
rules:
  - glob: "*.nii.gz"
    modality: mri
    sequence: T2
  - glob: "*.nrrd"
    modality: mri
    sequence: T2
"""


def _inputs(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "manifest.parquet")
    return df[df.row_type == "input"].set_index("source_path")


def _frames(folder: Path, *names: str, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        from PIL import Image

        Image.fromarray(endoscopy_frame(seed + k, size=48)).save(folder / name)


def test_symlink_loop_is_a_row_of_its_own_and_the_folder_is_still_walked(tmp_path: Path) -> None:
    """A file-symlink loop (a -> b -> a) used to turn its whole folder, subfolders included, into one
    permission_denied row; now each link is a symlink_loop row and every good image is processed."""
    src = tmp_path / "src"
    _frames(src / "p0", "good.png")
    _frames(src / "p0" / "sub", "deeper.png", seed=5)
    os.symlink("b.png", src / "p0" / "a.png")
    os.symlink("a.png", src / "p0" / "b.png")
    os.symlink("self.png", src / "p0" / "self.png")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, progress=False)
    inputs = _inputs(out)
    assert set(inputs.index) == {"src/p0/a.png", "src/p0/b.png", "src/p0/self.png", "src/p0/good.png",
                                 "src/p0/sub/deeper.png"}
    for name in ("a.png", "b.png", "self.png"):
        assert inputs.loc[f"src/p0/{name}", "reason"] == "symlink_loop", name
    assert (inputs.loc[["src/p0/good.png", "src/p0/sub/deeper.png"], "status"] == "accepted").all()


def test_file_names_of_any_bytes_get_rows_and_resume(tmp_path: Path) -> None:
    """A name that is not valid UTF-8 used to crash the run and --resume; now it gets a row, its bytes
    are kept in the manifest (Parquet and CSV), and a resume finds it done."""
    src = tmp_path / "src"
    _frames(src / "p0", "ok.png")
    bad_dir = os.fsencode(src) + b"/p\xe91"  # a Latin-1 folder name
    os.mkdir(bad_dir)
    from PIL import Image

    Image.fromarray(endoscopy_frame(7, size=48)).save(bad_dir + b"/frame\xff\xfe.png")
    with open(bad_dir + b"/notes\x80.txt", "wb") as fh:
        fh.write(b"not an image")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, progress=False)
    from hicur_monai.data.curation.manifest import source_path_bytes

    df = pd.read_parquet(out / "manifest.parquet")
    inputs = df[df.row_type == "input"]
    assert len(inputs) == 3
    got = {source_path_bytes(r): (r["status"], r["reason"]) for r in inputs.to_dict("records")}
    assert got == {b"src/p0/ok.png": ("accepted", ""),
                   b"src/p\xe91/frame\xff\xfe.png": ("accepted", ""),
                   b"src/p\xe91/notes\x80.txt": ("rejected", "not_an_image")}
    shown = set(inputs.source_path)
    assert "src/p\\xe91/frame\\xff\\xfe.png" in shown
    images = df[(df.row_type == "image") & (df.status == "accepted")]
    assert len(images) == 2 and set(images.source_path) <= shown  # image rows carry the same columns
    csv = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    csv_in = csv[csv.row_type == "input"]
    assert {source_path_bytes(r) for r in csv_in.to_dict("records")} == set(got)
    summary = curate([src], out, salt=SALT, progress=False, resume=True)  # every file done: nothing redone
    assert summary["inputs"]["total"] == 3
    pd.testing.assert_frame_equal(df, pd.read_parquet(out / "manifest.parquet"))
    redacted = tmp_path / "redacted"
    curate([src], redacted, salt=SALT, progress=False, redact_source_paths=True)
    r = pd.read_parquet(redacted / "manifest.parquet")
    assert (r.source_path_hex == "").all() and r.source_path.str.startswith("redacted:").all()


def test_links_leaving_the_source_are_not_followed_unless_asked(tmp_path: Path) -> None:
    """Links to folders or files outside SRC used to be followed and their images accepted."""
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    _frames(src / "p0", "own.png")
    _frames(outside / "p9", "foreign.png", seed=20)
    os.symlink(outside / "p9", src / "p0" / "linked_dir")
    os.symlink(outside / "p9" / "foreign.png", src / "p0" / "linked.png")
    os.symlink("own.png", src / "p0" / "inside_link.png")  # a link that stays inside is followed
    out = tmp_path / "out"
    curate([src], out, salt=SALT, progress=False)
    inputs = _inputs(out)
    assert set(inputs.index) == {"src/p0/own.png", "src/p0/inside_link.png", "src/p0/linked.png",
                                 "src/p0/linked_dir"}
    assert inputs.loc["src/p0/linked_dir", "reason"] == inputs.loc["src/p0/linked.png", "reason"] == "outside_source"
    pair = inputs.loc[["src/p0/inside_link.png", "src/p0/own.png"], "status"]
    assert list(pair) == ["accepted", "duplicate"]  # the inside link was read (first in order); the file is its copy
    from hicur_monai.cli import main

    followed, salt = tmp_path / "followed", tmp_path / "salt.txt"
    salt.write_text(SALT)
    assert main(["curate", str(src), "--out", str(followed), "--follow-external-links", "--max-decoded-mb", "64",
                 "--no-progress", "--salt-file", str(salt)]) == 0
    inputs = _inputs(followed)
    assert inputs.loc["src/p0/linked.png", "status"] == "accepted"
    assert inputs.loc["src/p0/linked_dir/foreign.png", "status"] == "duplicate"


def _nifti_header_only(path: Path, shape: tuple[int, ...]) -> None:
    """A .nii.gz whose header declares ``shape`` (float32) followed by 1 KB of data: a few hundred bytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1024
    path.write_bytes(gzip.compress(raw))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG declaring ``width x height`` RGB 8-bit with a tiny (incomplete) image stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (3 * width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_declared_size_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    """A 1 KB .nii.gz declaring 512 x 512 x 1024 voxels, or a PNG declaring 8000 x 7600 RGB pixels,
    is rejected as too_large from its header (before, the decoder ran: it read gigabytes or failed on the
    missing data)."""
    src = tmp_path / "src"
    (src / "p0").mkdir(parents=True)
    _nifti_header_only(src / "p0" / "huge.nii.gz", (512, 512, 1024))
    _png_header_only(src / "p0" / "bomb.png", 8000, 7600)
    write_rules(tmp_path / "rules.yaml", MRI_RULES)
    out = tmp_path / "out"
    curate([src], out, salt=SALT, rules=tmp_path / "rules.yaml", progress=False)
    inputs = _inputs(out)
    for name in ("huge.nii.gz", "bomb.png"):
        assert inputs.loc[f"src/p0/{name}", "reason"] == "too_large", inputs.loc[f"src/p0/{name}", "detail"]
        assert "--max-decoded-mb" in inputs.loc[f"src/p0/{name}", "detail"]


def test_decoded_size_limit_applies_to_every_format(tmp_path: Path) -> None:
    """The limit is configurable and covers DICOM, NIfTI, NRRD and PNG / JPEG."""
    import nrrd
    from PIL import Image
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    (src / "p0").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "p0" / "ct.dcm")  # 128 x 128: 64 KiB as float32
    vol = np.random.default_rng(0).random((48, 48, 8)).astype(np.float32)  # 72 KiB
    nib.save(nib.Nifti1Image(vol, np.eye(4)), src / "p0" / "vol.nii.gz")
    nrrd.write(str(src / "p0" / "vol.nrrd"), vol, {"space directions": np.eye(3), "space": "left-posterior-superior",
                                                    "space origin": np.zeros(3)})
    Image.fromarray(endoscopy_frame(1, size=96)).save(src / "p0" / "frame.png")  # 96 x 96 x 3: 108 KiB
    Image.fromarray(endoscopy_frame(2, size=96)).save(src / "p0" / "frame.jpg", quality=90)
    rules = write_rules(tmp_path / "rules.yaml", MRI_RULES)
    out = tmp_path / "small_limit"
    curate([src], out, salt=SALT, rules=rules, progress=False, max_decoded_mb=0.05)
    inputs = _inputs(out)
    assert (inputs.reason == "too_large").all(), inputs[["reason", "detail"]]
    out = tmp_path / "default_limit"
    curate([src], out, salt=SALT, rules=rules, progress=False)
    assert (_inputs(out).status == "accepted").all()
    with pytest.raises(ValueError, match="max_decoded_mb"):
        curate([src], tmp_path / "bad", salt=SALT, rules=rules, progress=False, max_decoded_mb=0)


def test_nan_rescale_slope_is_non_finite(tmp_path: Path) -> None:
    """A NaN (or infinite) RescaleSlope used to be reported as constant_image."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    (src / "p0").mkdir(parents=True)
    for name, slope in (("nan.dcm", "NaN"), ("inf.dcm", "inf"), ("ok.dcm", "1.0")):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds["RescaleSlope"] = pydicom.DataElement(0x00281053, "DS", slope, validation_mode=0)
        ds.save_as(src / "p0" / name)
    out = tmp_path / "out"
    curate([src], out, salt=SALT, progress=False)
    inputs = _inputs(out)
    assert inputs.loc["src/p0/nan.dcm", "reason"] == inputs.loc["src/p0/inf.dcm", "reason"] == "non_finite"
    assert inputs.loc["src/p0/ok.dcm", "status"] == "accepted"


STREAM_RULES = """\
version: 1
rules:
  - glob: "*/mask.nii.gz"
    exclude: mask
  - regex: "mri/(?P<patient>[^/]+)/T2\\\\.nii\\\\.gz$"
    modality: mri
    sequence: T2
    slices: {mask: mask.nii.gz, margin: 1}
  - regex: "ct/(?P<patient>[^/]+)/ct\\\\.nii\\\\.gz$"
    modality: ct
"""


def _stream_corpus(src: Path) -> None:
    from curation_helpers import write_volume

    write_volume(src / "mri" / "c0" / "T2.nii.gz", seed=0, shape=(40, 36, 12))  # with its mask
    rng = np.random.default_rng(3)
    oblique = np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 5], [0, 1.5, 0, -3], [0, 0, 0, 1]])  # permuted axes, flips
    vol = (rng.random((40, 44, 34)) * 900).astype(np.float32)
    (src / "mri" / "c1").mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, oblique), src / "mri" / "c1" / "T2.nii.gz")
    m = np.zeros(vol.shape, np.uint8)
    m[8:20, 10:30, 5:25] = 1
    nib.save(nib.Nifti1Image(m, oblique), src / "mri" / "c1" / "mask.nii.gz")
    ct = nib.Nifti1Image((rng.random((48, 40, 9)) * 3000 - 1024).astype(np.int16), np.diag([-0.8, 0.8, 2.5, 1]))
    ct.header.set_slope_inter(1.0, -24.0)  # scaled on reading
    (src / "ct" / "c2").mkdir(parents=True)
    nib.save(ct, src / "ct" / "c2" / "ct.nii.gz")
    four = nib.Nifti1Image((rng.random((40, 36, 7, 1)) * 500).astype(np.float32), np.eye(4))  # (X, Y, Z, 1)
    (src / "ct" / "c3").mkdir(parents=True)
    nib.save(four, src / "ct" / "c3" / "ct.nii.gz")
    bad = np.ones((36, 36, 6), np.float32)
    (src / "ct" / "flat").mkdir(parents=True)
    nib.save(nib.Nifti1Image(bad, np.eye(4)), src / "ct" / "flat" / "ct.nii.gz")
    bad[1, 2, 3] = np.inf
    (src / "ct" / "inf").mkdir(parents=True)
    nib.save(nib.Nifti1Image(bad, np.eye(4)), src / "ct" / "inf" / "ct.nii.gz")


def test_streamed_volumes_equal_the_loader_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large NIfTI volumes are read slab by slab and cut slice by slice (memory: one float32 copy); the rows
    and image bytes are those of the loader path (orientation, mask range, MRI / CT scaling, rejections)."""
    from hicur_monai.data.curation import volumes

    src = tmp_path / "src"
    _stream_corpus(src)
    rules = write_rules(tmp_path / "rules.yaml", STREAM_RULES)
    ref = tmp_path / "ref"
    curate([src], ref, salt=SALT, rules=rules, progress=False)
    monkeypatch.setattr(volumes, "STREAM_BYTES", 0)
    monkeypatch.setattr(volumes, "SLAB_BYTES", 4096)  # several slabs per volume
    calls: list[str] = []
    real = volumes.read_nifti_float32
    monkeypatch.setattr(volumes, "read_nifti_float32", lambda p: calls.append(p) or real(p))
    streamed = tmp_path / "streamed"
    curate([src], streamed, salt=SALT, rules=rules, progress=False)
    a, b = pd.read_parquet(ref / "manifest.parquet"), pd.read_parquet(streamed / "manifest.parquet")
    assert len(calls) == 6
    pd.testing.assert_frame_equal(a, b)
    reasons = dict(zip(a[a.row_type == "input"].source_path, a[a.row_type == "input"].reason))
    assert reasons["src/ct/flat/ct.nii.gz"] == "constant_image" and reasons["src/ct/inf/ct.nii.gz"] == "non_finite"
    assert reasons["src/mri/c0/T2.nii.gz"] == reasons["src/mri/c1/T2.nii.gz"] == reasons["src/ct/c2/ct.nii.gz"] == ""
    assert reasons["src/ct/c3/ct.nii.gz"] == ""
    images = a.loc[(a.row_type == "image") & (a.output_path != ""), "output_path"]
    assert len(images) > 20
    for p in images:
        assert (ref / p).read_bytes() == (streamed / p).read_bytes(), p


def test_manifest_csv_cells_cannot_run_as_formulas_and_read_back_exactly(tmp_path: Path) -> None:
    """A file named like a spreadsheet formula is quoted in manifest.csv (CSV injection), and
    load_manifest on the CSV gives the original name back."""
    from hicur_monai.data.curation import load_manifest
    from hicur_monai.utils.csv_safe import restore_neutralized

    src = tmp_path / "=HYPERLINK(x)"  # source paths start with the source folder's name
    _frames(src / "p0", "a.png", "plain.png")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, progress=False)
    text = (out / "manifest.csv").read_text()
    assert "\"'=HYPERLINK(x)/p0/a.png\"" in text and "\"=HYPERLINK" not in text
    from_csv = restore_neutralized(pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False))
    assert from_csv["source_path"].tolist() == pd.read_parquet(out / "manifest.parquet")["source_path"].tolist()
    assert load_manifest(out / "manifest.csv", status=None) == load_manifest(out / "manifest.parquet", status=None)
