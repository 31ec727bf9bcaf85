"""HCMAE network: positions, sparse FCMAE equivalence, losses, contrastive modes, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hicur_monai.networks.hcmae import (
    HCMAE,
    HCMAEConfig,
    _masked_mse,
    info_nce,
    load_encoder,
    patchify,
    pixel_shift,
    unpatchify,
)
from hicur_monai.registry import get

torch.set_num_threads(1)


def _net(**kw) -> HCMAE:
    torch.manual_seed(0)
    return HCMAE(preset="tiny", **kw).eval()


def _shuffle_patches(img: torch.Tensor, p: int, perm: torch.Tensor) -> torch.Tensor:
    x = patchify(img, p)
    return unpatchify(x[:, perm], p, img.shape[-2], img.shape[-1], img.shape[1])


@pytest.mark.parametrize("pos", [True, False])
def test_shuffled_patches_change_encoder_output_only_with_positions(pos):
    net = _net(encoder_pos_embed=pos)
    img = torch.rand(2, 3, 64, 64)
    perm = torch.tensor([3, 0, 15, 7, 1, 2, 9, 4, 5, 6, 8, 10, 11, 12, 14, 13])
    with torch.no_grad():
        a = net.vit_encode(img)[:, 0]
        b = net.vit_encode(_shuffle_patches(img, 16, perm))[:, 0]
    if pos:
        assert not torch.allclose(a, b, atol=1e-4), "with positions, shuffling patches must change the CLS output"
    else:  # the released defect: the encoder is blind to patch order
        assert torch.allclose(a, b, atol=1e-5)


def test_vit_encoder_runs_on_kept_patches_only():
    net = _net()
    img = torch.rand(2, 3, 64, 64)
    latent, mask, _ = net.vit_encode_masked(img, torch.Generator().manual_seed(1))
    assert latent.shape == (2, 1 + 4, 64)  # 25% of 16 patches + CLS
    assert mask.sum(1).tolist() == [12.0, 12.0]
    # changing only masked pixels leaves the encoder output unchanged
    pm = unpatchify(mask[..., None].expand(-1, -1, 16 * 16 * 3), 16, 64, 64)
    latent2, _, _ = net.vit_encode_masked(img + 5.0 * pm, torch.Generator().manual_seed(1))
    assert torch.allclose(latent, latent2, atol=1e-6)


def _dense_reference(net: HCMAE, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FCMAE's dense emulation of sparse convolution: zero masked pixels after every op."""
    enc, g = net.convnext, net.cell_grid
    vis = (1.0 - mask).reshape(-1, 1, g, g)
    x = enc.stem(imgs)
    for stage in enc.stages:
        x = stage.downsample(x)
        m = F.interpolate(vis, size=x.shape[-2:], mode="nearest")
        x = x * m
        mc = m.permute(0, 2, 3, 1)
        for blk in stage.blocks:
            y = (blk.conv_dw(x) * m).permute(0, 2, 3, 1)
            y = blk.norm(y) * mc
            y = blk.mlp.act(blk.mlp.fc1(y)) * mc
            y = blk.mlp.fc2(blk.mlp.grn(y)) * mc
            x = y.permute(0, 3, 1, 2) + x
    return x


def test_sparse_fcmae_equals_dense_masked_emulation_and_differs_from_released():
    net = _net(img_size=128)
    imgs = torch.rand(2, 3, 128, 128)
    mask = net.convnext_mask(2, torch.Generator().manual_seed(3))
    with torch.no_grad():
        sparse = net.convnext_encode_masked(imgs, mask)
        ref = _dense_reference(net, imgs, mask)
        net.config.fcmae_sparse = False
        released = net.convnext_encode_masked(imgs, mask)
    assert sparse.shape == ref.shape == (2, 128, 4, 4)
    assert torch.allclose(sparse, ref, atol=1e-4), (sparse - ref).abs().max()
    masked = mask.reshape(2, 1, 4, 4).expand_as(sparse) > 0
    assert (sparse[masked] == 0).all(), "masked cells must carry no features"
    assert not torch.allclose(sparse, released, atol=1e-3)


@pytest.mark.parametrize("mode", ["released", "cmae", "none"])
def test_losses_finite_and_both_branches_get_gradients(mode):
    net = _net(contrastive_mode=mode).train()
    out = net(torch.rand(4, 3, 64, 64), task="pretrain", generator=torch.Generator().manual_seed(0))
    for k in ("loss", "loss_mae", "loss_fcmae", "loss_contrastive"):
        assert torch.isfinite(out[k]), k
    out["loss"].backward()
    assert net.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert net.convnext.stages[0].blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert net.vit.pos_embed.grad is None  # fixed sin-cos
    if mode == "none":
        assert float(out["loss_contrastive"]) == 0.0
    else:
        assert float(out["loss_contrastive"]) > 0.0
    expected_w = {"released": 0.1, "cmae": 1.0, "none": 0.1}[mode]
    total = out["loss_mae"] + out["loss_fcmae"] + expected_w * out["loss_contrastive"]
    assert torch.allclose(out["loss"].detach(), total, atol=1e-5)


def test_cmae_defaults_and_ema_schedule():
    net = _net(contrastive_mode="cmae")
    assert net.config.temperature == 0.07 and net.config.contrastive_weight == 1.0
    assert not any(p.requires_grad for p in net.target_vit.parameters())
    before = net.target_vit.blocks[0].mlp.fc1.weight.clone()
    with torch.no_grad():
        for p in net.vit.parameters():
            p.add_(0.1)
    m0 = net.update_target(0.0)
    m1 = net.update_target(1.0)
    assert m0 == pytest.approx(0.99) and m1 == pytest.approx(0.996)
    assert not torch.allclose(before, net.target_vit.blocks[0].mlp.fc1.weight)
    assert HCMAE(preset="tiny").update_target(0.5) == 1.0  # no target in released mode


def test_info_nce_prefers_matched_pairs():
    torch.manual_seed(0)
    a = torch.randn(8, 32)
    assert info_nce(a, a + 0.01 * torch.randn(8, 32), 0.5) < info_nce(a, torch.randn(8, 32), 0.5)


def test_masked_mse_ignores_visible_patches():
    target = torch.rand(2, 4, 12)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    pred = target.clone()
    pred[mask == 0] += 10.0  # wrong only where visible
    assert float(_masked_mse(pred, target, mask, norm_pix=False)) == pytest.approx(0.0, abs=1e-7)
    pred[0, 0] += 1.0
    assert float(_masked_mse(pred, target, mask, norm_pix=False)) > 0


def test_pixel_shift_moves_image():
    img = torch.rand(2, 3, 64, 64)
    out = pixel_shift(img, 8, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and not torch.equal(out, img)


def test_export_and_load_encoders(tmp_path):
    net = _net()
    paths = net.export_encoders(tmp_path)
    img = torch.rand(2, 3, 64, 64)
    vit, cnx = load_encoder(paths["vit_encoder"]).eval(), load_encoder(paths["convnext_encoder"]).eval()
    with torch.no_grad():
        f = net.extract_features(img)
        assert torch.allclose(vit(img), f["vit_cls"], atol=1e-5)
        assert torch.allclose(cnx(img), f["convnext_pool"], atol=1e-5)
        assert net(img).shape == (2, net.feature_dim)
    (tmp_path / "vit_encoder.json").write_text('{"class": "os.system", "kwargs": {}}')
    with pytest.raises(ValueError, match="class"):
        load_encoder(paths["vit_encoder"])
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing.pt")


def test_bad_inputs_and_config():
    net = _net()
    with pytest.raises(ValueError, match="expects images"):
        net(torch.rand(2, 1, 64, 64), task="pretrain")
    with pytest.raises(ValueError, match="task"):
        net(torch.rand(1, 3, 64, 64), task="segment")
    with pytest.raises(ValueError, match="contrastive_mode"):
        HCMAEConfig(contrastive_mode="simclr")
    with pytest.raises(ValueError, match="mask_cell"):
        HCMAEConfig(mask_cell=16)
    with pytest.raises(TypeError, match="unknown HCMAE config"):
        HCMAEConfig.from_preset("tiny", vit_dept=3)


def test_registry_and_base_config():
    assert get("networks", "hcmae") is HCMAE
    c = HCMAEConfig()
    assert (c.img_size, c.patch_size, c.vit_embed_dim, c.vit_depth) == (384, 16, 768, 12)
    assert (c.decoder_depth, c.decoder_embed_dim, c.decoder_num_heads) == (4, 768, 3)
    assert c.convnext_depths == (3, 3, 27, 3) and c.convnext_dims == (128, 256, 512, 1024)
    assert (c.vit_mask_ratio, c.convnext_mask_ratio, c.temperature, c.contrastive_weight) == (0.75, 0.6, 0.5, 0.1)
