"""The fusion U-Net: shapes, cross-attention to the coarse states, padding mask, MoE, HCMAE encoder weights."""

from __future__ import annotations

import pytest
import torch

from hicur_monai.networks.fusion_seg import FusionBlock, FusionSegConfig, FusionSegNet, MoEFeedForward


def _randomise_outputs(net: torch.nn.Module) -> None:
    """The attention output projections start at zero (identity blocks); give them weights."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, FusionBlock):
            for proj in (m.cross.proj, m.self_attn.proj):
                proj.weight.data = torch.randn(proj.weight.shape, generator=g) * 0.5


@pytest.fixture(scope="module")
def net() -> FusionSegNet:
    torch.manual_seed(0)
    n = FusionSegNet(preset="tiny", fusion_scales=(0, 1, 2, 3, 4)).eval()
    _randomise_outputs(n)
    return n


def test_shapes_five_scales_and_registry(net):
    x = torch.randn(2, 3, 64, 64)
    feats = net.encode(x)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]  # strides 2, 4, 8, 16, 32
    assert sorted(net.fusion) == ["0", "1", "2", "3", "4"]
    assert net(x, torch.randn(2, 5, 64)).shape == (2, 1, 64, 64)
    assert net(x).shape == (2, 1, 64, 64)  # no states: cross-attention skipped
    k = FusionSegNet(preset="tiny", out_channels=3)
    assert k(x[:, :, :32, :32]).shape == (2, 3, 32, 32)
    from hicur_monai.registry import get

    assert get("networks", "fusion_seg") is FusionSegNet


def test_output_depends_on_the_coarse_states_and_respects_the_mask(net):
    x = torch.randn(1, 3, 32, 32)
    s1, s2 = torch.randn(1, 6, 64), torch.randn(1, 6, 64)
    with torch.no_grad():
        a, b = net(x, s1), net(x, s2)
        assert not torch.allclose(a, b, atol=1e-5)
        # padded tokens (mask False) must not matter
        mask = torch.tensor([[True, True, True, False, False, False]])
        s3 = s1.clone()
        s3[:, 3:] = torch.randn(1, 3, 64) * 10
        assert torch.allclose(net(x, s1, mask), net(x, s3, mask), atol=1e-5)
        # one state sequence broadcasts over the batch
        xb = torch.randn(3, 3, 32, 32)
        assert torch.allclose(net(xb, s1), net(xb, s1.expand(3, -1, -1)), atol=1e-5)


def test_bad_inputs_are_rejected_with_a_message(net):
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="text_states must be"):
        net(torch.randn(1, 3, 64, 64), torch.randn(1, 4, 10))
    with pytest.raises(ValueError, match="fusion_scales"):
        FusionSegConfig(fusion_scales=(5,))
    with pytest.raises(ValueError, match="unknown fusion preset"):
        FusionSegNet(preset="huge")


def test_moe_routes_top2_of_8_and_trains():
    moe = MoEFeedForward(16, 32, num_experts=8, top_k=2)
    x = torch.randn(2, 10, 16, requires_grad=True)
    y = moe(x)
    assert y.shape == x.shape and float(moe.aux_loss.detach()) > 0
    y.sum().backward()
    used = [e for e in moe.experts if e[0].weight.grad is not None and e[0].weight.grad.abs().sum() > 0]
    assert 2 <= len(used) <= 8
    net = FusionSegNet(preset="tiny", moe=True)
    out = net(torch.randn(1, 3, 32, 32), torch.randn(1, 4, 64))
    assert out.shape == (1, 1, 32, 32) and float(net.moe_aux_loss.detach()) > 0
    assert not any(isinstance(m, MoEFeedForward) for m in FusionSegNet(preset="tiny").modules())  # off by default


def test_loads_hcmae_exported_convnext(tmp_path):
    from hicur_monai.networks.hcmae import HCMAE

    h = HCMAE(preset="tiny")
    paths = h.export_encoders(tmp_path)
    net = FusionSegNet(preset="tiny", encoder_weights=str(paths["convnext_encoder"]))
    ref = h.convnext.state_dict()
    got = net.encoder.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(FileNotFoundError):
        FusionSegNet(preset="tiny", encoder_weights=str(tmp_path / "missing.pt"))


@pytest.mark.slow
def _sparse_toy(n: int = 8, size: int = 32):
    """Images with one 4x4 bright square each (1.6% foreground, like a small tumour)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    y = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = torch.randint(4, size - 8, (2,), generator=g).tolist()
        y[i, :, r : r + 4, c : c + 4] = 1
    return x + 2 * y, y, torch.randn(n, 5, 64, generator=g)


def _train_dice(prior, steps: int) -> float:
    from monai.losses import DiceFocalLoss

    torch.manual_seed(0)
    cfg = FusionSegConfig.from_preset("tiny")
    cfg.output_prior = prior
    net = FusionSegNet(config=cfg)
    x, y, states = _sparse_toy()
    loss_fn = DiceFocalLoss(sigmoid=True, gamma=2.0, alpha=0.25, lambda_focal=2.0)  # the original's loss
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        out = net(x, states)
        loss_fn(out, y).backward()
        opt.step()
    pred = (out.detach() > 0).float()
    return float(2 * (pred * y).sum() / (pred.sum() + y.sum()))


def test_the_original_loss_learns_a_sparse_foreground():
    """Small bright squares (1.6% of the pixels) are found after 35 steps of the original's loss."""
    assert _train_dice(0.01, steps=35) > 0.5
