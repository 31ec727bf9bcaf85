"""hicur curate: the demo cohort end to end, de-identification, duplicates, rules, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from curation_helpers import SALT, endoscopy_frame, real_dicoms, small_corpus, write_rules

from hicur_monai.data.curation import (
    REASONS,
    NearDuplicateIndex,
    curate,
    identifying_values,
    load_manifest,
    load_rules,
    merge,
)
from hicur_monai.data.curation.deid import Pseudonymizer, kept_values


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest.parquet")


def test_demo_cohort(demo_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "curated"
    summary = curate([demo_cohort], out, salt=SALT, rules="demo", workers=1, progress=False)
    df = _manifest(out)
    inputs = df[df.row_type == "input"]
    # every file of the cohort has exactly one input row
    n_files = sum(1 for p in demo_cohort.rglob("*") if p.is_file())
    assert len(inputs) == n_files and inputs.source_id.is_unique
    acc = df[(df.row_type == "image") & (df.status == "accepted")]
    assert set(acc.modality) == {"mri", "ct", "endoscopy"}
    assert set(acc[acc.modality == "mri"].sequence) == {"T1", "T2", "T1C"}
    masks = inputs[inputs.source_path.str.endswith("mask.nii.gz")]
    assert len(masks) > 0 and set(masks.reason) == {"excluded_by_rule"}
    # no patient in two splits
    assert acc.groupby("patient").split.nunique().max() == 1
    assert set(acc.split) <= {"train", "val", "test"}
    # the mask limits the slice range: fewer slices than the volume has
    import nibabel as nib

    first = inputs[inputs.source_path.str.endswith("T2.nii.gz") & (inputs.status == "accepted")].iloc[0]
    depth = nib.load(demo_cohort.parent / first.source_path).shape[2]
    assert 0 < first.n_images < depth
    # MONAI data dicts, files exist, 16-bit grey MRI and 8-bit RGB endoscopy
    data = load_manifest(out, split="train")
    assert data and all(Path(d["image"]).is_file() and d["split"] == "train" for d in data)
    from hicur_monai.transforms import LoadMedicalImage

    mri = next(d for d in data if d["modality"] == "mri")
    arr = np.load(mri["image"], mmap_mode="r")  # NPY: memory-mappable
    assert arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[0] == 1 and mri["value_max"] == 65535
    assert not Path(mri["image"] + ".dicom.json").exists()  # headers only on request
    loaded = LoadMedicalImage()(mri["image"])  # the toolkit's one loader reads the outputs, channel first
    assert tuple(loaded.shape) == arr.shape and np.array_equal(loaded.numpy(), np.asarray(arr, np.float32))
    endo = load_manifest(out, modality="endoscopy", status="accepted")
    rgb = np.load(endo[0]["image"])
    assert rgb.dtype == np.uint8 and rgb.shape[0] == 3
    # the summary is written and agrees with the rows
    js = json.loads((out / "manifest-summary.json").read_text())
    assert js["accepted_images_total"] == len(acc) == summary["accepted_images_total"]
    assert (out / "manifest.csv").read_text().count("\n") == len(df) + 1


def test_deidentification_real_dicoms(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = real_dicoms(src / "ward")
    secrets: set[str] = set()
    kept: set[str] = set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        secrets |= identifying_values(ds)
        kept |= kept_values(ds)  # e.g. a manufacturer that one file keeps and another has in a private tag
    # an institution "TOSHIBA" inside a kept manufacturer "TOSHIBA_MEC" is not a leak
    secrets = {s for s in secrets if not any(s in k for k in kept)}
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    # a folder named after the patient: the path itself must not reach the outputs
    leaky = src / str(ds0.PatientID)
    leaky.mkdir()
    (leaky / "copy.dcm").write_bytes(files[0].read_bytes())
    assert any("Lestrade" in s or "CompressedSamples" in s for s in secrets)
    rules = write_rules(tmp_path / "rules.yaml", "version: 1\ndicom_modality: {OT: endoscopy}\n")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, rules=rules, workers=1, progress=False, keep_dicom_header=True)
    df = _manifest(out)
    assert (df[df.row_type == "input"].status != "rejected").all(), df[["source_path", "reason", "detail"]]
    blobs = {}
    for p in out.rglob("*"):
        if p.suffix == ".npy":  # the NPY header; the pixel payload's bytes are numbers, not text
            with open(p, "rb") as fh:
                np.lib.format.read_magic(fh)
                np.lib.format.read_array_header_1_0(fh)
                blobs[p] = p.read_bytes()[: fh.tell()]
        elif p.is_file() and p.suffix != ".parquet":
            blobs[p] = p.read_bytes()
    blobs[out / "manifest.parquet(as csv)"] = df.to_csv().encode()
    for p in (out / "parts").rglob("*.parquet"):
        blobs[p] = pd.read_parquet(p).to_csv().encode()
    leaks = [(str(p.relative_to(out)), s) for p, b in blobs.items() for s in secrets | {SALT} if s.encode() in b]
    assert not leaks, leaks[:10]
    # keep_dicom_header: the de-identified header is beside the image; overlays and private tags are gone
    for d in load_manifest(out, status=None):
        hdr = pydicom.Dataset.from_json(Path(d["image"] + ".dicom.json").read_text())
        assert hdr.PatientIdentityRemoved == "YES" and str(hdr.PatientID) == d["patient"]
        assert not any(0x6000 <= t.group <= 0x60FF or t.is_private for t in hdr.keys())
    # the overlay file's image is its pixel data, normalised, with no overlay plane burned in
    ov = [f for f in files if "Overlays" in f.name]
    if ov:
        ds = pydicom.dcmread(ov[0])
        assert "OverlayData" in ds or (0x6000, 0x3000) in ds
        px = ds.pixel_array.astype(np.float64)
        lo, hi = np.percentile(px, [0.5, 99.5])
        expect = np.round(np.clip((px - lo) / (hi - lo), 0, 1) * 65535)
        row = df[(df.row_type == "image") & (df.source_path == f"src/ward/{ov[0].name}")].iloc[0]
        got = np.load(out / row.output_path)[0].T.astype(np.float64)  # (1, X, Y) -> (rows, columns)
        assert got.shape == expect.shape and np.abs(got - expect).max() <= 2
    # the copy in the identifying folder is recorded by keyed id only; it and its original are one kept + one duplicate
    inp = df[df.row_type == "input"]
    red = inp[inp.source_path.str.startswith("redacted:")]
    assert len(red) == 1
    pair = inp[inp.file_hash == red.iloc[0].file_hash]
    assert sorted(pair.status) == ["accepted", "duplicate"] and set(pair.reason) == {"", "exact_duplicate_file"}


def test_duplicates_and_wrong_extension(tmp_path: Path) -> None:
    src = small_corpus(tmp_path, n_frames=4, n_volumes=0)
    from PIL import Image

    Image.fromarray(endoscopy_frame(7)).save(src / "pat07.png", format="JPEG", quality=95)  # a JPEG named .png
    out = tmp_path / "out"
    curate([src], out, salt=SALT, rules=write_rules(tmp_path / "r.yaml"), workers=1, progress=False)
    df = _manifest(out).set_index("source_path")
    inp = df[df.row_type == "input"]
    assert inp.loc["src/pat90_copy.png", "reason"] == "exact_duplicate_file"
    img = df[df.row_type == "image"]
    assert img.loc["src/pat91_reencoded.jpg", "reason"] == "near_duplicate"
    kept = img.loc["src/pat00/frame0.png"]
    assert kept.status == "accepted" and img.loc["src/pat91_reencoded.jpg", "duplicate_of"] == kept.output_path
    assert inp.loc["src/pat07.png", "format"] == "jpeg" and inp.loc["src/pat07.png", "status"] == "accepted"
    distinct = img.loc[[f"src/pat0{i}/frame{i}.png" for i in range(1, 4)]]
    assert (distinct.status == "accepted").all()


def test_near_duplicate_index() -> None:
    idx = NearDuplicateIndex(threshold=4)
    h = 0x0123456789ABCDEF
    idx.add(h, "g1", "a")
    assert idx.query(h ^ 0b1111, "g2") == "a"  # 4 bits apart
    assert idx.query(h ^ 0b11111, "g2") is None  # 5 bits apart
    assert idx.query(h, "g1") is None  # same group (slices of one volume) are never near duplicates
    spread = h ^ (1 << 3) ^ (1 << 20) ^ (1 << 40) ^ (1 << 60)  # 4 bits in 4 different blocks
    assert idx.query(spread, "g3") == "a"


def test_shards_merge_equal_single_run(tmp_path: Path) -> None:
    src = small_corpus(tmp_path, n_frames=5, n_volumes=2)
    rules = write_rules(tmp_path / "r.yaml")
    single = tmp_path / "single"
    curate([src], single, salt=SALT, rules=rules, workers=1, progress=False)
    sharded = tmp_path / "sharded"
    for i in range(3):
        curate([src], sharded, salt=SALT, rules=rules, workers=1, shard=f"{i}/3", progress=False)
    with pytest.raises(ValueError, match="different salts"):
        curate([src], tmp_path / "other", salt="another-salt", rules=rules, workers=1, shard="0/3", progress=False)
        (tmp_path / "other" / "manifest-shard-0001-of-0003.parquet").write_bytes(
            (sharded / "manifest-shard-0001-of-0003.parquet").read_bytes())
        (tmp_path / "other" / "run-shard-0001-of-0003.json").write_bytes(
            (sharded / "run-shard-0001-of-0003.json").read_bytes())
        (tmp_path / "other" / "manifest-shard-0002-of-0003.parquet").write_bytes(
            (sharded / "manifest-shard-0002-of-0003.parquet").read_bytes())
        merge(tmp_path / "other")
    from hicur_monai.cli import main

    assert main(["curate", "merge", "--out", str(sharded)]) == 0  # the CLI form the docs give
    a = _manifest(single).drop(columns=["shard"])
    b = _manifest(sharded).drop(columns=["shard"])
    pd.testing.assert_frame_equal(a, b)
    assert (b.status == "duplicate").sum() >= 2  # the copy and the re-encode, found across shards


def test_rules_validation(tmp_path: Path) -> None:
    bad = write_rules(tmp_path / "bad.yaml", "version: 1\nrules:\n  - glob: '*.nii'\n    modality: pet\n")
    with pytest.raises(ValueError, match=r"bad.yaml: rules\[0\].*pet"):
        load_rules(bad)
    typo = write_rules(tmp_path / "typo.yaml", "version: 1\nrules:\n  - glob: '*.nii'\n    modalty: mri\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_rules(typo)
    r = load_rules("demo")
    m = r.match("demo/mri/IMG0001/T1C.nii.gz")
    assert m is not None and (m.modality, m.sequence, m.patient) == ("mri", "T1C", "IMG0001")
    assert r.match("demo/mri/IMG0001/mask.nii.gz").exclude


def test_pseudonyms_keyed_and_stable() -> None:
    a, b = Pseudonymizer("salt-one"), Pseudonymizer("salt-two")
    assert a.patient("12345") == Pseudonymizer("salt-one").patient("12345") != b.patient("12345")
    assert "12345" not in a.patient("12345") and len(a.uid("1.2.3")) <= 64
    assert set(REASONS) >= {"empty_file", "truncated", "no_pixel_data", "non_finite", "too_small",
                            "wrong_dimensionality", "directory_loop", "permission_denied", "constant_image"}


def test_missing_salt_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hicur_monai.data.curation import read_salt

    monkeypatch.delenv("HICUR_CURATION_SALT", raising=False)
    with pytest.raises(ValueError, match="salt"):
        read_salt(None)


def test_docs_list_every_column_and_reason() -> None:
    from hicur_monai.data.curation import COLUMNS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "curation.md").read_text()
    missing = [c for c in COLUMNS if f"`{c}`" not in doc] + [r for r in REASONS if f"`{r}`" not in doc]
    assert not missing, f"docs/curation.md does not document {missing}"


def test_fast_paths_equal_the_shared_transforms(tmp_path: Path) -> None:
    """Single-frame DICOM and 8-bit RGB frames skip the generic loader; their outputs are what
    LoadMedicalImage + ScaleIntensityByModality + quantisation give."""
    import shutil

    import torch
    from pydicom.data import get_testdata_file

    from hicur_monai.transforms import LoadMedicalImage, ScaleIntensityByModality

    rgb = np.random.default_rng(5).integers(0, 256, (3, 40, 50), dtype=np.uint8)
    norm = ScaleIntensityByModality("endoscopy")(torch.from_numpy(rgb).float()).numpy()
    assert np.array_equal(np.rint(norm * 255).astype(np.uint8), rgb)  # 8-bit RGB: the identity
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), src / "a" / name)
    from PIL import Image

    Image.fromarray(endoscopy_frame(3)).save(src / "a" / "frame.png")
    rules = write_rules(tmp_path / "r.yaml", "version: 1\nrules:\n  - glob: 'src/a/MR_small.dcm'\n    sequence: T2\n"
                                             "  - glob: 'src/a/frame.png'\n    modality: endoscopy\n")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, rules=rules, workers=1, progress=False)
    img = _manifest(out).query("row_type == 'image'").set_index("source_path")
    assert (img.status == "accepted").all(), img[["reason", "detail"]]
    for name, mod in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mri"), ("frame.png", "endoscopy")):
        ref = ScaleIntensityByModality(mod)(LoadMedicalImage()(src / "a" / name)).numpy()
        vmax = 255 if mod == "endoscopy" else 65535
        got = np.load(out / img.loc[f"src/a/{name}", "output_path"]).astype(np.float64)
        assert got.shape == ref.shape, name
        assert np.abs(got - np.rint(ref * vmax)).max() <= 1, name  # float32 rounding at most one step
    ct = img.loc["src/a/CT_small.dcm"]
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert (ct.spacing_x, ct.spacing_y) == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))


@pytest.mark.parametrize(("dtype", "slope", "intercept"),
                         [(np.int16, 1.0, -1024.0), (np.uint16, 1.0, -1024.0), (np.uint16, 0.5, -1000.0),
                          (np.int16, 1.0, 0.0), (np.uint8, 2.0, -100.0)])
def test_ct_lookup_table_equals_the_direct_path(dtype: type, slope: float, intercept: float) -> None:
    """CT's window is element-wise, so curation tabulates the quantised output of every stored value once;
    a table look-up must give exactly what rescale + ScaleIntensityByModality("ct") + quantisation give."""
    from hicur_monai.data.curation import normalise as N

    info = np.iinfo(dtype)
    px = np.random.default_rng(1).integers(info.min, info.max + 1, size=(97, 131)).astype(dtype)
    px[0, :4] = [info.min, info.max, 0, -1 if info.min < 0 else 1]
    direct = _transform_then_quantise(px, slope, intercept, "ct")
    tables: dict = {}
    table = N.ct_table(tables, px.dtype, slope, intercept)
    assert table.dtype == np.uint16 and table.size == info.max - info.min + 1
    via = table[px.view(np.uint16 if px.dtype.itemsize == 2 else np.uint8)]
    assert np.array_equal(via, direct)
    assert N.ct_table(tables, px.dtype, slope, intercept) is table  # built once per (dtype, slope, intercept)
    assert np.array_equal(N.grey_display(px, "ct", slope, intercept, tables), direct)  # the path curation takes


def _transform_then_quantise(px: np.ndarray, slope: float, intercept: float, modality: str) -> np.ndarray:
    """The reference: DICOM rescale in float32, the shared transform itself, rounded to 65535 steps."""
    import torch

    from hicur_monai.transforms import ScaleIntensityByModality

    img = px.astype(np.float32) * np.float32(slope) + np.float32(intercept)  # x 1 and + 0 are exact
    norm = ScaleIntensityByModality(modality)(torch.from_numpy(img[None]))
    return np.rint(np.asarray(norm)[0] * np.float32(65535)).astype(np.uint16)


@pytest.mark.parametrize(("dtype", "top"), [(np.uint16, 4095), (np.int16, 3000), (np.uint16, 65535), (np.uint8, 255),
                                           (np.uint16, 3)])
def test_mri_lookup_table_equals_the_direct_path(dtype: type, top: int) -> None:
    """MRI (no rescale, non-negative integers): percentiles from a histogram, then a table of the values
    0..max; exactly what ScaleIntensityByModality("mri") on the float image + quantisation give."""
    from hicur_monai.data.curation import normalise as N
    from hicur_monai.data.curation.reasons import CurationReject
    from hicur_monai.transforms import ScaleIntensityByModality

    px = np.random.default_rng(2).integers(0, top + 1, size=(89, 123)).astype(dtype)
    direct = _transform_then_quantise(px, 1.0, 0.0, "mri")
    index = px.view(np.uint16 if px.dtype.itemsize == 2 else np.uint8)
    assert np.array_equal(np.take(N.mri_table(index), index), direct)
    assert np.array_equal(N.grey_display(px, "mri", 1.0, 0.0, {}), direct)  # the path curation takes
    rescaled = N.grey_display(px, "mri", 2.0, 0.0, {})  # a rescale: the transform directly, no table
    assert np.array_equal(rescaled, _transform_then_quantise(px, 2.0, 0.0, "mri"))
    t = ScaleIntensityByModality("mri")
    assert t.mri_window(px) == t.mri_window(px.astype(np.float32))  # histogram == sort
    with pytest.raises(CurationReject):
        N.mri_table(np.full((40, 40), 7, np.uint16))


def test_png_output_equals_npy_output(tmp_path: Path) -> None:
    """--image-format png writes the same pixels as the NPY default, with metadata and header in text chunks."""
    import shutil

    from PIL import Image
    from pydicom.data import get_testdata_file

    from hicur_monai.transforms import LoadMedicalImage

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "a" / "ct.dcm")
    Image.fromarray(endoscopy_frame(4)).save(src / "a" / "frame.png")
    rules = write_rules(tmp_path / "r.yaml",
                        "version: 1\nrules:\n  - glob: 'src/a/frame.png'\n    modality: endoscopy\n")
    outs = {}
    for fmt in ("npy", "png"):
        outs[fmt] = tmp_path / fmt
        curate([src], outs[fmt], salt=SALT, rules=rules, workers=1, progress=False, image_format=fmt,
               keep_dicom_header=True)
    a, b = (_manifest(outs[f]).query("row_type == 'image'").set_index("source_path") for f in ("npy", "png"))
    assert list(a.index) == list(b.index) and (a.status == "accepted").all()
    assert (a.image_hash == b.image_hash).all() and (a.phash == b.phash).all()
    loader = LoadMedicalImage()
    for name in a.index:
        x, y = loader(outs["npy"] / a.loc[name, "output_path"]), loader(outs["png"] / b.loc[name, "output_path"])
        assert x.shape == y.shape and torch_equal(x, y), name
    with Image.open(outs["png"] / b.loc["src/a/ct.dcm", "output_path"]) as im:
        assert json.loads(im.text["hicur"])["value_max"] == 65535
        assert pydicom.Dataset.from_json(im.text["dicom"]).PatientIdentityRemoved == "YES"
    assert (outs["npy"] / (a.loc["src/a/ct.dcm", "output_path"] + ".dicom.json")).is_file()


def torch_equal(x, y) -> bool:
    return bool((x.as_tensor() == y.as_tensor()).all())
