"""Fixed 2D sine-cosine positional embeddings (as in MAE, He et al. 2022)."""

from __future__ import annotations

import torch

__all__ = ["sincos_2d_pos_embed"]


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_pos_embed(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """2D sin-cos position table of shape ``(grid_h * grid_w [+1], dim)``, row-major over the grid.

    Half the channels encode the row, half the column. With ``cls_token`` a zero row is
    prepended for the class token.

    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2D positional embedding needs dim divisible by 4, got {dim}")
    gh, gw = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, gh), _sincos_1d(dim // 2, gw)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb
