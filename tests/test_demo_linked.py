"""The linked demo cohort: one tumour per patient behind the mask, both reports, the frame and the table."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from hicur_monai.data.demo import load_datalist
from hicur_monai.data.demo.clinical import IMAGE_LOG_HR
from hicur_monai.data.demo.tumour import EXTENSIONS, NECROSIS_PROBABILITY, TumourSpec, draw_tumour
from hicur_monai.data.demo.volumes import make_phantom, render, study_fields
from hicur_monai.data.nasopharynx import MAIN_REGIONS


def _table(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "clinical" / "clinical.csv", dtype=str, keep_default_na=False)


def _report_truths(cohort: Path) -> dict[str, dict]:
    return {i["study"]: json.loads(Path(i["findings"]).read_text()) for i in load_datalist(cohort, "mri_reports")}


def test_every_patient_has_every_modality(demo_cohort: Path):
    table = _table(demo_cohort)
    patients = load_datalist(demo_cohort, "patients")
    assert [p["patient"] for p in patients] == list(table["Filename"])
    assert [p["study"] for p in patients] == list(table["Image Number"])
    frames = load_datalist(demo_cohort, "endoscopy")
    assert len(frames) >= len(table)
    for p in patients:
        mri_files = {f.name for f in (demo_cohort / p["mri"]).iterdir()}
        assert {"T1.nii.gz", "T2.nii.gz", "T1C.nii.gz", "mask.nii.gz"} <= mri_files
        assert (demo_cohort / p["mri_report"]).read_text().strip()
        assert p["endoscopy"] and all((demo_cohort / f).is_file() for f in p["endoscopy"])
    for f in frames:  # every frame belongs to a patient of the table, and its sidecar says so too
        row = table[table["Filename"] == f["patient"]]
        assert len(row) == 1, f
        assert f["study"] == row["Image Number"].iloc[0]
        sidecar = json.loads(Path(f["findings"]).read_text())
        assert (sidecar["patient"], sidecar["study"]) == (f["patient"], f["study"])


def test_reports_agree_with_masks(demo_cohort: Path):
    """Side from the mask's centroid; extension from the mask's extent against the study's landmarks."""
    truths = _report_truths(demo_cohort)
    assert len(truths) == 12
    for study, truth in truths.items():
        img = nib.load(demo_cohort / "mri" / study / "mask.nii.gz")
        idx = np.argwhere(np.asarray(img.dataobj) > 0)
        world = nib.affines.apply_affine(img.affine, idx)
        assert ("right" if world[:, 0].mean() > 0 else "left") == truth["side"], study  # RAS: +x is the right
        assert truth["measured"]["voxels"] == len(idx)
        lm = truth["measured"]["landmarks_mm"]
        above_roof = (world[:, 2] >= lm["nasopharynx_roof_z"]).any()
        below_floor = (world[:, 2] < lm["nasopharynx_floor_z"]).any()
        nasal = ((world[:, 2] < lm["nasopharynx_roof_z"]) & (world[:, 1] >= lm["choanae_y"])).any()
        ext = truth["extensions"]
        assert above_roof == (ext["skull_base"] or ext["intracranial"]), study
        assert below_floor == ext["oropharynx"], study
        assert nasal == ext["nasal_cavity"], study
        text = (demo_cohort / "reports" / "mri" / f"{study}.txt").read_text()
        assert f"{truth['side']}-sided" in text and f"T{truth['t_stage']} N{truth['n_stage']}" in text
        assert ("necrotic" in text) == truth["necrosis"]


def test_reports_agree_with_the_clinical_row(demo_cohort: Path):
    table = _table(demo_cohort).set_index("Image Number")
    roman = {"I": 1, "II": 2, "III": 3, "IV": 4, "T1": 1, "T2": 2, "T3": 3, "T4": 4}
    for study, truth in _report_truths(demo_cohort).items():
        row = table.loc[study]
        assert roman[row["7th T Stage"]] == truth["t_stage"] and row["7th N Stage"] == f"N{truth['n_stage']}"
        assert (row["Skull Base"] == "Yes") == truth["extensions"]["skull_base"], study
        assert (row["Intracranial or Cranial Nerve"] == "Yes") == truth["extensions"]["intracranial"], study
        rp = {"0": "none", "1": truth["side"], "2": "bilateral"}[row["Retropharyngeal Lymph Node Side Count"]]
        assert truth["nodes"]["retropharyngeal"] == rp


def test_endoscopy_shows_the_tumour_where_the_mri_does(demo_cohort: Path):
    truths = {t["patient"]: t for t in _report_truths(demo_cohort).values()}
    for f in load_datalist(demo_cohort, "endoscopy"):
        grid = json.loads(Path(f["findings"]).read_text())["findings"]
        walls = set(truths[f["patient"]]["walls"])
        assert f"{truths[f['patient']]['side']}_wall" in walls
        for wall in MAIN_REGIONS:
            assert (grid[wall]["neoplasm"] != "absent") == (wall in walls), (f["image"], wall)


@pytest.mark.parametrize("shape", [(48, 48, 12), (64, 64, 16)])
def test_phantom_mask_covers_exactly_the_named_regions(shape):
    rng = np.random.default_rng(5)
    for k in range(32):
        t = k % 4 + 1
        spec = draw_tumour(rng, t, skull_base=(t >= 3) and k % 3 > 0, intracranial=t == 4)
        ph = make_phantom(rng, shape, tumour=spec)
        mask = ph.mask > 0
        for name in MAIN_REGIONS + EXTENSIONS:
            named = name in spec.walls or name in spec.extensions
            assert bool((mask & ph.regions[name]).any()) == named, (k, name, spec)
        assert not (mask & ph.regions[f"parapharyngeal_{'left' if spec.side == 'right' else 'right'}"]).any()
        assert ph.regions["necrosis"].any() == spec.necrosis and not (ph.regions["necrosis"] & ~mask).any()


def test_necrotic_core_is_dark_on_t1c_and_bright_on_t2():
    rng = np.random.default_rng(1)
    spec = TumourSpec(side="right", walls=("right_wall",), extensions=("parapharyngeal_space", "skull_base"),
                      radius_mm=17.0, necrosis=True, exophytic=True, t_stage=3)
    ph = make_phantom(rng, (64, 64, 16), tumour=spec)
    core, rest = ph.regions["necrosis"], (ph.mask > 0) & ~ph.regions["necrosis"]
    fields = study_fields(ph, rng)
    t1c, t2 = (render(ph, s, rng, fields).astype(float) for s in ("T1C", "T2"))
    assert t1c[core].mean() < 0.7 * t1c[rest].mean()
    assert t2[core].mean() > t2[rest].mean()


def test_truth_declares_the_image_factor(demo_cohort: Path):
    truth = json.loads((demo_cohort / "clinical" / "truth.json").read_text())
    factor = truth["image_covariates"]["tumour_necrosis"]
    assert factor["log_hr"] == IMAGE_LOG_HR["tumour_necrosis"] > 0
    assert all(ep["image_log_hr"] == IMAGE_LOG_HR for ep in truth["endpoints"].values())
    necrosis = {t["patient"]: t["necrosis"] for t in _report_truths(demo_cohort).values()}
    table = _table(demo_cohort)
    assert factor["values"] == [float(necrosis[p]) for p in table["Filename"]]
    assert "tumour_necrosis" not in " ".join(table.columns).lower()  # only the image shows it


def test_necrosis_is_correlated_with_but_not_determined_by_t_stage():
    rng = np.random.default_rng(0)
    t = rng.integers(1, 5, size=2000)
    nec = np.array([draw_tumour(rng, int(s)).necrosis for s in t])
    rates = [nec[t == s].mean() for s in (1, 2, 3, 4)]
    assert rates == sorted(rates) and rates[0] < 0.2 < 0.5 < rates[3]
    assert abs(rates[3] - NECROSIS_PROBABILITY[4]) < 0.06
    assert 0.2 < np.corrcoef(t, nec)[0, 1] < 0.6  # correlated, far from identical


def test_tumour_spec_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="walls must include left_wall"):
        TumourSpec(side="left", walls=("roof",), extensions=(), radius_mm=9, necrosis=False, exophytic=True,
                   t_stage=1)
    with pytest.raises(ValueError, match="unknown extensions"):
        TumourSpec(side="left", walls=("left_wall",), extensions=("orbit",), radius_mm=9, necrosis=False,
                   exophytic=True, t_stage=1)
    spec = draw_tumour(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="disagrees"):
        make_phantom(np.random.default_rng(0), (48, 48, 12), t_stage=4, tumour=spec)
