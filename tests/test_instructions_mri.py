"""``hicur instructions build`` on the linked cohort: endoscopy frames and MRI slices, split by patient."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hicur_monai.cli import main
from hicur_monai.data.mri_instructions import mri_captions, representative_slice


@pytest.fixture(scope="module")
def built(demo_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("linked") / "instr"
    rc = main(["instructions", "build", "--reports", str(demo_cohort / "reports"), "--images",
               str(demo_cohort / "endoscopy"), "--reports", str(demo_cohort / "reports" / "mri"), "--images",
               str(demo_cohort / "mri"), "--out", str(out), "--n-eval", "3", "--no-progress"])
    assert rc == 0
    return out


def test_representative_slice_is_the_largest_tumour_area():
    mask = np.zeros((4, 4, 5))
    mask[1:3, 1:3, 1] = 1
    mask[0:4, 0:3, 3] = 1
    assert representative_slice(mask) == 3
    with pytest.raises(ValueError, match="no tumour voxel"):
        representative_slice(np.zeros((2, 2, 2)))


def test_mri_captions_need_an_impression():
    impression, detailed = mri_captions("Technique: axial T1.\nFindings: a mass.\nImpression: NPC T2 N1.")
    assert impression == "NPC T2 N1." and detailed == "Findings: a mass. Impression: NPC T2 N1."
    with pytest.raises(ValueError, match="Impression"):
        mri_captions("Findings: a mass.")


def test_linked_build_has_both_modalities_split_by_patient(built, demo_cohort):
    pairs = json.loads((built / "pairs.json").read_text())
    assert {p["modality"] for p in pairs} == {"endoscopy", "mri"}
    split: dict[str, set[str]] = {}
    for p in pairs:
        split.setdefault(p["patient"], set()).add(p["split"])
    assert all(len(s) == 1 for s in split.values())  # a patient is wholly train or wholly held out
    held = {pt for pt, s in split.items() if s == {"eval"}}
    assert len(held) == 3 and any(p["modality"] == "mri" and p["patient"] in held for p in pairs)
    records = json.loads((built / "instruct_train.json").read_text())
    mri = [r for r in records if r.get("modality") == "mri"]
    endo = [r for r in records if "modality" not in r]
    assert mri and endo and all(r["image_folder"] == "." and (built / r["image"]).is_file() for r in mri)
    assert all((demo_cohort / "endoscopy" / r["image"]).is_file() for r in endo)  # endoscopy paths unchanged
    assert main(["instructions", "validate", str(built / "instruct_train.json"), "--image-root",
                 str(demo_cohort / "endoscopy")]) == 0
    eval_mri = [json.loads(x) for x in (built / "eval_detailed.jsonl").read_text().splitlines() if '"mri"' in x]
    assert eval_mri and all("Impression:" in q["reference"] for q in eval_mri)


def test_mri_slices_load_with_the_mri_rule(built):
    import nibabel as nib

    from hicur_monai.vlm.data import load_image

    path = sorted((built / "mri_slices").glob("*_T2.nii.gz"))[0]
    raw = np.asarray(nib.load(path).dataobj)
    assert raw.ndim == 2 and raw.max() > 1.5  # raw intensities, scaled by the loader
    assert load_image(path, 32, "mri").shape == (3, 32, 32)


def test_a_study_without_mask_is_skipped_with_its_reason(demo_cohort, tmp_path):
    mri = tmp_path / "mri"
    shutil.copytree(demo_cohort / "mri", mri)
    study = sorted(p for p in mri.iterdir() if p.is_dir())[0]
    (study / "mask.nii.gz").unlink()
    from hicur_monai.data.mri_instructions import collect_mri_pairs

    pairs, skipped = collect_mri_pairs(demo_cohort / "reports" / "mri", mri, tmp_path / "out")
    assert pairs and not any(p.id.startswith(study.name) for p in pairs)
    assert any(study.name in s["file"] and "no mask.nii.gz" in s["reason"] for s in skipped)


def test_data_layer_does_not_import_the_llm_layer():
    root = Path(__file__).resolve().parents[1] / "hicur_monai" / "data"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("hicur_monai.llm") for n in names), f"{path} imports {names}"
