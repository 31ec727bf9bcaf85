"""Optimiser helpers: AdamW parameter groups (MAE's weight-decay split) and a fused AdamW for bundle configs.

The CPU variant that steps inside backward is
:class:`hicur_monai.training.cpu_lean.AdamWInBackward` (opt-in).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["param_groups", "adamw"]


def param_groups(network: torch.nn.Module, weight_decay: float = 0.05) -> list[dict]:
    """Trainable parameters in two AdamW groups: weight decay on weights, none on biases, norms and tokens (as MAE)."""
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    if not decay and not no_decay:
        raise ValueError("param_groups: the network has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """:class:`torch.optim.AdamW` for a bundle config.

    ``fused`` asks for the fused kernel (no ``foreach`` temporaries); where the plain AdamW
    cannot fuse (old PyTorch, unsupported device), it falls back to the single-tensor loop.
    """
    kw: dict[str, Any] = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
    groups: list[Any] = list(params)  # parameters or parameter groups, iterated twice on the fallback
    try:
        return torch.optim.AdamW(groups, fused=fused, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=False, **kw)
