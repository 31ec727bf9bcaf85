"""The I/II -> III prognosis hand-off: per-study image features from named checkpoints, on tiny models.

The tiny demo cohort (12 studies, T1/T2/T1C + mask), a tiny HCMAE ViT export made here and a
tiny random VLM (tests/vlm_helpers.py): extraction, the per-study cache (reused; recomputed
for a changed checkpoint), the join to the clinical table, the bundle keys, and clear errors
for wrong checkpoints and studies without MRI or mask.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("lifelines")
pytest.importorskip("timm")

from hicur_monai.survival.image_features import ImageFeatureError, study_features  # noqa: E402
from hicur_monai.utils.checksum import sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def hcmae_export(tmp_path_factory):
    """A tiny-preset HCMAE's encoder export (``vit_encoder.pt`` + ``.json``, ``convnext_encoder.*``)."""
    from hicur_monai.networks.hcmae import HCMAE

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hcmae") / "models"
    HCMAE(preset="tiny", img_size=32).export_encoders(out)
    return out


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    from vlm_helpers import tiny_vlm

    out = tmp_path_factory.mktemp("vlm") / "model"
    tiny_vlm().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def study_ids(demo_cohort):
    from hicur_monai.data.clinical import load_clinical_table

    return load_clinical_table(demo_cohort / "clinical" / "clinical.csv", mode="drop", salt="s").data["study_id"]


def _datalist(demo_cohort, tmp_path, edit):
    """A copy of the cohort's datalist (absolute paths) with ``edit(mri_items)`` applied."""
    data = json.loads((demo_cohort / "datalist.json").read_text())
    for e in data["mri"]:
        for k in ("image", "label"):
            e[k] = str(demo_cohort / e[k])
    data["mri"] = edit(data["mri"])
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return path


def test_extracted_cached_and_recomputed_for_a_new_checkpoint(demo_cohort, hcmae_export, study_ids, tmp_path):
    enc = tmp_path / "vit_encoder.pt"
    shutil.copy(hcmae_export / "vit_encoder.pt", enc)
    shutil.copy(hcmae_export / "vit_encoder.json", tmp_path / "vit_encoder.json")
    ids = study_ids[:4]
    args = (ids, demo_cohort / "datalist.json", tmp_path / "cache")
    feats, desc = study_features(*args, hcmae_encoder=enc, device="cpu")
    assert list(feats.index) == list(ids) and feats.shape[1] == 3 * 64  # T1, T1C, T2 x embed_dim
    assert np.isfinite(feats.to_numpy()).all() and feats.to_numpy().std(axis=0).max() > 0
    assert desc["checkpoints"]["hcmae"]["sha256"] == sha256_file(enc) and desc["sequences"] == ["T1", "T1C", "T2"]
    assert desc["dims"] == {"hcmae": 192} and desc["n_studies"] == len(ids)
    assert desc["cache"]["computed"] == len(ids) and desc["cache"]["cached"] == 0
    assert len(list((tmp_path / "cache" / "hcmae").glob("*.npy"))) == len(ids)

    again, desc2 = study_features(*args, hcmae_encoder=enc, device="cpu")
    assert desc2["cache"] == {**desc["cache"], "computed": 0, "cached": len(ids)}
    np.testing.assert_array_equal(again.to_numpy(), feats.to_numpy())
    _, moved = study_features(*args, hcmae_encoder=hcmae_export / "vit_encoder.pt", device="cpu")
    assert moved["cache"]["cached"] == len(ids)  # the same bytes elsewhere: keyed by checksum, not path

    state = torch.load(enc, weights_only=True)
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, enc)  # Stage I re-trained: same path, other weights
    new, desc3 = study_features(*args, hcmae_encoder=enc, device="cpu")
    assert desc3["cache"]["computed"] == len(ids) and desc3["cache"]["cached"] == 0
    assert not np.allclose(new.to_numpy(), feats.to_numpy())


def test_vlm_coarse_states_of_the_largest_tumour_slice(demo_cohort, hcmae_export, tiny_vlm_dir, study_ids, tmp_path):
    feats, desc = study_features(study_ids[:3], demo_cohort / "datalist.json", tmp_path / "cache",
                                 hcmae_encoder=hcmae_export / "vit_encoder.pt", vlm_checkpoint=tiny_vlm_dir,
                                 device="cpu")
    assert desc["dims"] == {"hcmae": 192, "vlm": 32}  # the tiny LLM's hidden size
    vlm_cols = [c for c in feats.columns if c.startswith("img_vlm_")]
    assert len(vlm_cols) == 32 and np.isfinite(feats[vlm_cols].to_numpy()).all()
    assert feats[vlm_cols].to_numpy().std(axis=0).max() > 0  # per-study states, not one constant
    assert len(desc["checkpoints"]["vlm"]["sha256"]) == 64


@pytest.mark.slow
def test_bundle_workflow_joins_features_by_study(demo_cohort, hcmae_export, tmp_path):
    from hicur_monai.survival.workflow import PrognosisWorkflow

    common = {"table": demo_cohort / "clinical" / "clinical.csv", "output_dir": tmp_path, "endpoints": "ffs",
              "models": ["cox"], "covariates": ["t_stage"], "salt": "s",
              "hcmae_encoder": hcmae_export / "vit_encoder.pt", "mri_datalist": demo_cohort / "datalist.json"}
    summary = PrognosisWorkflow("train", **common).run()
    info = summary["endpoints"]["ffs"]["data"]
    assert info["image_feature_columns"] == 192 and info["excluded_no_image_features"] == 0
    assert summary["image_features"]["checkpoints"]["hcmae"]["sha256"] == sha256_file(hcmae_export / "vit_encoder.pt")
    res = PrognosisWorkflow("evaluate", **common, evaluation={"n_folds": 2, "n_boot": 3, "n_boot_calibration": 2,
                                                              "report": False, "progress": False}).run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["image_features"]["source"] == "extracted" and metrics["image_features"]["cache"]["cached"] > 0
    assert metrics["endpoints"]["ffs"]["data"]["image_feature_columns"] == 192
    assert "estimate" in metrics["endpoints"]["ffs"]["models"]["cox"]["metrics"]["harrell_c"]
    assert res["endpoints"]["ffs"]["data"]["n"] == info["n"]
    pred = PrognosisWorkflow("infer", **{**common, "output_csv": tmp_path / "pred.csv"}).run()
    assert pred.is_file()
    with pytest.raises(ValueError, match="trained with image features; pass hcmae_encoder"):
        PrognosisWorkflow("infer", **{**common, "hcmae_encoder": None, "output_csv": tmp_path / "p2.csv"}).run()
    with pytest.raises(ValueError, match="not both"):
        PrognosisWorkflow("train", **{**common, "image_features": tmp_path / "f.csv"}).run()
    # another run (another output_dir) sharing the first run's cache extracts nothing again
    other = PrognosisWorkflow("train", **{**common, "output_dir": tmp_path / "other",
                                          "image_features_cache": tmp_path / "image_features"}).run()
    assert other["image_features"]["cache"]["computed"] == 0
    assert other["image_features"]["cache"]["cached"] == summary["image_features"]["cache"]["computed"]
    assert not (tmp_path / "other" / "image_features").exists()


def test_wrong_checkpoints_are_named(hcmae_export, tiny_vlm_dir, tmp_path):
    from hicur_monai.survival.image_features import load_hcmae_vit, load_vlm_encoder

    with pytest.raises(ImageFeatureError, match="vision-language model folder.*vlm_checkpoint"):
        load_hcmae_vit(tiny_vlm_dir)
    rnd = tmp_path / "random.pt"
    torch.save({"w": torch.randn(3)}, rnd)
    with pytest.raises(ImageFeatureError, match="random.json.*not an HCMAE encoder export"):
        load_hcmae_vit(rnd)
    with pytest.raises(ImageFeatureError, match="ConvNeXt.*not the HCMAE ViT"):
        load_hcmae_vit(hcmae_export / "convnext_encoder.pt")
    other = tmp_path / "vit_encoder.pt"
    shutil.copy(hcmae_export / "vit_encoder.pt", other)
    meta = json.loads((hcmae_export / "vit_encoder.json").read_text())
    meta["kwargs"]["embed_dim"] = 32
    (tmp_path / "vit_encoder.json").write_text(json.dumps(meta))
    with pytest.raises(ImageFeatureError, match="do not fit the ViT.*another size"):
        load_hcmae_vit(other)
    with pytest.raises(ImageFeatureError, match="vit_encoder.pt is a file.*hcmae_encoder"):
        load_vlm_encoder(hcmae_export / "vit_encoder.pt")
    with pytest.raises(FileNotFoundError, match="hcmae_encoder"):
        load_hcmae_vit(tmp_path / "nope.pt")


@pytest.mark.slow
def test_studies_without_mri_or_mask(demo_cohort, hcmae_export, study_ids, tmp_path):
    from hicur_monai.data.clinical import load_clinical_table
    from hicur_monai.survival.workflow import prepare_dataset

    enc = hcmae_export / "vit_encoder.pt"
    gone = str(study_ids.iloc[0])
    dl = _datalist(demo_cohort, tmp_path, lambda items: [e for e in items if e["study"] != gone])
    with pytest.raises(ImageFeatureError, match=f"have no MRI.*{gone}"):
        study_features(study_ids, dl, tmp_path / "c", hcmae_encoder=enc, mode="strict", device="cpu")
    ct = load_clinical_table(demo_cohort / "clinical" / "clinical.csv", mode="drop", salt="s")
    feats, desc = study_features(study_ids, dl, tmp_path / "c", hcmae_encoder=enc, mode="drop", device="cpu")
    assert desc["missing_studies"] == [gone] and gone not in feats.index and len(feats) == len(study_ids) - 1
    _, _, _, info = prepare_dataset(ct, "os", ["t_stage"], feats)
    assert info["excluded_no_image_features"] == 1  # counted, not silently lost

    def no_label(items):
        items[4].pop("label")
        return items
    dl = _datalist(demo_cohort, tmp_path, no_label)
    with pytest.raises(ImageFeatureError, match=r"mri\[4\].*no 'label'"):
        study_features(study_ids, dl, tmp_path / "c", hcmae_encoder=enc, device="cpu")

    import nibabel as nib

    first = json.loads((demo_cohort / "datalist.json").read_text())["mri"][0]
    src = nib.load(str(demo_cohort / first["label"]))
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(src.shape, np.uint8), src.affine), str(empty))

    def empty_mask(items):
        items[0]["label"] = str(empty)
        return items
    dl = _datalist(demo_cohort, tmp_path, empty_mask)
    with pytest.raises(ImageFeatureError, match="empty_mask.nii.gz: the tumour mask is empty"):
        study_features(study_ids, dl, tmp_path / "c2", hcmae_encoder=enc, device="cpu")


def test_report_cli_names_a_wrong_checkpoint(demo_cohort, tiny_vlm_dir, tmp_path, capsys):
    from hicur_monai.cli import main

    rc = main(["report", "survival", str(demo_cohort / "clinical" / "clinical.csv"), "--out", str(tmp_path),
               "--hcmae-encoder", str(tiny_vlm_dir), "--salt", "s"])
    out = capsys.readouterr().out
    assert rc == 2 and str(tiny_vlm_dir) in out and "give it as vlm_checkpoint" in out
