"""Optimiser helpers."""

from __future__ import annotations

import torch

__all__ = ["param_groups"]


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
