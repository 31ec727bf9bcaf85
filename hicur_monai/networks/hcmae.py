"""HCMAE: the hybrid masked autoencoder of HiCur-NPC stage I (ViT-MAE + ConvNeXtV2-FCMAE).

Two branches see the same image, each with its own random mask, and are trained jointly:

* **ViT-MAE** on a timm :class:`~timm.models.vision_transformer.VisionTransformer`: 75% of
  the patches are dropped and the encoder runs on the kept 25% only (MAE's real saving);
  fixed 2D sin-cos positions are added to the encoder tokens (the released code never
  did; ``encoder_pos_embed=False`` reproduces that defect); a small transformer decoder
  (timm blocks, scaled-dot-product attention) predicts the pixels of the dropped patches.
* **ConvNeXtV2-FCMAE** on a timm :class:`~timm.models.convnext.ConvNeXt` with GRN:
  32-px mask cells, ratio 0.6. With ``fcmae_sparse=True`` the encoder follows FCMAE's
  sparse-convolution semantics: features exist only on visible cells; the depthwise 7x7
  convolutions run densely over a tensor that is zero on masked cells (cheap: ~5% of the
  FLOPs), while every per-pixel operation (LayerNorm, the 4x MLP with GRN, ~95% of the
  FLOPs) is computed on the visible pixels only. Mask cells are aligned with the network's
  total stride, so stem and downsampling layers never mix visible and masked cells and
  the result equals a dense "mask after every op" emulation exactly (tested).
  ``fcmae_sparse=False`` is the released behaviour: the masked image goes densely
  through the whole network (masking saves nothing).
* **Contrastive tie** (``contrastive_mode``):
  ``"released"``: InfoNCE (T=0.5, weight 0.1) between the two branches' reconstructed
  images; ``"cmae"``: an EMA target ViT on the full, pixel-shifted image, projector
  (D-1536-256) + predictor on both branches, InfoNCE T=0.07, weight 1; ``"none"``.

``HCMAE(images)`` returns global features (ViT CLS ++ ConvNeXt pooled) so the network
fits MONAI's bundle tools; ``HCMAE(images, task="pretrain")`` returns the loss dict used
for training. The two encoders export as plain timm state dicts with a JSON config
(:meth:`HCMAE.export_encoders`, :func:`load_encoder`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from hicur_monai.networks.pos_embed import sincos_2d_pos_embed
from hicur_monai.registry import NETWORKS
from hicur_monai.transforms.array import MODEL_INPUT_MEAN, MODEL_INPUT_STD
from hicur_monai.utils.flags import as_flag
from hicur_monai.utils.io import atomic_save_torch, atomic_write_json

__all__ = [
    "HCMAEConfig",
    "HCMAE",
    "HCMAE_PRESETS",
    "CONTRASTIVE_MODES",
    "info_nce",
    "patchify",
    "unpatchify",
    "random_keep_mask",
    "pixel_shift",
    "load_encoder",
]

CONTRASTIVE_MODES = ("released", "cmae", "none")
#: named size presets; ``base`` is the paper's configuration
HCMAE_PRESETS: dict[str, dict[str, Any]] = {
    "base": {},
    "tiny": {
        "img_size": 64,
        "patch_size": 16,
        "vit_embed_dim": 64,
        "vit_depth": 2,
        "vit_num_heads": 2,
        "decoder_embed_dim": 64,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
        "convnext_depths": (1, 1, 1, 1),
        "convnext_dims": (16, 32, 64, 128),
        "fcmae_decoder_dim": 64,
        "proj_hidden_dim": 128,
        "proj_dim": 32,
        "max_shift": 8,
    },
}


@dataclass
class HCMAEConfig:
    """Configuration of :class:`HCMAE` (defaults: the paper's ViT-B/16-384 + ConvNeXtV2-B).

    Attributes:
        img_size: square input size in pixels.
        in_chans: input channels (3: grey modalities are made RGB by the transforms).
        patch_size, vit_embed_dim, vit_depth, vit_num_heads: the ViT encoder.
        vit_mask_ratio: fraction of ViT patches dropped.
        encoder_pos_embed: add fixed sin-cos positions to the encoder tokens (``False``
            reproduces the released code's defect).
        decoder_embed_dim, decoder_depth, decoder_num_heads: the MAE decoder (4 x 768 x 3 heads).
        norm_pix_loss: regress per-patch normalised pixels (MAE's option) for both branches.
        convnext_depths, convnext_dims: the ConvNeXtV2 encoder (Base: 3,3,27,3 / 128..1024).
        convnext_mask_ratio: fraction of ConvNeXt mask cells dropped.
        mask_cell: ConvNeXt mask cell size in pixels; must equal the encoder's stride (32).
        fcmae_decoder_dim: width of the FCMAE decoder (1x1 proj, one ConvNeXtV2 block, 1x1 pred).
        fcmae_sparse: compute per-pixel ops on visible cells only (``False``: released dense path).
        contrastive_mode: ``released`` | ``cmae`` | ``none``.
        contrastive_weight, temperature: ``None`` takes the mode's default (0.1/0.5 released, 1/0.07 cmae).
        proj_hidden_dim, proj_dim: CMAE projector / predictor sizes (768-1536-256).
        ema_momentum_start, ema_momentum: cosine schedule of the EMA target momentum (cmae).
        max_shift: largest pixel shift of the CMAE positive view.
        grad_checkpointing: activation checkpointing per block (timm's ``checkpoint_seq``) in
            both encoders and the MAE decoder while training: ~0.16 GB instead of ~2.3 GB of
            saved activations for Base at 384 px, batch 2, for one extra forward pass.
            :meth:`HCMAE.set_grad_checkpointing` switches it after construction.
        drop_path_rate: stochastic depth in both encoders.

    The ViT branch runs before the ConvNeXt branch (the order of the released code's loss,
    ``L_mae + L_fcmae``), so the ViT mask is drawn first from the generator.
    """

    img_size: int = 384
    in_chans: int = 3
    patch_size: int = 16
    vit_embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    vit_mask_ratio: float = 0.75
    encoder_pos_embed: bool = True
    decoder_embed_dim: int = 768
    decoder_depth: int = 4
    decoder_num_heads: int = 3
    norm_pix_loss: bool = False
    convnext_depths: tuple[int, ...] = (3, 3, 27, 3)
    convnext_dims: tuple[int, ...] = (128, 256, 512, 1024)
    convnext_mask_ratio: float = 0.6
    mask_cell: int = 32
    fcmae_decoder_dim: int = 512
    fcmae_sparse: bool = True
    contrastive_mode: str = "released"
    contrastive_weight: float | None = None
    temperature: float | None = None
    proj_hidden_dim: int = 1536
    proj_dim: int = 256
    ema_momentum_start: float = 0.99
    ema_momentum: float = 0.996
    max_shift: int = 32
    grad_checkpointing: bool = False
    drop_path_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.convnext_depths = tuple(int(d) for d in self.convnext_depths)
        self.convnext_dims = tuple(int(d) for d in self.convnext_dims)
        # per-part and selective modes were removed: true checkpoints every block of both encoders and the decoder
        self.grad_checkpointing = as_flag(self.grad_checkpointing, "grad_checkpointing")
        if self.contrastive_mode not in CONTRASTIVE_MODES:
            raise ValueError(f"contrastive_mode must be one of {CONTRASTIVE_MODES}, got {self.contrastive_mode!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if len(self.convnext_depths) != 4 or len(self.convnext_dims) != 4:
            raise ValueError("convnext_depths and convnext_dims need 4 stages each")
        if self.mask_cell != 32:
            raise ValueError(f"mask_cell must equal the ConvNeXt stride 32 (FCMAE), got {self.mask_cell}")
        if self.img_size % self.mask_cell:
            raise ValueError(f"img_size {self.img_size} is not a multiple of mask_cell {self.mask_cell}")
        for name in ("vit_mask_ratio", "convnext_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.contrastive_weight is None:
            self.contrastive_weight = 1.0 if self.contrastive_mode == "cmae" else 0.1
        if self.temperature is None:
            self.temperature = 0.07 if self.contrastive_mode == "cmae" else 0.5
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_preset(cls, preset: str = "base", **overrides: Any) -> HCMAEConfig:
        """Config of a named preset (:data:`HCMAE_PRESETS`) with ``overrides`` applied."""
        if preset not in HCMAE_PRESETS:
            raise ValueError(f"unknown HCMAE preset {preset!r}; known: {sorted(HCMAE_PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise TypeError(f"unknown HCMAE config fields {bad}; known: {sorted(known)}")
        return cls(**{**HCMAE_PRESETS[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["convnext_depths"], d["convnext_dims"] = list(self.convnext_depths), list(self.convnext_dims)
        return d


# ----------------------------------------------------------------------------- helpers


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, L, p*p*C)`` with patches in row-major order."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int, c: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for an ``h x w`` pixel image."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h, w)


def random_keep_mask(
    batch: int, length: int, mask_ratio: float, generator: torch.Generator | None = None, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """MAE-style per-sample random masking with the same number kept in every sample.

    Returns:
        ``ids_shuffle`` (B, L) (kept indices first), ``mask`` (B, L) with 1 = masked, and
        the number kept.
    """
    len_keep = max(1, int(round(length * (1.0 - mask_ratio))))
    noise = torch.rand(batch, length, generator=generator).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, length, device=device)
    mask[:, :len_keep] = 0
    return ids_shuffle, torch.gather(mask, 1, ids_restore), len_keep


def pixel_shift(imgs: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """CMAE's pixel-shifted view: each image moved by up to ``max_shift`` px (reflect padding)."""
    if max_shift <= 0:
        return imgs
    b, _, h, w = imgs.shape
    pad = F.pad(imgs, (max_shift,) * 4, mode="reflect")
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).tolist()
    return torch.stack([pad[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives between rows of ``a`` and ``b`` (flattened, L2-normalised)."""
    a = F.normalize(a.flatten(1).float(), dim=1)
    b = F.normalize(b.flatten(1).float(), dim=1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), target))
    return loss


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))


# ----------------------------------------------------------------------------- the model


@NETWORKS.add_def("hcmae", "HCMAE hybrid masked autoencoder (timm ViT-MAE + ConvNeXtV2-FCMAE, contrastive tie)")
class HCMAE(nn.Module):
    """Hybrid masked autoencoder (see the module docstring).

    Args:
        config: a :class:`HCMAEConfig`; when ``None`` it is built from ``preset`` and ``kwargs``.
        preset: ``"base"`` (paper size) or ``"tiny"`` (tests, CPU demos).
        **kwargs: :class:`HCMAEConfig` fields overriding the preset.

    Example:
        >>> net = HCMAE(preset="tiny")
        >>> out = net(torch.rand(2, 3, 64, 64), task="pretrain")
        >>> sorted(k for k in out if k.startswith("loss"))
        ['loss', 'loss_contrastive', 'loss_fcmae', 'loss_mae']
    """

    def __init__(self, config: HCMAEConfig | Mapping[str, Any] | None = None, preset: str = "base", **kwargs: Any):
        super().__init__()
        if config is None:
            config = HCMAEConfig.from_preset(preset, **kwargs)
        elif isinstance(config, Mapping):
            config = HCMAEConfig(**{**dict(config), **kwargs})
        self.config = cfg = config
        self.grid = cfg.img_size // cfg.patch_size
        self.cell_grid = cfg.img_size // cfg.mask_cell

        # ViT-MAE encoder: a plain timm ViT whose positional table holds fixed sin-cos values
        self.vit = VisionTransformer(**self.vit_kwargs())
        pos = sincos_2d_pos_embed(cfg.vit_embed_dim, self.grid, self.grid, cls_token=True)[None]
        with torch.no_grad():
            self.vit.pos_embed.copy_(pos if cfg.encoder_pos_embed else torch.zeros_like(pos))
        self.vit.pos_embed.requires_grad_(False)
        # MAE decoder
        dd = cfg.decoder_embed_dim
        self.decoder_embed = nn.Linear(cfg.vit_embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos", sincos_2d_pos_embed(dd, self.grid, self.grid, cls_token=True)[None], False)
        self.decoder_blocks = nn.Sequential(
            *[Block(dd, cfg.decoder_num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size**2 * cfg.in_chans)

        # ConvNeXtV2-FCMAE
        self.convnext = ConvNeXt(**self.convnext_kwargs())
        for blk in (b for stage in self.convnext.stages for b in stage.blocks if cfg.fcmae_sparse):
            if not isinstance(blk.shortcut, nn.Identity):  # the sparse path adds the residual on visible pixels
                raise ValueError(f"sparse FCMAE needs identity shortcuts inside a stage, got {blk.shortcut}")
        fd = cfg.fcmae_decoder_dim
        self.fc_proj = nn.Conv2d(cfg.convnext_dims[-1], fd, kernel_size=1)
        self.fc_mask_token = nn.Parameter(torch.zeros(1, fd, 1, 1))
        self.fc_decoder = ConvNeXtBlock(fd, use_grn=True, ls_init_value=None, conv_mlp=False)
        self.fc_pred = nn.Conv2d(fd, cfg.mask_cell**2 * cfg.in_chans, kernel_size=1)

        # CMAE heads and EMA target
        if cfg.contrastive_mode == "cmae":
            self.proj_vit = _mlp(cfg.vit_embed_dim, cfg.proj_hidden_dim, cfg.proj_dim)
            self.pred_vit = _mlp(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
            self.proj_cnx = _mlp(cfg.convnext_dims[-1], cfg.proj_hidden_dim, cfg.proj_dim)
            self.pred_cnx = _mlp(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.fc_mask_token, std=0.02)
        if cfg.contrastive_mode == "cmae":
            self.target_vit = copy.deepcopy(self.vit).requires_grad_(False)
            self.target_proj = copy.deepcopy(self.proj_vit).requires_grad_(False)
        self.convnext.to(memory_format=torch.channels_last)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    # ------------------------------------------------------------------ sub-model configs

    def vit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the timm ViT encoder (also written with the export)."""
        c = self.config
        return {
            "img_size": c.img_size,
            "patch_size": c.patch_size,
            "in_chans": c.in_chans,
            "embed_dim": c.vit_embed_dim,
            "depth": c.vit_depth,
            "num_heads": c.vit_num_heads,
            "num_classes": 0,
            "drop_path_rate": c.drop_path_rate,
        }

    def convnext_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the timm ConvNeXtV2 encoder (GRN, no layer scale)."""
        c = self.config
        return {
            "in_chans": c.in_chans,
            "depths": list(c.convnext_depths),
            "dims": list(c.convnext_dims),
            "use_grn": True,
            "ls_init_value": None,
            "conv_mlp": False,
            "num_classes": 0,
            "drop_path_rate": c.drop_path_rate,
        }

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`extract_features`' concatenated output."""
        return self.config.vit_embed_dim + self.config.convnext_dims[-1]

    # ------------------------------------------------------------------ ViT-MAE

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block of both encoders and the MAE decoder while training (as timm's models)."""
        self.config.grad_checkpointing = bool(enable)
        self.vit.set_grad_checkpointing(enable)
        self.convnext.set_grad_checkpointing(enable)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether blocks are checkpointed in this call: the flag, in training mode, with autograd on."""
        return self.config.grad_checkpointing and self.training and torch.is_grad_enabled()

    def _blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Run a block stack (``checkpoint_seq`` when :attr:`grad_checkpointing`)."""
        return checkpoint_seq(blocks, x, use_reentrant=False) if self.grad_checkpointing else blocks(x)

    def vit_encode_masked(
        self, imgs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the kept patches. Returns ``(latent (B, 1+K, D), mask (B, L), ids_restore)``."""
        vit = self.vit
        x = vit.patch_embed(imgs) + vit.pos_embed[:, 1:]
        b, length, d = x.shape
        ids_shuffle, mask, keep = random_keep_mask(b, length, self.config.vit_mask_ratio, generator, x.device)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        x = vit.norm_pre(torch.cat([cls, x], dim=1))
        x = vit.norm(self._blocks(vit.blocks, x))
        return x, mask, torch.argsort(ids_shuffle, dim=1)

    def vit_decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """MAE decoder: predictions for every patch, ``(B, L, p*p*C)``."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, length + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos
        x = self.decoder_norm(self._blocks(self.decoder_blocks, x))
        return self.decoder_pred(x)[:, 1:]

    def vit_encode(self, imgs: torch.Tensor, vit: VisionTransformer | None = None) -> torch.Tensor:
        """Full-image ViT tokens ``(B, 1+L, D)`` (no masking)."""
        return (vit or self.vit).forward_features(imgs)

    # ------------------------------------------------------------------ ConvNeXt-FCMAE

    def convnext_mask(self, batch: int, generator: torch.Generator | None = None, device: Any = None) -> torch.Tensor:
        """Random cell mask ``(B, cells)`` with 1 = masked."""
        return random_keep_mask(batch, self.cell_grid**2, self.config.convnext_mask_ratio, generator, device)[1]

    @staticmethod
    def _densify(v: torch.Tensor, gidx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Visible pixels ``v`` (B, N, C) at ``gidx`` -> a (B, C, h, w) map, zero elsewhere (channels_last memory)."""
        b, _, c = v.shape
        return v.new_zeros(b, h * w, c).scatter(1, gidx, v).reshape(b, h, w, c).permute(0, 3, 1, 2)

    @staticmethod
    def _sparse_block(blk: ConvNeXtBlock, v: torch.Tensor, gidx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """One ConvNeXtV2 block on the visible pixels only (FCMAE's sparse-convolution semantics).

        Args:
            blk: the block (identity shortcut).
            v: features of the visible pixels ``(B, N, C)``; masked pixels are zero by definition.
            gidx: their positions in the row-major ``h x w`` map, expanded over channels ``(B, N, C)``.

        Returns:
            the block's output at the same pixels ``(B, N, C)``. Only the depthwise convolution
            sees the dense map (zeros on masked pixels); every per-pixel operator runs on ``N``.
        """
        b, _, c = v.shape
        x = HCMAE._densify(v, gidx, h, w)
        y = blk.conv_dw(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        z = blk.norm(torch.gather(y, 1, gidx))
        mlp = blk.mlp
        z = mlp.drop1(mlp.act(mlp.fc1(z)))
        grn = mlp.grn
        # L2 norm over the visible pixels (equals the dense norm with zeros elsewhere), as sqrt(sum of squares):
        # half the time of Tensor.norm over a strided dimension; the clamp keeps the gradient of an
        # all-zero channel at 0 (as norm's) instead of 0 * inf
        g = z.square().sum(dim=1, keepdim=True).clamp_min(1e-30).sqrt()
        n = g / (g.mean(dim=-1, keepdim=True) + grn.eps)
        # GRN: z + bias + weight * (z * n), as one pass over the 4x-wide tensor: z * (1 + weight * n) + bias
        z = torch.addcmul(grn.bias.view(1, 1, -1), z, grn.weight.view(1, 1, -1) * n + 1.0)
        z = mlp.drop2(mlp.fc2(z))
        if blk.gamma is not None:
            z = z * blk.gamma
        return blk.drop_path(z) + v

    def convnext_encode_masked(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ConvNeXt features ``(B, C, cells, cells)`` of the masked image (zero on masked cells when sparse).

        Sparse (FCMAE): within a stage the features are carried as the visible pixels only
        (``(B, N, C)``, so activation checkpoints hold 40% of a dense map); the dense map is
        rebuilt for each depthwise convolution and at the stage's end for the downsampling.
        """
        enc, g = self.convnext, self.cell_grid
        imgs = imgs.contiguous(memory_format=torch.channels_last)
        visible = (1.0 - mask).reshape(-1, 1, g, g).to(imgs.dtype)
        if not self.config.fcmae_sparse:  # released: dense network over the masked image
            pix = F.interpolate(visible, scale_factor=self.config.mask_cell, mode="nearest")
            return enc.forward_features(imgs * pix)
        ckpt = self.grad_checkpointing
        v, prev = imgs, None
        for i, stage in enumerate(enc.stages):
            size = (imgs.shape[-2] // 4 >> i, imgs.shape[-1] // 4 >> i)  # stem stride 4, then 2 per stage
            idx = self._visible_index(visible, size)
            gidx = idx[..., None].expand(-1, -1, self.config.convnext_dims[i])
            # the stage transition (stem or densify + downsampling, then the visible pixels) is
            # checkpointed too: its dense maps would otherwise be held for backward
            args = (self._stage_input, stage, v, prev, gidx, size)
            v = checkpoint(*args, use_reentrant=False) if ckpt else self._stage_input(*args[1:])
            for blk in stage.blocks:
                args = (self._sparse_block, blk, v, gidx, *size)
                v = checkpoint(*args, use_reentrant=False) if ckpt else self._sparse_block(*args[1:])
            prev = (gidx, *size)
        return self._densify(v, *prev)

    @staticmethod
    def _visible_index(visible: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Row-major positions ``(B, N)`` of the visible pixels of an ``size`` map (same ``N`` for every image)."""
        keep = F.interpolate(visible, size=size, mode="nearest") if visible.shape[-2:] != size else visible
        flat = keep.flatten(1)
        n_vis = int(flat[0].sum().item())
        return torch.argsort(flat, dim=1, descending=True, stable=True)[:, :n_vis]

    def _stage_input(
        self,
        stage: nn.Module,
        inp: torch.Tensor,
        prev: tuple[torch.Tensor, int, int] | None,
        gidx: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Visible pixels ``(B, N, C)`` entering ``stage``: from the image (stem) or the previous stage's pixels."""
        x = self.convnext.stem(inp) if prev is None else self._densify(inp, *prev)
        x = stage.downsample(x)
        b, c, h, w = x.shape
        if (h, w) != tuple(size):
            raise ValueError(f"ConvNeXt stage input is {h}x{w}, expected {size[0]}x{size[1]} for the FCMAE mask")
        return torch.gather(x.permute(0, 2, 3, 1).reshape(b, h * w, c), 1, gidx)

    def fcmae_decode(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """FCMAE decoder: predictions for every cell, ``(B, cells, cell*cell*C)``."""
        x = self.fc_proj(feats)
        m = mask.reshape(-1, 1, self.cell_grid, self.cell_grid).to(x.dtype)
        x = x * (1.0 - m) + self.fc_mask_token.to(x.dtype) * m
        x = self.fc_pred(self.fc_decoder(x))
        return x.flatten(2).transpose(1, 2)

    def convnext_pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Global pooled + normalised ConvNeXt features ``(B, C)`` (timm head, pre-logits)."""
        return self.convnext.forward_head(feats, pre_logits=True)

    # ------------------------------------------------------------------ CMAE target

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        """EMA update of the CMAE target after an optimiser step; returns the momentum used.

        ``progress`` in [0, 1] drives the cosine schedule from ``ema_momentum_start`` to
        ``ema_momentum``. A no-op (returns 1.0) in the other contrastive modes.
        """
        if self.config.contrastive_mode != "cmae":
            return 1.0
        c = self.config
        p = min(max(float(progress), 0.0), 1.0)
        m = c.ema_momentum - (c.ema_momentum - c.ema_momentum_start) * (math.cos(math.pi * p) + 1) / 2
        for online, target in ((self.vit, self.target_vit), (self.proj_vit, self.target_proj)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1.0 - m)
        return m

    # ------------------------------------------------------------------ forward

    def _vit_branch(
        self, imgs: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ViT-MAE branch of :meth:`pretrain_losses`: ``(latent, mask, prediction, loss)``."""
        latent, vit_mask, ids_restore = self.vit_encode_masked(imgs, generator)
        vit_pred = self.vit_decode(latent, ids_restore)
        cfg = self.config
        loss = _masked_mse(vit_pred, patchify(imgs, cfg.patch_size), vit_mask, cfg.norm_pix_loss)
        return latent, vit_mask, vit_pred, loss

    def pretrain_losses(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All losses and predictions for one batch of ``(B, C, H, W)`` images.

        The ViT branch runs first (the order of the released code's loss).

        Returns:
            ``loss`` (total), ``loss_mae``, ``loss_fcmae``, ``loss_contrastive`` and the
            predictions/masks ``vit_pred`` (B, L, p*p*C), ``vit_mask``, ``cnx_pred``, ``cnx_mask``.
        """
        cfg = self.config
        if imgs.ndim != 4 or imgs.shape[1] != cfg.in_chans or imgs.shape[-2:] != (cfg.img_size, cfg.img_size):
            raise ValueError(
                f"HCMAE expects images (B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}), got {tuple(imgs.shape)}"
            )

        latent, vit_mask, vit_pred, loss_mae = self._vit_branch(imgs, generator)
        cnx_mask = self.convnext_mask(imgs.shape[0], generator, imgs.device)
        feats = self.convnext_encode_masked(imgs, cnx_mask)
        cnx_pred = self.fcmae_decode(feats, cnx_mask)
        loss_fcmae = _masked_mse(cnx_pred, patchify(imgs, cfg.mask_cell), cnx_mask, cfg.norm_pix_loss)

        if cfg.contrastive_mode == "released":
            h = w = cfg.img_size
            loss_c = info_nce(
                unpatchify(vit_pred, cfg.patch_size, h, w, cfg.in_chans),
                unpatchify(cnx_pred, cfg.mask_cell, h, w, cfg.in_chans),
                cfg.temperature,
            )
        elif cfg.contrastive_mode == "cmae":
            z_vit = self.pred_vit(self.proj_vit(latent[:, 1:].mean(dim=1)))
            vis = (1.0 - cnx_mask).reshape(feats.shape[0], 1, *feats.shape[-2:]).to(feats.dtype)
            pooled = (feats * vis).sum(dim=(2, 3)) / vis.sum(dim=(2, 3)).clamp_min(1.0)
            z_cnx = self.pred_cnx(self.proj_cnx(pooled))
            with torch.no_grad():
                shifted = pixel_shift(imgs, cfg.max_shift, generator)
                t = self.target_proj(self.vit_encode(shifted, self.target_vit)[:, 1:].mean(dim=1))
            loss_c = 0.5 * sum(info_nce(z, t, cfg.temperature, symmetric=False) for z in (z_vit, z_cnx))
        else:
            loss_c = imgs.new_zeros(())
        loss = loss_mae + loss_fcmae + cfg.contrastive_weight * loss_c
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"HCMAE loss is not finite (mae={float(loss_mae)}, fcmae={float(loss_fcmae)}, "
                f"contrastive={float(loss_c)})"
            )
        return {
            "loss": loss,
            "loss_mae": loss_mae.detach(),
            "loss_fcmae": loss_fcmae.detach(),
            "loss_contrastive": loss_c.detach(),
            "vit_pred": vit_pred,
            "vit_mask": vit_mask,
            "cnx_pred": cnx_pred,
            "cnx_mask": cnx_mask,
        }

    def extract_features(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen-encoder features of full images.

        Returns:
            ``vit_cls`` (B, D): the ViT CLS token (what the alignment stage uses);
            ``vit_mean`` (B, D): the mean of the ViT patch tokens (MAE's CLS gets no direct
            training signal, so probes often prefer this); ``convnext_pool`` (B, C).
        """
        tokens = self.vit_encode(imgs)
        vit_cls = self.vit.forward_head(tokens, pre_logits=True)
        feats = self.convnext.forward_features(imgs.contiguous(memory_format=torch.channels_last))
        return {"vit_cls": vit_cls, "vit_mean": tokens[:, 1:].mean(dim=1), "convnext_pool": self.convnext_pool(feats)}

    def forward(
        self, imgs: torch.Tensor, task: str = "features", generator: torch.Generator | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """``task="features"``: ``(B, D_vit + C_convnext)`` global features; ``"pretrain"``: the loss dict."""
        if task == "pretrain":
            return self.pretrain_losses(imgs, generator)
        if task == "features":
            f = self.extract_features(imgs)
            return torch.cat([f["vit_cls"], f["convnext_pool"]], dim=1)
        raise ValueError(f"unknown HCMAE task {task!r}; use 'features' or 'pretrain'")

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Images for a figure: masked inputs and reconstructions of both branches (visible parts pasted back)."""
        cfg = self.config
        out = self.pretrain_losses(imgs, generator)
        h = w = cfg.img_size
        result = {}
        for name, p, pred, mask in (
            ("vit", cfg.patch_size, out["vit_pred"], out["vit_mask"]),
            ("convnext", cfg.mask_cell, out["cnx_pred"], out["cnx_mask"]),
        ):
            target = patchify(imgs, p)
            if cfg.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
                mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
                pred = pred * (var + 1e-6) ** 0.5 + mean
            m = mask[..., None]
            result[f"{name}_masked"] = unpatchify(target * (1 - m), p, h, w, cfg.in_chans)
            result[f"{name}_recon"] = unpatchify(target * (1 - m) + pred * m, p, h, w, cfg.in_chans)
        return result

    # ------------------------------------------------------------------ export

    def export_encoders(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``vit_encoder.pt`` / ``convnext_encoder.pt`` (plain timm state dicts) with JSON configs beside them."""
        out = Path(out_dir)
        paths = {}
        for name, module, cls, kwargs in (
            ("vit_encoder", self.vit, "timm.models.vision_transformer.VisionTransformer", self.vit_kwargs()),
            ("convnext_encoder", self.convnext, "timm.models.convnext.ConvNeXt", self.convnext_kwargs()),
        ):
            state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            paths[name] = atomic_save_torch(state, out / f"{name}.pt")
            meta = {
                "class": cls,
                "kwargs": kwargs,
                "img_size": self.config.img_size,
                "encoder_pos_embed": self.config.encoder_pos_embed,
                "normalisation": {"mean": list(MODEL_INPUT_MEAN), "std": list(MODEL_INPUT_STD)},
                "source": "hicur_monai.networks.hcmae.HCMAE",
            }
            atomic_write_json(out / f"{name}.json", meta)
        return paths


_ENCODER_CLASSES = ("timm.models.vision_transformer.VisionTransformer", "timm.models.convnext.ConvNeXt")


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Build and load an encoder exported by :meth:`HCMAE.export_encoders` (``x.pt`` + ``x.json``).

    Raises:
        FileNotFoundError: the weights or the JSON config is missing.
        ValueError: the JSON names a class that is not one of the exported encoders.
    """
    p = Path(path)
    meta_path = p.with_suffix(".json")
    for f in (p, meta_path):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: encoder file missing (expected {p.name} and {meta_path.name})")
    meta = json.loads(meta_path.read_text())
    cls_path = meta.get("class")
    if cls_path not in _ENCODER_CLASSES:
        raise ValueError(f"{meta_path}: 'class' must be one of {_ENCODER_CLASSES}, got {cls_path!r}")
    mod, name = cls_path.rsplit(".", 1)
    model = getattr(importlib.import_module(mod), name)(**meta["kwargs"])
    state = torch.load(p, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model
