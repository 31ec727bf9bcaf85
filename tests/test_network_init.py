from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNet

from hicur_monai.networks.fusion_seg import FusionSegNet
from hicur_monai.networks.init import output_layer, set_output_prior


def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 3, 1, channels=(8, 16, 32), strides=(2, 2), num_res_units=2, norm="batch")


def test_output_layer_is_the_head_of_a_monai_unet():
    net = _unet()
    head = output_layer(net)
    assert head.out_channels == 1
    with torch.no_grad():
        head.bias.fill_(-50.0)
        assert float(torch.sigmoid(net.eval()(torch.randn(2, 3, 32, 32))).max()) < 1e-6


@pytest.mark.parametrize("prior", [0.01, 0.2])
def test_set_output_prior_sets_the_bias_to_the_logit(prior):
    net = set_output_prior(_unet(), prior)
    assert float(output_layer(net).bias) == pytest.approx(math.log(prior / (1 - prior)))


def test_fusion_net_starts_near_its_prior():
    torch.manual_seed(0)
    net = FusionSegNet(preset="tiny").eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.randn(2, 3, 64, 64), torch.randn(2, 4, 64)))
    assert 0.002 < float(p.mean()) < 0.05  # 0.01 up to what the random decoder adds


def test_bad_priors_are_refused_and_none_is_a_no_op():
    net = _unet()
    before = output_layer(net).bias.clone()
    assert set_output_prior(net, None) is net
    assert torch.equal(output_layer(net).bias, before)
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError, match="prior"):
            set_output_prior(net, bad)
    with pytest.raises(ValueError, match="no convolution"):
        set_output_prior(torch.nn.ReLU(), 0.01)
