"""``hicur bundle export`` writes a bundle that runs where it is put (issue 19: it ran only with
``--bundle_root .`` from inside the copy, and had no ``models/``)."""

from __future__ import annotations

import json
import shutil

import pytest

from hicur_monai.bundle import export_bundle
from hicur_monai.cli import main

TINY = {"preset": "tiny", "img_size": 64, "norm": "batch", "sw_batch_size": 4, "amp": False}


def test_export_points_bundle_root_at_the_copy(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    assert main(["bundle", "export", "npc_segmentation", str(tmp_path / "seg"), "--model", str(model)]) == 0
    out = tmp_path / "seg"
    train = json.loads((out / "configs" / "train.json").read_text())
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert train["bundle_root"] == inference["bundle_root"] == str(out.resolve())
    assert train["ckpt_dir"] == "$@bundle_root + '/models'"  # training writes where inference reads
    assert (out / "models" / "model.pt").read_bytes() == b"weights"
    assert "%transforms" not in (out / "configs" / "train.json").read_text()
    with pytest.raises(FileNotFoundError, match="model weights not found"):
        export_bundle("npc_segmentation", tmp_path / "other", model=tmp_path / "missing.pt")


@pytest.mark.slow
def test_exported_bundle_trains_and_infers_from_another_folder(tmp_path, demo_cohort, monkeypatch):
    from monai.bundle import run

    out = export_bundle("npc_segmentation", tmp_path / "exported" / "npc_segmentation")
    elsewhere = tmp_path / "elsewhere"  # no bundles/, no transforms/ here
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HICUR_TRANSFORMS_DIR", str(tmp_path / "nowhere"))  # nothing may need the repository's
    configs = out / "configs"
    run(config_file=[str(configs / "train.json"), str(configs / "demo.json")], dataset_dir=str(demo_cohort),
        output_dir="train_run", max_patients=2, epochs=1, **TINY)
    assert (out / "models" / "model.pt").is_file() and not (elsewhere / "bundles").exists()
    volume = demo_cohort / "mri" / "IMG0001"
    run(config_file=str(configs / "inference.json"), input=str(volume), output_dir="masks", **TINY)
    masks = list((elsewhere / "masks").rglob("*.nii.gz"))
    assert masks, f"no masks written under {elsewhere / 'masks'}"
    shutil.rmtree(out)
