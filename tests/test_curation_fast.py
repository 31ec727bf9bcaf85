"""The fast paths of curation give what the straightforward code gives: header values, NPY bytes, pHash."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hicur_monai.data.curation.dicom_values import integer, number, text, values
from hicur_monai.data.curation.hashing import PHASH_SIZE, box_means_grey, perceptual_hash, phash_of_32
from hicur_monai.data.curation.writer import encode_npy, npy_header
from hicur_monai.utils.io import atomic_write_chunks


def _dicom_files() -> list[Path]:
    import pydicom.data

    # the files pydicom ships (get_testdata_files would try to download the rest: no network in tests)
    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*")
                   if p.is_file() and not p.name.endswith((".json", ".txt", ".py", ".gz", ".bz2", ".pdf", ".zip")))
    try:
        import data_store

        files += sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))
    except ImportError:
        pass
    return files


def _reference(value: object) -> list[str] | None:
    from pydicom.multival import MultiValue

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def test_header_values_equal_pydicom_on_every_text_element() -> None:
    """Every text (and US) element of pydicom's and pydicom-data's test files: the raw decode equals pydicom's."""
    import pydicom
    from pydicom import config as dicom_config
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    mode = dicom_config.settings.reading_validation_mode
    dicom_config.settings.reading_validation_mode = dicom_config.IGNORE
    checked, fast, files = 0, 0, 0
    try:
        for f in _dicom_files():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(f, stop_before_pixels=True)
                    ref = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not every test file is a readable DICOM file
                continue
            files += 1
            for elem in ref.iterall():
                kw = keyword_for_tag(elem.tag)
                if (not kw or tag_for_keyword(kw) != elem.tag or elem.VR in ("SQ", "OB", "OW", "UN")
                        or elem.tag not in ds or kw == "PixelData"):
                    continue
                was_raw = type(ds._dict[elem.tag]).__name__ == "RawDataElement"  # noqa: SLF001
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        expect = _reference(ref[elem.tag].value)
                except Exception:  # noqa: BLE001 - a value pydicom itself cannot convert
                    continue
                got = values(ds, kw)
                assert got == expect, f"{f.name} {kw} ({elem.VR}): {got!r} != {expect!r}"
                assert type(ds._dict[elem.tag]).__name__ == type(ds._dict[elem.tag]).__name__  # noqa: SLF001
                checked += 1
                fast += was_raw and type(ds._dict[elem.tag]).__name__ == "RawDataElement"  # noqa: SLF001
    finally:
        dicom_config.settings.reading_validation_mode = mode
    print(f"{files} files, {checked} values, {fast} read raw")
    assert files >= 50 and checked >= 2000, (files, checked)
    assert fast >= 0.8 * checked, f"only {fast} of {checked} values were read without conversion"


def test_header_value_helpers() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ref = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert text(ds, "Modality") == "CT" and text(ds, "PatientName") == str(ref.PatientName)
    assert integer(ds, "Rows", 0) == ref.Rows and integer(ds, "NumberOfFrames", 1) == 1
    assert number(ds, "RescaleIntercept") == float(ref.RescaleIntercept)
    assert values(ds, "PixelSpacing") == [str(v) for v in ref.PixelSpacing]
    assert values(ds, "AccessionNumber") is None or values(ds, "AccessionNumber") == [str(ref.AccessionNumber)]
    assert text(ds, "InstitutionName") == str(ref.get("InstitutionName", ""))
    for kw in ("InversionTime", "ContrastBolusAgent", "OtherPatientIDs"):
        assert (values(ds, kw) is None) == (kw not in ref) and (text(ds, kw) == "") == (kw not in ref)
    ds.PatientID = "changed"  # a converted element is read as pydicom holds it
    assert text(ds, "PatientID") == "changed"
    with pytest.raises(KeyError, match="not a DICOM keyword"):
        values(ds, "NoSuchKeyword")


@pytest.mark.parametrize("arr", [np.arange(35 * 41, dtype=np.uint16).reshape(35, 41) * 40,
                                 np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)])
def test_npy_is_np_save_of_the_channel_first_view(tmp_path: Path, arr: np.ndarray) -> None:
    cf = arr.T[None] if arr.ndim == 2 else arr.transpose(2, 1, 0)
    a, b = io.BytesIO(), io.BytesIO()
    encode_npy(a, arr)
    np.save(b, cf, allow_pickle=False)
    assert a.getvalue() == b.getvalue()
    path = tmp_path / "x.npy"
    atomic_write_chunks(str(path), [npy_header(arr), arr])
    assert path.read_bytes() == b.getvalue() and not list(tmp_path.glob(".*.tmp"))
    np.testing.assert_array_equal(np.load(path), cf)


def test_atomic_write_chunks_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "y.npy"
    path.write_bytes(b"old")

    class Boom:
        def __buffer__(self, flags: int) -> memoryview:
            raise RuntimeError("disk gone")

    with pytest.raises((RuntimeError, TypeError)):
        atomic_write_chunks(str(path), [b"new", Boom()])
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def test_box_grey_is_the_exact_box_mean() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (300, 517), dtype=np.uint16)
    fy, fx = 300 // PHASH_SIZE, 517 // PHASH_SIZE
    crop = a[: fy * PHASH_SIZE, : fx * PHASH_SIZE].astype(np.float64)
    expect = crop.reshape(PHASH_SIZE, fy, PHASH_SIZE, fx).mean(axis=(1, 3)) * 255 / 65535
    np.testing.assert_array_equal(box_means_grey(a), np.rint(expect).astype(np.uint8))


def test_perceptual_hash_keeps_near_duplicates_near_and_distinct_images_far() -> None:
    """Real photographs (scikit-image) at endoscopy size: re-encodes within the threshold, other pictures far."""
    import skimage.data as sd

    from hicur_monai.data.curation.dedup import DEFAULT_NEAR_THRESHOLD

    def dist(a: str, b: str) -> int:
        return (int(a, 16) ^ int(b, 16)).bit_count()

    pics = [np.asarray(Image.fromarray(getattr(sd, n)()).convert("RGB").resize((640, 512), Image.Resampling.BICUBIC))
            for n in ("astronaut", "coffee", "chelsea", "rocket")]
    hashes = [perceptual_hash(p) for p in pics]
    for p, h in zip(pics, hashes):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, "JPEG", quality=90)
        again = np.asarray(Image.open(buf))
        assert dist(h, perceptual_hash(again)) <= DEFAULT_NEAR_THRESHOLD
        assert perceptual_hash(Image.fromarray(p)) == h  # the PIL image and its array hash alike
        grey = (p[..., 1].astype(np.uint16) * 257)  # a 16-bit grey image and its 8-bit re-quantisation
        assert dist(perceptual_hash(grey), perceptual_hash((grey >> 8).astype(np.uint8))) <= 2
    assert min(dist(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 3 * DEFAULT_NEAR_THRESHOLD
    small = np.random.default_rng(2).integers(0, 65535, (20, 24), dtype=np.uint16)  # below 32 pixels: resized up
    assert len(perceptual_hash(small)) == 16


def test_phash_of_32_is_imagehash_phash() -> None:
    import imagehash
    import skimage.data as sd

    rng = np.random.default_rng(3)
    smalls = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(200)]
    smalls += [np.asarray(Image.fromarray(sd.camera()).resize((32, 32), Image.Resampling.BOX)),
               np.zeros((32, 32), np.uint8), np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))]
    for s in smalls:
        assert phash_of_32(s) == str(imagehash.phash(Image.fromarray(s)))


def test_atomic_write_chunks_finishes_a_partial_writev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, bufs: real(fd, [bytes(bufs[0])[:5]]))  # the kernel wrote 5 bytes
    arr = np.arange(300, dtype=np.uint16).reshape(15, 20)
    path = tmp_path / "z.npy"
    atomic_write_chunks(str(path), [npy_header(arr), arr])
    np.testing.assert_array_equal(np.load(path), arr.T[None])
