"""Correctness of the shared transforms (array + dictionary twins)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from hicur_monai.transforms import (
    EnsureRGB,
    EnsureRGBd,
    ExtractSlices,
    ExtractSlicesd,
    RandColorJitter,
    RandColorJitterd,
    ScaleIntensityByModality,
    ScaleIntensityByModalityd,
    slice_range_from_mask,
)


def test_ct_window_maps_soft_tissue_window_to_unit_range():
    hu = torch.tensor([[-1000.0, -160.0, 40.0, 240.0, 1000.0]])
    out = ScaleIntensityByModality("ct")(hu)
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_ct_window_is_configurable():
    hu = torch.tensor([[0.0, 400.0, 800.0]])  # bone window level 400 width 800
    out = ScaleIntensityByModality("CT", ct_window=(400, 800))(hu)
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.5, 1.0]], atol=1e-6)


def test_mri_percentile_scaling_is_robust_to_outliers():
    rng = np.random.default_rng(0)
    vol = rng.normal(500, 50, size=(1, 20, 20, 10)).astype(np.float32)
    vol[0, 0, 0, 0] = 1e6  # a hot pixel must not squash the range
    out = ScaleIntensityByModality("mri")(torch.from_numpy(vol)).numpy()
    lo, hi = np.percentile(vol, [0.5, 99.5])
    expected = np.clip((vol - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=2e-3)
    assert out.max() == pytest.approx(1.0)
    assert np.median(out) == pytest.approx(0.5, abs=0.05)


def test_mri_constant_image_is_an_error_naming_the_file():
    img = MetaTensor(torch.full((1, 4, 4, 4), 7.0), meta={"filename_or_obj": "/data/p1/T2.nii.gz"})
    with pytest.raises(ValueError, match=r"T2\.nii\.gz.*constant"):
        ScaleIntensityByModality("T2")(img)


def test_endoscopy_scaling_and_modality_from_dictionary():
    d = {"image": torch.tensor([[[0.0, 127.5, 255.0]]]), "modality": "endoscopy"}
    out = ScaleIntensityByModalityd("image")(d)
    np.testing.assert_allclose(out["image"].numpy(), [[[0.0, 0.5, 1.0]]])
    with pytest.raises(KeyError, match="modality"):
        ScaleIntensityByModalityd("image")({"image": torch.zeros(1, 2, 2)})
    with pytest.raises(ValueError, match="unknown modality"):
        ScaleIntensityByModalityd("image")({"image": torch.zeros(1, 2, 2), "modality": "ultrasound"})


def _volume(shape=(1, 6, 5, 8)):
    affine = torch.tensor(
        [[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
    )
    data = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    return MetaTensor(data, affine=affine, meta={"filename_or_obj": "vol.nii.gz"})


def test_extract_slices_shapes_values_and_geometry():
    vol = _volume()
    slices = ExtractSlices()(vol)
    assert len(slices) == 8
    assert all(s.shape == (1, 6, 5) for s in slices)
    k = 5
    torch.testing.assert_close(slices[k].as_tensor(), vol.as_tensor()[..., k])
    assert slices[k].meta["slice_index"] == k
    assert slices[k].meta["source_spatial_shape"] == (6, 5, 8)
    torch.testing.assert_close(slices[k].meta["source_affine"], vol.affine)
    # the in-plane affine maps voxel (i, j) of slice k where the volume maps (i, j, k)
    i, j = 3, 2
    world3 = vol.affine @ torch.tensor([i, j, k, 1.0], dtype=torch.float64)
    world2 = slices[k].affine @ torch.tensor([i, j, 1.0], dtype=torch.float64)
    torch.testing.assert_close(world2[:2], world3[:2])


def test_extract_slices_range_step_and_errors():
    vol = _volume()
    assert [s.meta["slice_index"] for s in ExtractSlices(start=2, stop=7, step=2)(vol)] == [2, 4, 6]
    assert len(ExtractSlices(axis=0)(vol)) == 6
    assert len(ExtractSlices()(torch.zeros(3, 4, 4))) == 1  # 2D passes through
    with pytest.raises(ValueError, match="channel-first 3D"):
        ExtractSlices(pass_2d=False)(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="step"):
        ExtractSlices(step=0)


def test_extract_slices_dict_follows_the_mask_with_margin():
    vol = _volume()
    mask = torch.zeros_like(vol.as_tensor())
    mask[0, 2:4, 1:3, 3:5] = 1
    assert slice_range_from_mask(mask) == (3, 5)
    out = ExtractSlicesd(["image", "label"], mask_key="label", margin=1)(
        {"image": vol, "label": MetaTensor(mask, affine=vol.affine), "patient": "p1"}
    )
    assert [d["slice_index"] for d in out] == [2, 3, 4, 5]
    assert all(d["patient"] == "p1" and d["label"].shape == d["image"].shape for d in out)
    torch.testing.assert_close(out[1]["label"].as_tensor(), mask[..., 3])
    empty = {"image": vol, "label": MetaTensor(torch.zeros_like(mask))}
    with pytest.raises(ValueError, match="mask is empty"):
        ExtractSlicesd(["image", "label"], mask_key="label")(empty)
    assert len(ExtractSlicesd(["image", "label"], mask_key="label", allow_empty_mask=True)(empty)) == 8


def test_ensure_rgb():
    grey = torch.rand(1, 4, 5)
    rgb = EnsureRGB()(grey)
    assert rgb.shape == (3, 4, 5)
    assert torch.equal(rgb[0], rgb[2]) and torch.equal(rgb[1], grey[0])
    assert EnsureRGB()(torch.rand(4, 4, 5)).shape == (3, 4, 5)
    assert EnsureRGBd("image")({"image": torch.rand(3, 2, 2)})["image"].shape == (3, 2, 2)
    with pytest.raises(ValueError, match="2 channels"):
        EnsureRGB()(torch.rand(2, 4, 5))


def test_color_jitter_is_repeatable_and_only_touches_rgb_modalities():
    img = torch.rand(3, 16, 16)
    a = RandColorJitter(prob=1.0).set_random_state(3)(img)
    b = RandColorJitter(prob=1.0).set_random_state(3)(img)
    c = RandColorJitter(prob=1.0).set_random_state(4)(img)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, img)
    t = RandColorJitterd("image", prob=1.0).set_random_state(0)
    endo = t({"image": img, "modality": "endoscopy"})["image"]
    mri = t({"image": img, "modality": "mri"})["image"]
    assert not torch.allclose(endo, img)
    torch.testing.assert_close(torch.as_tensor(mri), img)


def test_window_then_apply_window_is_the_rule() -> None:
    """ScaleIntensityByModality.window + apply_window give exactly the rule (what curation tabulates and streams)."""
    g = torch.Generator().manual_seed(0)
    for modality, img in (("ct", torch.rand(1, 17, 19, generator=g) * 3000 - 1000),
                          ("mri", torch.rand(1, 17, 19, generator=g) * 900)):
        t = ScaleIntensityByModality(modality)
        assert torch.equal(t.apply_window(img, *t.window(img)), t(img))
    assert ScaleIntensityByModality("ct").window(None) == (-160.0, 240.0)
    assert ScaleIntensityByModality("endoscopy", rgb_max=4095).window(None) == (0.0, 4095.0)
    with pytest.raises(ValueError, match="constant"):
        ScaleIntensityByModality("mri").window(torch.full((1, 8, 8), 3.0))


def test_model_input_normalisation_is_declared_once() -> None:
    """NormalizeModelInput(d) is MONAI's channel-wise NormalizeIntensity with the one pair of constants, and the
    shared fragment (transforms/common.json::normalize) normalises with the same values."""
    from monai.transforms import NormalizeIntensity

    from hicur_monai.transforms import MODEL_INPUT_MEAN, MODEL_INPUT_STD, NormalizeModelInput, NormalizeModelInputd
    from hicur_monai.transforms.fragments import build_fragment

    img = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(1))
    expect = (img - torch.tensor(MODEL_INPUT_MEAN).view(3, 1, 1)) / torch.tensor(MODEL_INPUT_STD).view(3, 1, 1)
    ref = NormalizeIntensity(subtrahend=list(MODEL_INPUT_MEAN), divisor=list(MODEL_INPUT_STD), channel_wise=True)
    assert torch.equal(torch.as_tensor(NormalizeModelInput()(img.clone())), torch.as_tensor(ref(img.clone())))
    np.testing.assert_allclose(torch.as_tensor(NormalizeModelInput()(img.clone())).numpy(), expect.numpy(), rtol=1e-6)
    out = NormalizeModelInputd(keys="image")({"image": img.clone()})["image"]
    assert torch.equal(torch.as_tensor(out), torch.as_tensor(ref(img.clone())))
    fragment = build_fragment("common.json::normalize")({"image": img.clone()})["image"]
    assert torch.equal(torch.as_tensor(fragment), torch.as_tensor(ref(img.clone())))
