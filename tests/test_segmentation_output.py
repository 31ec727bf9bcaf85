"""Segmentation inference outputs: one name per study, no overwrite unless asked, DICOM SEG for DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from hicur_monai.segmentation import mask_path, planned_inference_items

BUNDLE = Path("bundles/npc_segmentation/configs")


@pytest.fixture(autouse=True)
def _at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # bundles resolve transforms/*.json from the repository root


def _volume(path: Path, value: float, shape=(24, 20, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(value))
    data = (rng.random(shape) * 100 + value).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


def _model(path: Path, bias: float) -> Path:
    from hicur_monai.networks.fusion_seg import FusionSegNet

    torch.manual_seed(0)
    net = FusionSegNet(preset="tiny", text_dim=64)
    torch.nn.init.constant_(net.head.conv.conv.bias, bias)
    torch.save(net.state_dict(), path)
    return path


def _infer(inp: Path, out: Path, ckpt: Path, **kw) -> None:
    from monai.bundle import run

    run(config_file=str(BUNDLE / "inference.json"), input=str(inp), output_dir=str(out), ckpt_path=str(ckpt),
        preset="tiny", img_size=32, largest_component=False, use_coarse=False, **kw)


def _chain(err: BaseException) -> list[BaseException]:
    out = []
    while err is not None:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def test_mask_names_keep_the_study_path():
    assert mask_path("/in/P001/T1C.nii.gz", "/out", "/in") == Path("/out/P001/T1C_seg.nii.gz")
    assert mask_path("/in/P002/T1C.nii.gz", "/out", "/in") == Path("/out/P002/T1C_seg.nii.gz")
    assert mask_path("/in/series", "/out", "/in/series") == Path("/out/series_seg.nii.gz")  # the input is the series
    assert mask_path("/elsewhere/a.nrrd", "/out", "/in") == Path("/out/a_seg.nii.gz")


def test_two_studies_two_masks_and_no_overwrite(tmp_path):
    """Two studies in one folder (and two with the same file name in two folders): one mask each, none replaced."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _volume(inp / "IMG0001.nii.gz", 0)
    _volume(inp / "IMG0002.nii.gz", 50, shape=(16, 28, 2))
    _volume(inp / "P1" / "T1C.nii.gz", 10)
    _volume(inp / "P2" / "T1C.nii.gz", 20)
    _infer(inp, out, _model(tmp_path / "m.pt", 5.0))
    masks = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert masks == ["IMG0001_seg.nii.gz", "IMG0002_seg.nii.gz", "P1/T1C_seg.nii.gz", "P2/T1C_seg.nii.gz"]
    assert nib.load(out / "IMG0001_seg.nii.gz").shape == (24, 20, 3)  # each mask in its own study's geometry
    assert nib.load(out / "IMG0002_seg.nii.gz").shape == (16, 28, 2)
    assert np.asarray(nib.load(out / "IMG0001_seg.nii.gz").dataobj).all()  # bias 5: all tumour

    # a second run refuses before the model runs, and names the existing outputs
    with pytest.raises(Exception) as err:  # MONAI wraps the component's error: RuntimeError from FileExistsError
        _infer(inp, out, _model(tmp_path / "m2.pt", -5.0))
    assert any(isinstance(e, FileExistsError) and "already exist" in str(e) and "overwrite" in str(e)
               for e in _chain(err.value))
    assert np.asarray(nib.load(out / "IMG0001_seg.nii.gz").dataobj).all()  # unchanged
    # asked to overwrite: replaced (bias -5: empty masks)
    _infer(inp, out, tmp_path / "m2.pt", overwrite="true")  # as `--overwrite true` gives it
    assert not np.asarray(nib.load(out / "IMG0001_seg.nii.gz").dataobj).any()
    assert not list(out.rglob(".*tmp*"))  # no temporary files left


def test_flags_from_the_command_line():
    from hicur_monai.segmentation.output import as_flag

    assert as_flag("false", "x") is False and as_flag("True", "x") is True and as_flag(False, "x") is False
    with pytest.raises(ValueError, match="dicom_seg must be true or false"):
        as_flag("maybe", "dicom_seg")
    from hicur_monai.utils.flags import is_unset

    assert all(is_unset(v) for v in (None, "", "None", "null"))
    assert not any(is_unset(v) for v in ("runs/vl/step2/model", Path("null"), "none", 0))


def test_studies_that_would_share_a_name_are_refused(tmp_path):
    _volume(tmp_path / "in" / "a.nii", 0)
    _volume(tmp_path / "in" / "a.nii.gz", 1)
    with pytest.raises(ValueError, match="would both write"):
        planned_inference_items(tmp_path / "in", tmp_path / "out")


def test_the_writer_refuses_a_name_taken_during_the_run(tmp_path):
    """The check before the run is not the only guard: the writer itself never replaces a file."""
    from monai.data import MetaTensor

    from hicur_monai.segmentation import SaveSegmentationd

    src = _volume(tmp_path / "in" / "s.nii.gz", 0)
    dest = tmp_path / "out" / "s_seg.nii.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"someone else's file")
    mask = MetaTensor(torch.ones(1, 24, 20, 3), meta={"filename_or_obj": str(src), "affine": torch.eye(4)})
    with pytest.raises(FileExistsError, match="does not overwrite"):
        SaveSegmentationd("pred", tmp_path / "out", input_root=tmp_path / "in")({"pred": mask})
    assert dest.read_bytes() == b"someone else's file"
    assert [p.name for p in dest.parent.iterdir()] == ["s_seg.nii.gz"]


def _read_seg(path: Path):
    import highdicom as hd

    return hd.seg.segread(path)


def test_dicom_seg_round_trip_geometry_and_labels(tmp_path):
    """A mask on a DICOM series -> DICOM SEG: same frame of reference, positions, spacing; labels back per source
    image."""
    from dicom_helpers import write_ct_series

    from hicur_monai.segmentation.dicom_seg import write_dicom_seg
    from hicur_monai.transforms import LoadMedicalImage

    series = write_ct_series(tmp_path / "series", 3)
    img = LoadMedicalImage()(series)
    mask = np.zeros(img.shape[1:], dtype=np.uint8)
    mask[10:40, 60:90, 1] = 1  # one block on the middle slice only
    mask[5:8, 5:9, 2] = 1
    dest = write_dicom_seg(mask, img.affine.numpy(), series, tmp_path / "out" / "series_seg.dcm")
    seg = _read_seg(dest)
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in series.iterdir()}
    src0 = next(iter(sources.values()))
    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == src0.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src0.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "NPC tumour"
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in spacing], [float(v) for v in src0.PixelSpacing])
    assert (seg.Rows, seg.Columns) == (src0.Rows, src0.Columns)
    found = {}
    for frame, fg in zip(seg.pixel_array.reshape(-1, seg.Rows, seg.Columns), seg.PerFrameFunctionalGroupsSequence):
        uid = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(pos, [float(v) for v in sources[uid].ImagePositionPatient])
        found[int(sources[uid].InstanceNumber)] = frame
    assert sorted(found) == [1, 2, 3]
    assert not found[1].any()
    # the loader's axes are (column, row) = (X, Y): the block at x 10:40, y 60:90 is rows 60:90, columns 10:40
    expected = np.zeros((src0.Rows, src0.Columns), dtype=bool)
    expected[60:90, 10:40] = True
    np.testing.assert_array_equal(found[2].astype(bool), expected)
    assert found[3].sum() == 12
    with pytest.raises(FileExistsError):
        write_dicom_seg(mask, img.affine.numpy(), series, dest)
    shifted = img.affine.numpy().copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 0]  # half a voxel off: another grid
    with pytest.raises(ValueError, match="not on the mask's voxel grid"):
        write_dicom_seg(mask, shifted, series, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="outside the mask volume"):
        write_dicom_seg(mask[:, :, :2], img.affine.numpy(), series, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_inference_on_a_dicom_series_writes_nifti_and_dicom_seg(tmp_path):
    from dicom_helpers import write_ct_series

    series = write_ct_series(tmp_path / "in" / "P1" / "CT", 3)
    out = tmp_path / "out"
    _infer(tmp_path / "in", out, _model(tmp_path / "m.pt", 5.0))
    nifti, seg_file = out / "P1" / "CT_seg.nii.gz", out / "P1" / "CT_seg.dcm"
    assert nifti.is_file() and seg_file.is_file()
    _infer(tmp_path / "in", tmp_path / "out2", tmp_path / "m.pt", dicom_seg="false")  # as `--dicom_seg false` gives it
    assert (tmp_path / "out2" / "P1" / "CT_seg.nii.gz").is_file() and not list((tmp_path / "out2").rglob("*.dcm"))
    seg = _read_seg(seg_file)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(series / "slice0.dcm").SeriesInstanceUID
    assert seg.NumberOfFrames == 3 and seg.pixel_array.all()  # bias 5: every pixel of every slice


def test_each_study_finds_its_report_before_inference(tmp_path):
    from hicur_monai.segmentation import report_file

    inp = tmp_path / "in"
    (inp / "P001").mkdir(parents=True)
    (inp / "P001" / "T1C.nii.gz").write_bytes(b"x")  # a patient folder: reports/P001.txt
    (inp / "P002.nii.gz").write_bytes(b"x")  # a volume on its own: reports/P002.txt
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "P001.txt").write_text("Mass of the left lateral wall.")
    no_report = r"1 of 2 studies have no report: .*P002\.nii\.gz.*in\.txt and .*P002\.txt"
    with pytest.raises(FileNotFoundError, match=no_report):
        planned_inference_items(inp, tmp_path / "out", reports=reports, coarse_report=True)
    (reports / "P002.txt").write_text("No mass.")
    items = planned_inference_items(inp, tmp_path / "out", reports=reports, coarse_report="true")
    assert {Path(it["image"]).name: Path(it["report"]).name for it in items} == {"T1C.nii.gz": "P001.txt",
                                                                                 "P002.nii.gz": "P002.txt"}
    assert report_file(inp / "P001" / "T1C.nii.gz", reports) == reports / "P001.txt"
    (reports / "T1C.txt").write_text("Another study's report.")
    with pytest.raises(ValueError, match=r"two reports could be this study's, .*P001\.txt and .*T1C\.txt"):
        report_file(inp / "P001" / "T1C.nii.gz", reports)
    (reports / "T1C.txt").unlink()
    assert all("report" not in it for it in planned_inference_items(inp, tmp_path / "out", reports=reports))
    with pytest.raises(ValueError, match="coarse_report is true but reports is not set"):
        planned_inference_items(inp, tmp_path / "out", coarse_report=True)
