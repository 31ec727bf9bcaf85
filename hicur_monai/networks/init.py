"""Weight initialisation helpers shared by the segmentation networks."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

__all__ = ["output_layer", "set_output_prior"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def output_layer(network: nn.Module) -> nn.Module:
    """The last convolution/linear layer registered in ``network`` (its output layer for U-Net-style networks).

    Raises:
        ValueError: if the network has no convolution or linear layer with a bias.
    """
    layers = [m for m in network.modules() if isinstance(m, _CONV_TYPES) and m.bias is not None]
    if not layers:
        raise ValueError(f"{type(network).__name__}: no convolution/linear layer with a bias to initialise")
    return layers[-1]


def set_output_prior(network: nn.Module, prior: float | None) -> nn.Module:
    """Start a sigmoid segmentation head at foreground probability ``prior`` (Lin et al., RetinaNet, 2017).

    The bias of the output layer is set to ``log(prior / (1 - prior))``. With a rare foreground (an NPC
    tumour covers about 0.2% of the pixels of a slice) a head that starts at probability 0.5 spends its first
    hundreds of steps learning the background, while the focal term with ``alpha = 0.25`` pushes everything
    towards it and the Dice term's gradient vanishes through the saturating sigmoid: the network can
    collapse to an empty mask. Starting at the prior avoids that.

    Args:
        network: the network; its last convolution/linear layer (see :func:`output_layer`) is the head.
        prior: foreground probability in (0, 1); ``None`` leaves the network unchanged (for softmax heads).

    Returns:
        ``network`` (so a bundle config can write ``$set_output_prior(@network_def, 0.01)``).
    """
    if prior is None:
        return network
    prior = float(prior)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"output prior must be in (0, 1), got {prior}")
    with torch.no_grad():
        cast(torch.Tensor, output_layer(network).bias).fill_(math.log(prior / (1.0 - prior)))
    return network
