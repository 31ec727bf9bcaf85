"""The stage II -> III segmentation hand-off on tiny models: one key, width from the checkpoint, checksummed cache,
the last positions kept, reports, clear errors at the hand-off, and configs that hold wiring only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from vlm_helpers import tiny_vlm  # noqa: E402

from hicur_monai.segmentation import (  # noqa: E402
    CoarseStateCache,
    ReportTextd,
    TextEncoderStates,
    VLMStates,
    coarse_provider,
    load_checked_network,
    segmentation_items,
)

BUNDLE = Path("bundles/npc_segmentation/configs")


@pytest.fixture(scope="module")
def vlm_dirs(tmp_path_factory):
    """A tiny stage II model saved twice: "step1" and "step2" (other projector weights)."""
    root = tmp_path_factory.mktemp("vlm")
    torch.manual_seed(0)
    model = tiny_vlm().eval()
    model.save_pretrained(root / "step1" / "model")
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(root / "step2" / "model")
    return root / "step1" / "model", root / "step2" / "model"


def test_width_from_the_checkpoint_and_different_images_differ_in_every_kept_position(vlm_dirs):
    prov = coarse_provider(str(vlm_dirs[1]), num_tokens=32, device="cpu")
    assert isinstance(prov, VLMStates) and prov.dim == 32  # vlm_config.json: projector.d_llm of the tiny LLM
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)
    states, mask = prov(images)
    assert states.shape == (2, 32, 32) and mask.all()
    # the kept positions are the last ones: each has seen the image, so all 32 differ between two images
    differs = (states[0] - states[1]).abs().amax(-1) > 1e-5
    assert bool(differs.all()), f"only {int(differs.sum())} of 32 kept positions differ"
    again, _ = prov(images[:1])
    torch.testing.assert_close(again[0], states[0])


def test_stand_in_without_checkpoint_keeps_the_last_positions_and_says_so():
    prov = coarse_provider(None, num_tokens=8)
    assert isinstance(prov, TextEncoderStates) and prov.dim == 64
    assert "stand-in" in prov.description and "same states for every image" in prov.description
    full, fmask = prov.encoder.encode([prov.instruction])
    states, mask = prov(torch.rand(1, 3, 16, 16))
    n = int(fmask[0].sum())
    assert n > 8 and mask.all()
    torch.testing.assert_close(states[0], full[0, n - 8: n].float())  # the last 8 real positions, not the first


def test_cache_key_includes_the_model_checksum(vlm_dirs, tmp_path):
    step1, step2 = (coarse_provider(str(d), device="cpu") for d in vlm_dirs)
    assert step1.checksum != step2.checksum and step1.key != step2.key
    copy = tmp_path / "copy"
    shutil.copytree(vlm_dirs[0], copy)
    assert coarse_provider(str(copy)).checksum == step1.checksum
    (copy / "projector.pt").write_bytes((copy / "projector.pt").read_bytes() + b"\0")  # "re-trained"
    assert coarse_provider(str(copy)).key != step1.key
    assert coarse_provider(str(vlm_dirs[0]), coarse_report=True).key != step1.key
    # states of the two models land in two cache folders
    img = torch.rand(1, 3, 32, 32)
    for prov in (step1, step2):
        CoarseStateCache(prov, tmp_path / "cache")(img)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_report_text_is_part_of_the_prompt_and_of_the_cache_key(vlm_dirs, tmp_path):
    prov = coarse_provider(str(vlm_dirs[1]), coarse_report="true", device="cpu")
    cache = CoarseStateCache(prov, tmp_path)
    img = torch.rand(1, 3, 32, 32)
    a, _ = cache(img, ["Mass of the left lateral wall."])
    b, _ = cache(img, ["No mass; the nasopharynx is normal."])
    assert cache.misses == 2 and not torch.allclose(a, b)
    cache(img, ["Mass of the left lateral wall."])
    assert cache.hits == 1
    with pytest.raises(ValueError, match="coarse_report is true"):
        cache(img)


def test_missing_report_names_the_study_and_file(tmp_path):
    with pytest.raises(ValueError, match="IMG0007.*'report'"):
        ReportTextd("report")({"study": "IMG0007", "image": "x.nii.gz"})
    with pytest.raises(FileNotFoundError, match=r"IMG0007\.txt.*IMG0007"):
        ReportTextd("report")({"study": "IMG0007", "report": str(tmp_path / "IMG0007.txt")})
    (tmp_path / "IMG0007.txt").write_text("Findings: a mass.")
    d = ReportTextd("report")({"study": "IMG0007", "report": str(tmp_path / "IMG0007.txt")})
    assert d["report_text"] == "Findings: a mass."


def test_demo_mri_items_carry_their_report(demo_cohort):
    items = segmentation_items(dataset_dir=demo_cohort)
    for it in items:
        assert Path(it["report"]).name == f"{it['study']}.txt" and Path(it["report"]).is_file()


def test_wrong_stage_checkpoints_are_named(vlm_dirs, tmp_path):
    hcmae = tmp_path / "hcmae" / "models" / "vit_encoder.pt"
    hcmae.parent.mkdir(parents=True)
    torch.save({"patch_embed.proj.weight": torch.zeros(1)}, hcmae)
    with pytest.raises(ValueError, match=r"vit_encoder\.pt: vlm_checkpoint is a file.*stage I"):
        coarse_provider(str(hcmae))
    with pytest.raises(ValueError, match=r"hcmae: no vlm_config\.json.*stage I HCMAE output"):
        coarse_provider(str(tmp_path / "hcmae"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        coarse_provider(str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(vlm_dirs[0], broken)
    (broken / "vlm_config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"broken/vlm_config\.json.*d_llm"):
        coarse_provider(str(broken))


def test_text_dim_mismatch_names_both_files(vlm_dirs, tmp_path):
    from hicur_monai.networks.fusion_seg import FusionSegNet

    ckpt = tmp_path / "model.pt"
    torch.save(FusionSegNet(preset="tiny", text_dim=64).state_dict(), ckpt)  # trained on the stand-in
    prov = coarse_provider(str(vlm_dirs[1]))
    with pytest.raises(ValueError, match=r"model\.pt: .*text_dim 64.*vlm_config\.json are 32-d"):
        load_checked_network(ckpt, FusionSegNet(preset="tiny", text_dim=32), "cpu", prov)
    net = load_checked_network(ckpt, FusionSegNet(preset="tiny", text_dim=64), "cpu", coarse_provider(None))
    assert net.config.text_dim == 64


def test_study_without_mask_is_named(demo_cohort, tmp_path):
    data = json.loads((demo_cohort / "datalist.json").read_text())["mri"][:3]
    for it in data:
        for k in ("image", "label"):
            it[k] = str(demo_cohort / it[k])
    data[1]["label"] = str(tmp_path / "gone" / "mask.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"gone/mask\.nii\.gz: label file of item"):
        segmentation_items(datalist=tmp_path / "list.json")


def test_demo_variants_and_comparison_json(tmp_path):
    from hicur_monai.segmentation.cli import comparison_json, variant_overrides

    configs, keys = variant_overrides("fusion_vlm_report", "runs/vl/step2/model")
    assert keys == {"coarse_report": True, "vlm_checkpoint": "runs/vl/step2/model"} and len(configs) == 2
    assert variant_overrides("baseline", None)[0][-1].endswith("baseline.json")  # old name = unet
    with pytest.raises(ValueError, match="--vlm-checkpoint"):
        variant_overrides("fusion_vlm", None)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_overrides("fusion_magic", None)
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.csv").write_text("val_mean_dice_3d\t0.5\nval_hd95\t3.0\n")
    (ev / "val_mean_dice_3d_raw.csv").write_text("filename\tmean\n/a/T1.nii.gz\t0.2\n/a/T2.nii.gz\t0.6\n")
    (ev / "summary.json").write_text(json.dumps({"coarse_states": "stand-in: ..."}))
    rows = comparison_json({"fusion_standin": ev}, tmp_path / "comparison.json")
    assert rows == json.loads((tmp_path / "comparison.json").read_text())
    assert rows["fusion_standin"] == {"val_mean_dice_3d": 0.5, "dice_3d_T1": 0.2, "dice_3d_T2": 0.6,
                                      "dice_3d_T1C": None, "val_hd95": 3.0, "coarse_states": "stand-in: ..."}


def _expressions(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _expressions(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _expressions(v)
    elif isinstance(obj, str) and obj.startswith("$"):
        yield obj


def test_segmentation_configs_are_wiring(repo_root):
    """Issue 18: no conditionals or lambdas in $ expressions, none over 120 characters; demo.json only overrides."""
    for path in sorted((repo_root / BUNDLE).glob("*.json")):
        for expr in _expressions(json.loads(path.read_text())):
            assert not re.search(r"\bif\b|\blambda\b", expr), f"{path.name}: {expr}"
            assert len(expr) <= 120, f"{path.name}: {len(expr)} characters: {expr[:60]}..."
    demo = json.loads((repo_root / BUNDLE / "demo.json").read_text())
    assert "rgb" not in demo and demo["img_size"] == 64


@pytest.mark.slow
def test_bundle_hand_off_with_one_key(demo_cohort, vlm_dirs, tmp_path, repo_root, monkeypatch):
    """train.json + demo.json with vlm_checkpoint (+ coarse_report); evaluate.json inherits both, says what it used."""
    from monai.bundle import run

    monkeypatch.chdir(repo_root)
    cfg = [str(BUNDLE / "train.json"), str(BUNDLE / "demo.json")]
    common = {"dataset_dir": str(demo_cohort), "output_dir": str(tmp_path), "max_patients": 1, "val_every": 3,
              "sequences": ["T1C"], "epochs": 1, "val_interval": 1, "vlm_checkpoint": str(vlm_dirs[1]),
              "coarse_report": True}
    run(config_file=cfg, **common)
    cached = list((tmp_path / "coarse_cache").rglob("*.pt"))
    assert cached and torch.load(cached[0], weights_only=True)["states"].shape == (32, 32)
    run(config_file=[*cfg, str(BUNDLE / "evaluate.json")], **common)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["coarse_states"].startswith("VLM states: ") and "report" in summary["coarse_states"]
    assert 0.0 <= summary["metrics"]["val_mean_dice_3d"] <= 1.0
    # the same model evaluated with other states (another VLM checkpoint) is refused, naming both
    with pytest.raises(Exception) as err:  # MONAI wraps the error of a component; ours is its cause
        run(config_file=[*cfg, str(BUNDLE / "evaluate.json")], **{**common, "vlm_checkpoint": str(vlm_dirs[0])})
    assert re.search(r"model\.pt: the fusion network was trained on other coarse states .*step1/model/vlm_config\.json",
                     f"{err.value} {err.value.__cause__}")
    # inference.json: the same two keys, and the folder of the studies' reports
    study = segmentation_items(dataset_dir=demo_cohort, sequences=["T1C"])[0]
    inp = tmp_path / "in" / study["study"]
    inp.mkdir(parents=True)
    shutil.copy(study["image"], inp / "T1C.nii.gz")
    infer = {"config_file": [str(BUNDLE / "inference.json")], "input": str(inp.parent), "preset": "tiny",
             "img_size": 64, "norm": "batch", "ckpt_path": str(tmp_path / "models" / "model.pt"),
             "vlm_checkpoint": str(vlm_dirs[1]), "coarse_report": True}
    with pytest.raises(Exception) as err:
        run(**infer, output_dir=str(tmp_path / "seg"))
    assert "reports is not set" in f"{err.value} {err.value.__cause__}"
    run(**infer, output_dir=str(tmp_path / "seg"), reports=str(demo_cohort / "reports" / "mri"))
    assert (tmp_path / "seg" / study["study"] / "T1C_seg.nii.gz").is_file()
