"""The one loader: every supported format, real DICOM from installed packages, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_helpers import write_ct_series
from PIL import Image
from pydicom.data import get_testdata_file

from hicur_monai.transforms import LoadMedicalImage, LoadMedicalImaged, sniff_format


def test_real_dicom_ct_round_trips_in_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = LoadMedicalImage()(path)
    assert img.meta["format"] == "dicom"
    assert img.shape == (1, ds.Columns, ds.Rows)
    # MONAI keeps x (columns) first: the array is the transposed pixel matrix
    np.testing.assert_allclose(img[0].numpy(), hu.T, atol=1e-3)


def test_real_multiframe_dicom_puts_frames_last():
    data_store = pytest.importorskip("data_store")
    path = Path(data_store.__file__).parent / "data" / "emri_small.dcm"
    ds = pydicom.dcmread(path)
    img = LoadMedicalImage()(path)
    assert img.shape == (1, ds.Columns, ds.Rows, int(ds.NumberOfFrames))
    np.testing.assert_allclose(img[0, :, :, 3].numpy(), ds.pixel_array[3].T.astype(np.float32))


def test_dicom_series_folder(tmp_path: Path):
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = write_ct_series(tmp_path / "series", 4, offset_per_slice=10)
    img = LoadMedicalImage()(series)
    assert img.shape == (1, 128, 128, 4)
    assert float((img[0, :, :, 3] - img[0, :, :, 0]).mean()) == pytest.approx(30.0 * float(src.RescaleSlope))


def test_nifti_and_nrrd_round_trip(tmp_path: Path):
    nrrd = pytest.importorskip("nrrd")
    arr = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(arr, affine), tmp_path / "v.nii.gz")
    img = LoadMedicalImage()(tmp_path / "v.nii.gz")
    assert img.meta["format"] == "nifti" and img.shape == (1, 7, 6, 5)
    np.testing.assert_allclose(img[0].numpy(), arr)
    np.testing.assert_allclose(img.affine.numpy(), affine)
    nrrd.write(str(tmp_path / "v.nrrd"), arr, {"space directions": np.diag([1.5, 2.0, 3.0]),
                                                "space": "left-posterior-superior",
                                                "space origin": np.zeros(3)})
    img2 = LoadMedicalImage()(tmp_path / "v.nrrd")
    assert img2.meta["format"] == "nrrd" and img2.shape == (1, 7, 6, 5)
    np.testing.assert_allclose(img2[0].numpy(), arr)


def test_png_and_jpeg_with_wrong_extension(tmp_path: Path):
    rgb = (np.random.default_rng(1).uniform(0, 255, size=(20, 30, 3))).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "frame.png")
    Image.fromarray(rgb).save(tmp_path / "frame_really_jpeg.png", format="JPEG")
    img = LoadMedicalImaged("image")({"image": str(tmp_path / "frame.png")})["image"]
    assert img.shape == (3, 30, 20)  # (C, X, Y): MONAI's convention
    np.testing.assert_array_equal(img.numpy().transpose(2, 1, 0), rgb)
    assert sniff_format(tmp_path / "frame_really_jpeg.png") == "jpeg"
    assert LoadMedicalImage()(tmp_path / "frame_really_jpeg.png").meta["format"] == "jpeg"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"just some text, not an image"), "not a DICOM"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "cannot read as png"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, make, match):
    path = tmp_path / "bad_input.png"
    make(path)
    with pytest.raises(ValueError, match=match) as err:
        LoadMedicalImage()(path)
    assert "bad_input.png" in str(err.value)


def test_nan_volume_is_rejected(tmp_path: Path):
    arr = np.ones((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match=r"nan\.nii\.gz.*NaN"):
        LoadMedicalImage()(tmp_path / "nan.nii.gz")


def test_truncated_dicom(tmp_path: Path):
    src = Path(get_testdata_file("MR_small.dcm"))
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.dcm"):
        LoadMedicalImage()(cut)
    shutil.rmtree(tmp_path, ignore_errors=True)
    with pytest.raises(FileNotFoundError):
        LoadMedicalImage()(cut)


def test_output_is_float_tensor():
    img = LoadMedicalImage()(get_testdata_file("MR_small.dcm"))
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32


def test_npy_arrays_channel_first(tmp_path: Path):
    """NPY arrays (what ``hicur curate`` writes: (C, X, Y), any memory order) load channel first, by content."""
    grey = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40)  # (rows, columns)
    np.save(tmp_path / "grey.npy", grey.T[None])  # Fortran-ordered view, as curation stores it
    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    np.save(tmp_path / "frame.data", rgb.transpose(2, 1, 0))  # np.save adds .npy; rename to a wrong extension
    (tmp_path / "frame.data.npy").rename(tmp_path / "frame.bin")
    assert sniff_format(tmp_path / "grey.npy") == sniff_format(tmp_path / "frame.bin") == "npy"
    img = LoadMedicalImage()(tmp_path / "grey.npy")
    assert img.meta["format"] == "npy" and img.shape == (1, 40, 30)
    np.testing.assert_array_equal(img[0].numpy(), grey.T.astype(np.float32))
    col = LoadMedicalImage()(tmp_path / "frame.bin")
    assert col.shape == (3, 24, 20)
    np.testing.assert_array_equal(col.numpy(), rgb.transpose(2, 1, 0).astype(np.float32))


def test_mri_percentiles_equal_torch_quantile():
    """ScaleIntensityByModality's MRI percentiles (one NumPy sort) are torch.quantile's, interpolation included."""
    from hicur_monai.transforms import ScaleIntensityByModality
    from hicur_monai.transforms.array import _linear_quantiles

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000, 65_537):
        flat = torch.from_numpy(rng.normal(100, 30, n).astype(np.float32))
        want = torch.quantile(flat, torch.tensor([0.005, 0.995])).tolist()
        np.testing.assert_allclose(_linear_quantiles(flat, [0.005, 0.995]), want, rtol=1e-6, atol=1e-4)
    vol = rng.normal(500, 100, (1, 32, 32, 8)).astype(np.float32)
    out = ScaleIntensityByModality("mri")(torch.from_numpy(vol))
    lo, hi = (float(v) for v in torch.quantile(torch.from_numpy(vol).reshape(-1), torch.tensor([0.005, 0.995])))
    np.testing.assert_allclose(out.numpy(), np.clip((vol - lo) / (hi - lo), 0, 1), atol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "high"), [(np.uint8, 256), (np.int16, 4000), (np.uint16, 4000), (np.uint16, 65536), (np.int8, 128)]
)
def test_integer_mri_window_uses_exact_value_counts(dtype, high):
    """The histogram path (torch's bincount, NumPy's above int16) counts exactly, and gives the sort's window."""
    from hicur_monai.transforms.array import ScaleIntensityByModality, _value_counts

    rng = np.random.default_rng(0)
    px = rng.integers(0, high, size=(37, 41)).astype(dtype)
    np.testing.assert_array_equal(_value_counts(px), np.bincount(px.ravel()))
    t = ScaleIntensityByModality()
    assert t.mri_window(px) == t.mri_window(px.astype(np.float32))
