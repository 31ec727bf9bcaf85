"""Segmentation glue: coarse-state cache, data lists, whole-volume inference geometry, metrics, bundle checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hicur_monai.segmentation import (
    CoarseStateCache,
    CoarseStatesd,
    PerSliceMetric,
    TextEncoderStates,
    VolumeSliceInferer,
    comparison_table,
    dice_by_sequence,
    inference_items,
    segmentation_items,
)

BUNDLE = Path("bundles/npc_segmentation/configs")


@pytest.fixture(autouse=True)
def _at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # bundles resolve transforms/*.json from the repository root


class _CountingProvider:
    key = "counting"

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        s = images.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 4, 8).clone()
        return s, torch.ones(len(images), 4, dtype=torch.bool)


def test_coarse_states_are_computed_once_per_image_and_persist(tmp_path):
    prov = _CountingProvider()
    cache = CoarseStateCache(prov, cache_dir=tmp_path)
    imgs = torch.rand(3, 3, 16, 16)
    s1, m1 = cache(imgs)
    s2, _ = cache(imgs)  # second "epoch"
    assert prov.calls == 3 and cache.hits == 3 and torch.equal(s1, s2)
    assert s1.shape == (3, 4, 8) and m1.dtype == torch.bool
    # a new process (new cache object) reads them from disk, the provider is not called
    prov2 = _CountingProvider()
    again = CoarseStateCache(prov2, cache_dir=tmp_path)
    s3, _ = again(imgs)
    assert prov2.calls == 0 and torch.allclose(s1, s3)
    # a damaged cache file is recomputed, not trusted
    next((tmp_path / "counting").glob("*.pt")).write_bytes(b"garbage")
    fresh = CoarseStateCache(prov2, cache_dir=tmp_path)
    fresh(imgs)
    assert prov2.calls == 1
    d = CoarseStatesd("image", cache)({"image": imgs[0]})
    assert d["coarse_states"].shape == (4, 8) and d["coarse_mask"].all()
    with pytest.raises(ValueError, match="channel-first 2D"):
        CoarseStatesd("image", cache)({"image": torch.rand(16, 16)})


class _BatchCountingProvider(_CountingProvider):
    key = "batch-counting"

    def __init__(self):
        super().__init__()
        self.batches = []

    def __call__(self, images):
        self.batches.append(len(images))
        return super().__call__(images)


def test_flat_compose_gives_a_volume_s_slices_to_the_coarse_states_at_once():
    from monai.transforms import Lambdad

    from hicur_monai.segmentation import flat_compose
    from hicur_monai.transforms import ExtractSlicesd

    prov = _BatchCountingProvider()
    pipeline = flat_compose([ExtractSlicesd(["image"], axis=-1), None,
                             Lambdad("image", lambda x: x.expand(3, -1, -1)),
                             CoarseStatesd("image", CoarseStateCache(prov))])
    volume = torch.rand(1, 8, 8, 5)
    slices = pipeline({"image": volume})
    assert len(slices) == 5 and prov.batches == [5]  # one call for the volume, not five
    ref_prov = _CountingProvider()
    for i, d in enumerate(slices):  # the same states as one slice at a time
        ref = CoarseStatesd("image", CoarseStateCache(ref_prov))({"image": volume[..., i].expand(3, -1, -1)})
        assert torch.equal(d["coarse_states"], ref["coarse_states"])
    single = flat_compose([CoarseStatesd("image", CoarseStateCache(prov))])({"image": torch.rand(3, 8, 8)})
    assert single["coarse_states"].shape == (4, 8) and prov.batches[-1] == 1  # a single sample still works


def test_a_list_step_runs_as_compose_runs_steps_and_names_a_sample_without_the_key():
    from hicur_monai.segmentation import flat_compose

    prov = _BatchCountingProvider()
    samples = [{"image": torch.rand(3, 8, 8), "study": "IMG0001"}, {"study": "IMG0002"}]
    strict = flat_compose([lambda d: [dict(x) for x in d["items"]], CoarseStatesd("image", CoarseStateCache(prov))])
    with pytest.raises(RuntimeError, match="applying transform") as err:  # wrapped as Compose wraps a step's error
        strict({"items": samples})
    assert isinstance(err.value.__cause__, KeyError) and "IMG0002" in str(err.value.__cause__)
    lenient = CoarseStatesd("image", CoarseStateCache(prov), allow_missing_keys=True)
    out = lenient.call_list(list(reversed(samples)))  # the first sample lacks the key: the others still get states
    assert "coarse_states" not in out[0] and out[1]["coarse_states"].shape == (4, 8) and prov.batches[-1] == 1


def test_text_stand_in_states_are_fixed_length_and_image_independent():
    prov = TextEncoderStates("hashed_bow", num_tokens=12, encoder_kwargs={"dim": 64})
    states, mask = prov(torch.rand(2, 3, 32, 32))
    assert states.shape == (2, 12, 64) and mask.shape == (2, 12)
    assert torch.equal(states[0], states[1])  # text-only stand-in: the same for every image
    assert mask[0].sum() > 0 and not prov.image_conditioned
    with pytest.raises(KeyError, match="not registered"):
        TextEncoderStates("no_such_encoder")


def test_patient_level_split_and_bad_lists(demo_cohort, tmp_path):
    train = segmentation_items(dataset_dir=demo_cohort, split="train", val_every=3)
    val = segmentation_items(dataset_dir=demo_cohort, split="val", val_every=3)
    assert train and val
    assert not {it["patient"] for it in train} & {it["patient"] for it in val}
    assert {it["sequence"] for it in train} == {"T1", "T2", "T1C"}
    only = segmentation_items(dataset_dir=demo_cohort, sequences=["T1C"])
    assert {it["sequence"] for it in only} == {"T1C"}
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "m.nii.gz"}]}))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        segmentation_items(datalist=bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the data list"):
        segmentation_items(datalist=bad)


def test_per_slice_metrics_by_hand():
    y = torch.zeros(1, 1, 8, 8, 4)
    y[..., 2:6, 2:6, 1:3] = 1
    p = y.clone()
    p[..., 2:4, 2:6, 1] = 0  # slice 1: 8 of 16 pixels found -> Dice 2/3, IoU 1/2; slice 2 perfect
    d, i = PerSliceMetric("dice"), PerSliceMetric("iou")
    d(p, y)
    i(p, y)
    assert float(d.aggregate()) == pytest.approx((2 / 3 + 1) / 2)
    assert float(i.aggregate()) == pytest.approx(0.75)


def test_inferer_reassembles_on_the_input_grid():
    inf = VolumeSliceInferer(roi_size=64, sw_batch_size=3)
    calls = []

    def net(x):  # channel 0 of the de-normalised input: the identity
        calls.append(x.shape[0])
        return x[:, :1] * 0.337 + 0.530

    vol = torch.zeros(1, 1, 31, 45, 5)
    vol[..., 5:12, 20:30, 1:4] = 1
    out = inf(vol, net)
    assert out.shape == (1, 1, 31, 45, 5)
    assert torch.equal(out > 0.5, vol > 0.5)
    assert calls == [3, 2]  # 5 slices in batches of 3


def test_comparison_table(tmp_path):
    for name, dice in (("fusion", 0.9), ("baseline", 0.8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(f"val_mean_dice_3d,{dice}\nval_hd95,2.5\n")
    table = comparison_table({"fusion": tmp_path / "fusion", "baseline": tmp_path / "baseline"}, tmp_path / "t.md")
    assert "| fusion | 0.9000 | 2.5000 |" in table and (tmp_path / "t.md").read_text() == table
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        comparison_table({"x": tmp_path / "nothing"})


def test_comparison_table_adds_the_3d_dice_per_sequence(tmp_path):
    (tmp_path / "metrics.csv").write_text("val_mean_dice_3d,0.5\n")
    (tmp_path / "val_mean_dice_3d_raw.csv").write_text(
        "filename,class0,mean\n"
        "d/mri/A/T2.nii.gz,0.8,0.8\nd/mri/A/T1.nii.gz,0.2,0.2\nd/mri/B/T1.nii.gz,0.4,0.4\n"
        "d/mri/A/T1C.nii.gz,0.9,0.9\nd/other/scan.nii.gz,0.1,0.1\n"
    )
    assert dice_by_sequence(tmp_path / "val_mean_dice_3d_raw.csv") == pytest.approx(
        {"dice_3d_T1": 0.3, "dice_3d_T2": 0.8, "dice_3d_T1C": 0.9})
    table = comparison_table({"fusion": tmp_path})
    assert "| val_mean_dice_3d | dice_3d_T1 | dice_3d_T2 | dice_3d_T1C |" in table
    assert "| fusion | 0.5000 | 0.3000 | 0.8000 | 0.9000 |" in table
    (tmp_path / "val_mean_dice_3d_raw.csv").write_text("filename,class0,mean\nd/T2.nii.gz,0.8,oops\n")
    with pytest.raises(ValueError, match="T2.nii.gz"):
        dice_by_sequence(tmp_path / "val_mean_dice_3d_raw.csv")


def test_metadata_is_valid(meta_schema, repo_root):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(repo_root / BUNDLE / "metadata.json"), filepath=str(meta_schema))


def test_verify_net_in_out(repo_root):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "metadata.json"),
                      config_file=str(BUNDLE / "train.json"), device="cpu", preset="tiny")


def test_inference_bundle_writes_masks_in_the_input_geometry(demo_cohort, tmp_path):
    """NIfTI in (with an oblique, non-RAS affine), NIfTI mask out with the input's affine and shape."""
    from monai.bundle import run

    from hicur_monai.networks.fusion_seg import FusionSegNet

    src = nib.load(segmentation_items(dataset_dir=demo_cohort)[0]["image"])
    data = np.asarray(src.dataobj)[:, :, :7]
    affine = np.array([[0.0, -0.9, 0.1, 30.0], [1.1, 0.0, 0.0, -20.0], [0.0, 0.05, 3.0, 5.0], [0, 0, 0, 1]])
    inp = tmp_path / "in" / "study.nii.gz"
    inp.parent.mkdir()
    nib.save(nib.Nifti1Image(data, affine), inp)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    net = FusionSegNet(preset="tiny", text_dim=64)
    torch.nn.init.constant_(net.head.conv.conv.bias, 5.0)  # everything tumour: a non-empty mask
    torch.save(net.state_dict(), ckpt)
    run(config_file=str(BUNDLE / "inference.json"), input=str(inp.parent), output_dir=str(tmp_path / "out"),
        ckpt_path=str(ckpt), preset="tiny", img_size=64, largest_component=True)
    out = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(out) == 1
    mask = nib.load(out[0])
    assert mask.shape == data.shape
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    m = np.asarray(mask.dataobj)
    assert set(np.unique(m)) <= {0, 1} and m.sum() > 0


def test_inference_items(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.nii.gz").write_bytes(b"")
    (tmp_path / "a" / "mask.nii.gz").write_bytes(b"")
    dcm = tmp_path / "series"
    dcm.mkdir()
    for k in range(2):
        (dcm / f"{k}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    items = inference_items(tmp_path)
    assert {Path(i["image"]).name for i in items} == {"x.nii.gz", "series"}
    with pytest.raises(FileNotFoundError):
        inference_items(tmp_path / "none")


@pytest.mark.slow
def test_bundle_trains_evaluates_and_resumes(demo_cohort, tmp_path):
    """train.json + demo.json: a 2-epoch schedule stopped after epoch 1, resumed from last.pt for epoch 2 only;
    evaluate.json."""
    from monai.bundle import run

    cfg = [str(BUNDLE / "train.json"), str(BUNDLE / "demo.json")]
    common = {"dataset_dir": str(demo_cohort), "output_dir": str(tmp_path), "max_patients": 2, "val_every": 3,
              "sequences": ["T1C"], "val_interval": 1, "augment": False, "schedule_epochs": 2}
    run(config_file=cfg, epochs=1, **common)
    first = torch.load(tmp_path / "models" / "last.pt", weights_only=False)["trainer"]["iteration"]
    assert first > 0
    assert any((tmp_path / "coarse_cache").rglob("*.pt"))  # coarse states cached on disk
    run(config_file=cfg, epochs=2, **common)
    assert torch.load(tmp_path / "models" / "last.pt", weights_only=False)["trainer"]["iteration"] == 2 * first
    assert (tmp_path / "val_contours.png").stat().st_size > 1000
    run(config_file=[*cfg, str(BUNDLE / "evaluate.json")], **common)
    from hicur_monai.segmentation import read_metrics_csv

    metrics = read_metrics_csv(tmp_path / "eval" / "metrics.csv")
    assert {"val_mean_dice_3d", "val_hd95", "val_slice_dice", "val_slice_iou"} <= set(metrics)
    assert 0.0 <= metrics["val_mean_dice_3d"] <= 1.0
    assert (tmp_path / "eval" / "contours.png").is_file()


def test_dicom_series_in_nifti_mask_out(tmp_path):
    """A DICOM series folder in, a NIfTI mask out on the series' grid (the loader's affine and shape)."""
    from dicom_helpers import write_ct_series
    from monai.bundle import run

    from hicur_monai.networks.fusion_seg import FusionSegNet
    from hicur_monai.transforms import LoadMedicalImage

    series = write_ct_series(tmp_path / "series", 3)
    ref = LoadMedicalImage()(series)
    ckpt = tmp_path / "model.pt"
    torch.save(FusionSegNet(preset="tiny", text_dim=64).state_dict(), ckpt)
    run(config_file=str(BUNDLE / "inference.json"), input=str(series), output_dir=str(tmp_path / "out"),
        ckpt_path=str(ckpt), preset="tiny", img_size=64, largest_component=False)
    out = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(out) == 1
    mask = nib.load(out[0])
    assert mask.shape == tuple(ref.shape[1:])
    np.testing.assert_allclose(mask.affine, ref.affine.numpy(), atol=1e-3)
