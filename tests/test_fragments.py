"""Every shared transform fragment parses with MONAI's ConfigParser and runs on demo data of its modality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from hicur_monai.data.demo import load_datalist
from hicur_monai.transforms.fragments import FRAGMENT_FILES, build_fragment, build_pipeline, transforms_dir

ORIGINAL_MEAN = (0.530, 0.313, 0.316)


def _all_refs() -> list[str]:
    refs = []
    for name in FRAGMENT_FILES:
        data = json.loads((transforms_dir() / f"{name}.json").read_text())
        refs += [f"{name}.json::{k}" for k, v in data.items() if not k.startswith("_") and isinstance(v, dict)]
    return refs


@pytest.mark.parametrize("ref", _all_refs())
def test_every_fragment_instantiates(ref: str):
    obj = build_fragment(ref)
    assert callable(obj)


def test_fragments_include_through_monai_macros(repo_root: Path, monkeypatch: pytest.MonkeyPatch):
    """A bundle-style config includes fragments with %transforms/<file>.json::<key> from the repo root."""
    monkeypatch.chdir(repo_root)
    parser = ConfigParser({
        "img_size": 256,
        "preprocessing": {"_target_": "Compose", "transforms": [
            "%transforms/mri.json::load", "%transforms/common.json::slices_roi", "%transforms/common.json::rgb",
            "%transforms/common.json::normalize",
        ]}
    })
    parser.resolve_macro_and_relative_ids()
    pipeline = parser.get_parsed_content("preprocessing")
    assert len(pipeline.transforms) == 4


def _run(refs, item, **params):
    out = build_pipeline(*refs, **params)(dict(item))
    return out if isinstance(out, list) else [out]


def test_mri_pipeline_on_demo_volume(demo_cohort: Path):
    item = next(i for i in load_datalist(demo_cohort, "mri") if i["sequence"] == "T1C")
    slices = _run(("mri.json::load", "common.json::slices_roi", "common.json::rgb"), item, img_size=256)
    assert 1 <= len(slices) <= 12
    for s in slices:
        assert s["image"].shape == (3, 256, 256) and s["label"].shape == (1, 256, 256)
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
        assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0}
    assert sum(float(s["label"].sum()) for s in slices) > 0  # the tumour range was kept


def test_ct_pipeline_on_demo_volume(demo_cohort: Path):
    item = load_datalist(demo_cohort, "ct")[0]
    loaded = build_fragment("ct.json::load")(dict(item))
    # soft-tissue window: air maps to 0, bone to 1, soft tissue in between
    img = loaded["image"]
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    slices = _run(("ct.json::load", "ct.json::slices", "common.json::rgb"), item)
    assert len(slices) == img.shape[-1] and slices[0]["image"].shape == (3, 384, 384)


def test_endoscopy_pipeline_with_augmentation_and_normalisation(demo_cohort: Path):
    item = load_datalist(demo_cohort, "endoscopy")[0]
    (plain,) = _run(("endoscopy.json::load", "common.json::rgb"), item)
    pipe = build_pipeline("endoscopy.json::load", "common.json::rgb", "augment.json::pretrain",
                          "common.json::normalize")
    pipe.set_random_state(0)
    out = pipe(dict(item))
    assert out["image"].shape == (3, 384, 384)
    assert not torch.allclose(out["image"], plain["image"])
    # normalisation with the original statistics: undoing it gives [0, 1] values back
    mean = torch.tensor(ORIGINAL_MEAN).view(3, 1, 1)
    std = torch.tensor((0.337, 0.237, 0.243)).view(3, 1, 1)
    undone = out["image"] * std + mean
    assert float(undone.min()) > -1e-4 and float(undone.max()) < 1 + 1e-4


def test_mixed_modality_pipeline_on_real_samples(demo_cohort: Path):
    items = load_datalist(demo_cohort, "real")
    assert items, "installed packages ship real samples (pydicom, scikit-image, nibabel)"
    pipe = build_pipeline("common.json::load_any", "common.json::slices_any", "common.json::rgb")
    for item in items:
        out = pipe(dict(item))
        first = out[0] if isinstance(out, list) else out
        assert first["image"].shape == (3, 384, 384), item["image"]
        assert 0.0 <= float(first["image"].min()) and float(first["image"].max()) <= 1.0


def test_bundle_export_inlines_fragment_macros(tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch):
    from hicur_monai.bundle import export_bundle

    src = tmp_path / "toy_bundle"
    (src / "configs").mkdir(parents=True)
    (src / "configs" / "metadata.json").write_text("{}")
    (src / "configs" / "inference.json").write_text(json.dumps({
        "img_size": 256,
        "preprocessing": {"_target_": "Compose",
                          "transforms": ["%transforms/ct.json::load", "%transforms/common.json::rgb"]}
    }))
    out = export_bundle(src, tmp_path / "exported")
    cfg = json.loads((out / "configs" / "inference.json").read_text())
    assert "%transforms" not in json.dumps(cfg)
    assert cfg["preprocessing"]["transforms"][0] == json.loads((repo_root / "transforms/ct.json").read_text())["load"]
    monkeypatch.chdir(tmp_path)  # the exported copy stands alone: it parses away from the repository
    parser = ConfigParser(cfg)
    assert len(parser.get_parsed_content("preprocessing").transforms) == 2
    with pytest.raises(FileExistsError):
        export_bundle(src, out)


def test_rgb_fragment_follows_img_size(repo_root: Path, monkeypatch: pytest.MonkeyPatch):
    """One parametric fragment: the including config's img_size sets both the resize and the padding."""
    monkeypatch.chdir(repo_root)
    item = {"image": torch.rand(1, 30, 20), "label": torch.zeros(1, 30, 20)}
    for size in (64, 256):
        parser = ConfigParser({"img_size": size, "rgb": "%transforms/common.json::rgb"})
        out = parser.get_parsed_content("rgb")(dict(item))
        assert out["image"].shape == (3, size, size) and out["label"].shape == (1, size, size)
    assert build_fragment("common.json::rgb")(dict(item))["image"].shape == (3, 384, 384)  # the file's default


def test_slices_roi_declared_once():
    """The tumour-slice fragment lives in common.json only (MRI and CT used identical copies)."""
    for name in ("mri", "ct"):
        assert "slices_roi" not in json.loads((transforms_dir() / f"{name}.json").read_text())
    assert "slices_roi" in json.loads((transforms_dir() / "common.json").read_text())
