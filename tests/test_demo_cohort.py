"""Invariants of the demo cohort: layout, geometry, tumour placement, T-stage link, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from hicur_monai.data.demo import generate_demo_cohort, load_datalist
from hicur_monai.data.demo.cohort import parse_t_stage
from hicur_monai.data.demo.volumes import make_phantom


def test_layout_and_datalist_paths_exist(demo_cohort: Path):
    info = json.loads((demo_cohort / "cohort.json").read_text())
    assert info["counts"]["patients"] == 12 and info["counts"]["mri_studies"] == 12
    assert "SYNTHETIC" in (demo_cohort / "README.txt").read_text()
    for key in ("mri", "ct", "endoscopy", "real"):
        items = load_datalist(demo_cohort, key)
        assert items, key
        for item in items:
            assert Path(item["image"]).exists(), item
            if "label" in item:
                assert Path(item["label"]).exists()
    assert all("provenance" in i and not i["provenance"]["synthetic"] for i in load_datalist(demo_cohort, "real"))
    table = pd.read_csv(demo_cohort / "clinical" / "clinical.csv", dtype=str, keep_default_na=False)
    studies = {i["study"] for i in load_datalist(demo_cohort, "mri")}
    assert set(table["Image Number"]) == studies  # every patient links to an MRI study


def test_mri_sequences_are_coregistered_and_the_tumour_is_visible(demo_cohort: Path):
    items = [i for i in load_datalist(demo_cohort, "mri") if i["study"] == "IMG0001"]
    assert {i["sequence"] for i in items} == {"T1", "T2", "T1C"}
    mask_img = nib.load(items[0]["label"])
    mask = np.asarray(mask_img.dataobj) > 0
    assert mask.any()
    means = {}
    for item in items:
        img = nib.load(item["image"])
        np.testing.assert_allclose(img.affine, mask_img.affine)
        vol = np.asarray(img.dataobj, np.float32)
        assert vol.shape == mask.shape
        ring = (np.logical_xor(_dilate(mask, 2), mask)) & (vol > 0.2 * vol.max())
        means[item["sequence"]] = (vol[mask].mean(), vol[ring].mean())
    # NPC radiology: hyper-intense on T2, enhancing on T1C relative to T1
    t1_ratio = means["T1"][0] / means["T1"][1]
    assert means["T2"][0] / means["T2"][1] > t1_ratio
    assert means["T1C"][0] / means["T1C"][1] > t1_ratio


def _dilate(mask: np.ndarray, it: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=it)


def test_tumour_lies_in_the_nasopharynx_region(demo_cohort: Path):
    """Every mask is inside the head, next to the (central, anterior) nasopharyngeal airway."""
    for item in {i["study"]: i for i in load_datalist(demo_cohort, "mri")}.values():
        img = nib.load(item["label"])
        mask = np.asarray(img.dataobj) > 0
        idx = np.argwhere(mask)
        world = nib.affines.apply_affine(img.affine, idx)
        centroid = world.mean(axis=0)
        assert abs(centroid[0]) < 45.0, item["study"]  # near the midline (mm)
        assert -35.0 < centroid[1] < 35.0, item["study"]  # around the nasopharynx, not the face or the neck
        assert centroid[2] > -40.0, item["study"]  # upper part of the volume (skull base level)


def test_t_stage_drives_tumour_size():
    rng = np.random.default_rng(0)
    sizes = {t: np.mean([make_phantom(rng, (48, 48, 12), t_stage=t).mask.sum() for _ in range(6)]) for t in (1, 4)}
    assert sizes[4] > 2 * sizes[1]
    with pytest.raises(ValueError):
        make_phantom(rng, t_stage=5)


@pytest.mark.parametrize("text, stage", [("T3", 3), ("III", 3), ("2", 2), ("T4a", 4), ("IV", 4), ("N/A", 2), ("", 2)])
def test_parse_t_stage(text, stage):
    assert parse_t_stage(text) == stage


def test_deterministic_by_seed(tmp_path: Path, demo_cohort: Path):
    again = generate_demo_cohort(tmp_path / "again", seed=0, preset="tiny", workers=2, progress=False)
    other = generate_demo_cohort(tmp_path / "other", seed=1, preset="tiny", n_patients=3, n_ct=1, n_endoscopy=4,
                                 workers=1, progress=False)
    for rel in ("mri/IMG0003/T2.nii.gz", "mri/IMG0003/mask.nii.gz", "ct/IMG0001/CT.nii.gz"):
        a = np.asarray(nib.load(demo_cohort / rel).dataobj)
        b = np.asarray(nib.load(again / rel).dataobj)
        np.testing.assert_array_equal(a, b)
    for rel in ("clinical/clinical.csv", "clinical/truth.json", "reports/mri/IMG0002.txt", "reports/mri/IMG0002.json",
                "reports/endo_0003.txt", "reports/endo_0003.json", "endoscopy/endo_0003.png"):
        assert (demo_cohort / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert len(json.loads((other / "datalist.json").read_text())["endoscopy"]) == 4
    with pytest.raises(ValueError, match="at least one endoscopy frame"):
        generate_demo_cohort(tmp_path / "few", preset="tiny", n_patients=3, n_endoscopy=2, workers=1, progress=False)
    first = sorted((demo_cohort / "endoscopy").iterdir())[0].name
    assert (demo_cohort / "endoscopy" / first).read_bytes() == (again / "endoscopy" / first).read_bytes()
    a = np.asarray(nib.load(demo_cohort / "mri/IMG0001/T1.nii.gz").dataobj)
    c = np.asarray(nib.load(other / "mri/IMG0001/T1.nii.gz").dataobj)
    assert not np.array_equal(a, c)


def test_preview_writes_a_contact_sheet_per_modality(demo_cohort: Path, tmp_path: Path):
    from PIL import Image

    from hicur_monai.data.demo.preview import PREVIEW_PIPELINES, preview_pipelines

    written = preview_pipelines(demo_cohort, tmp_path, n=2)
    assert set(written) == set(PREVIEW_PIPELINES)
    for path in written.values():
        with Image.open(path) as im:
            assert im.width > 200 and im.height > 150
            assert len(set(im.convert("L").getdata())) > 20  # a picture, not a blank canvas


def test_anatomy_preview_shows_the_studies_with_their_reports(demo_cohort: Path, tmp_path: Path):
    from PIL import Image

    from hicur_monai.data.demo.preview import preview_anatomy

    path = preview_anatomy(demo_cohort, tmp_path, n=2)
    assert path == tmp_path / "mri_anatomy.png"
    with Image.open(path) as im:
        assert im.width > 400 and len(set(im.convert("L").getdata())) > 50
