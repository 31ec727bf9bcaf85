"""Depthwise convolution with a fast CPU backward.

PyTorch's CPU backward of a depthwise convolution (``groups == channels``) takes a slow
per-group path: for ConvNeXtV2-B at 384 px it is 15-40x the forward's time and about a
fifth of an HCMAE training step (measured with ``torch.profiler``:
``aten::convolution_backward`` 2.9 s of 15 s). Both gradients of a stride-1 depthwise
convolution are themselves depthwise convolutions, which run on the fast (oneDNN) forward
path:

* input gradient: the output gradient convolved with the spatially flipped kernel;
* kernel gradient: each channel's input correlated with its output gradient, computed as
  one grouped convolution over ``batch x channels`` groups whose "kernels" are the output
  gradients, then summed over the batch.

:func:`depthwise_conv2d` uses this on CPU for stride-1, undilated depthwise
``nn.Conv2d`` layers and falls back to the layer itself everywhere else (GPU, strided,
dilated, not depthwise), so results are the same up to float summation order.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["depthwise_conv2d", "is_fast_depthwise"]


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise ``conv2d`` whose backward runs as forward convolutions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        kh, kw = weight.shape[-2:]
        ph, pw = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=(kh - 1 - ph, kw - 1 - pw), groups=c)
            grad_x = grad_x.contiguous(memory_format=_memory_format(x))
        if ctx.needs_input_grad[1]:
            ho, wo = grad.shape[-2:]
            per_sample = F.conv2d(
                x.contiguous().reshape(1, b * c, h, w),
                grad.contiguous().reshape(b * c, 1, ho, wo),
                padding=(ph, pw),
                groups=b * c,
            )
            grad_w = per_sample.reshape(b, c, kh, kw).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def is_fast_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`depthwise_conv2d` takes the fast-backward path for ``conv`` on ``x``."""
    padding = conv.padding
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and conv.groups == conv.in_channels == conv.out_channels == x.shape[1]
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(padding, str)
        and all(0 <= p < k for p, k in zip(padding, conv.kernel_size))
    )


def depthwise_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise ``nn.Conv2d``, with the fast backward on CPU where it applies."""
    if not is_fast_depthwise(conv, x):
        return conv(x)
    return _DepthwiseConv2d.apply(x, conv.weight, conv.bias, tuple(conv.padding))
