"""The opt-in fast-backward depthwise convolution (``cpu_lean``) equals ``nn.Conv2d`` (values and all gradients)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hicur_monai.networks.hcmae import HCMAE
from hicur_monai.training.cpu_lean import (
    FastDepthwiseConv2d,
    _DepthwiseConv2d,
    is_fast_depthwise,
    use_fast_depthwise,
)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("kernel", "padding", "bias"), [(7, 3, True), (3, 1, False), (5, 0, True), (3, (0, 2), True)])
def test_fast_depthwise_matches_conv2d(channels_last, kernel, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, kernel, padding=padding, groups=6, bias=bias).double()
    fast_conv = FastDepthwiseConv2d.from_conv(conv)
    assert fast_conv.weight is conv.weight
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=fmt)
    assert is_fast_depthwise(conv, x)
    outs = []
    for fn in (conv, fast_conv):
        conv.zero_grad()
        xr = x.clone().requires_grad_()
        y = fn(xr)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        outs.append((y.detach(), xr.grad, conv.weight.grad.clone(), conv.bias.grad.clone() if bias else None))
    ref, fast = outs
    for a, b in zip(ref, fast):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert fast[1].is_contiguous(memory_format=fmt)  # the input gradient keeps the input's layout


def test_depthwise_gradcheck():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _DepthwiseConv2d.apply(x, w, b, (1, 1)), (x, w, b))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 3, padding=1, groups=4, stride=2),  # strided
        nn.Conv2d(4, 4, 3, padding=2, groups=4, dilation=2),  # dilated
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # channel multiplier
        nn.Conv2d(4, 4, 3, padding=1),  # not depthwise
        nn.Conv2d(4, 4, 3, padding="same", groups=4),  # string padding
        nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
    ],
)
def test_other_convolutions_fall_back_to_the_layer(conv):
    x = torch.randn(1, 4, 8, 8)
    assert not is_fast_depthwise(conv, x)
    torch.testing.assert_close(FastDepthwiseConv2d.from_conv(conv)(x), conv(x))


def test_use_fast_depthwise_keeps_the_hcmae_step_and_its_state_dict():
    def run(fast: bool):
        torch.manual_seed(0)
        net = HCMAE(preset="tiny").train()
        keys = list(net.state_dict())
        if fast:
            use_fast_depthwise(net)
            assert sum(isinstance(m, FastDepthwiseConv2d) for m in net.modules()) == 5  # 4 stages + FCMAE decoder
            assert list(net.state_dict()) == keys
        imgs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        loss = net(imgs, task="pretrain", generator=torch.Generator().manual_seed(2))["loss"]
        loss.backward()
        return float(loss.detach()), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    (loss0, g0), (loss1, g1) = run(False), run(True)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)
