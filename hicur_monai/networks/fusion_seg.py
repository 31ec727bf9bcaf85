"""Fusion U-Net of HiCur-NPC stage III: ConvNeXt(V2) features cross-attending to coarse LLM states.

The network of the original system (``../shared/reference/hicur-released-code-facts.md``):

* **Encoder**: a timm :class:`~timm.models.convnext.ConvNeXt` (V2: GRN, no layer scale), the
  HCMAE ConvNeXt branch (weights from ``HCMAE.export_encoders``, read by
  :func:`hicur_monai.networks.hcmae.load_encoder`), giving 4 stages at strides 4-32, plus a
  convolutional stem at stride 2: **5 feature scales**.
* **Fusion** at each scale (:class:`FusionBlock`): the feature map becomes tokens;
  cross-attention (queries = image tokens, keys/values = the coarse text/LLM states, 4 heads),
  then self-attention, then an FFN (or a mixture-of-experts FFN, top-2 of 8, behind
  ``moe=True``, off by default as in the original), each pre-norm and residual; the tokens go
  back onto the feature map.
* **Decoder**: a U-Net decoder of MONAI :class:`~monai.networks.blocks.UnetrUpBlock` (transposed-conv
  upsampling, skip concatenation, residual conv block) from stride 32 to stride 2, then a
  transposed convolution to full resolution and a 1x1 head to ``out_channels`` logits
  (1 = binary tumour).

The trained network carries its configuration: ``state_dict()`` holds an ``_extra_state`` entry
with the :class:`FusionSegConfig` (and, when the encoder came from ``encoder_weights``, that
file's path, SHA-256 and timm constructor arguments). :func:`load_trained_network` builds the
network a checkpoint was trained as (so evaluating a ``tiny`` model under a ``base`` command line
works instead of failing with size mismatches), and loading warns
(:func:`hicur_monai.utils.checksum.check_recorded_checksum`) when the encoder file has changed
since training.

``forward(images, text_states=None, text_mask=None)``: without text states the
cross-attention is skipped (image-only path; used by shape checks such as ``verify_net_in_out``).

Self-attention costs ``O(tokens^2)``: at 256 px the stride-2 scale has 16,384 tokens, which
a GPU handles with PyTorch's memory-efficient attention kernels; ``fusion_scales`` chooses
which scales get a fusion block (all five by default; the ``tiny`` preset fuses the three
coarsest, for CPU tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetrUpBlock
from timm.models.convnext import ConvNeXt
from torch import nn

from hicur_monai.networks.init import set_output_prior
from hicur_monai.registry import NETWORKS
from hicur_monai.utils.checksum import check_recorded_checksum, sha256_file

__all__ = [
    "FUSION_PRESETS",
    "FusionSegConfig",
    "FusionSegNet",
    "FusionBlock",
    "MultiHeadAttention",
    "MoEFeedForward",
    "load_trained_network",
    "trained_input_size",
]

log = logging.getLogger(__name__)

#: config fields that do not change the network's shapes (not compared when loading a checkpoint)
_NON_STRUCTURAL = ("encoder_weights", "drop_path_rate", "output_prior", "extra")
#: what the encoder file is, in the checksum warning
_ENCODER_WHAT = "the HCMAE ConvNeXt encoder (encoder_weights) this segmentation model was trained from"

#: size presets; ``base`` is the original (ConvNeXtV2-Base encoder)
FUSION_PRESETS: dict[str, dict[str, Any]] = {
    "base": {},
    "tiny": {
        "depths": (1, 1, 1, 1),
        "dims": (16, 32, 64, 128),
        "stem_dim": 8,
        "text_dim": 64,
        "fusion_scales": (2, 3, 4),
        "ffn_ratio": 2.0,
    },
}


@dataclass
class FusionSegConfig:
    """Configuration of :class:`FusionSegNet` (defaults: the original, ConvNeXtV2-Base, 5 fused scales).

    Attributes:
        in_chans: image channels (3: the shared ``rgb_256`` pipeline repeats grey MRI).
        out_channels: logit channels (1: binary tumour; K for K classes).
        depths, dims: ConvNeXt stages (ignored when ``encoder_weights`` is given: the exported
            encoder's own configuration is used).
        stem_dim: channels of the stride-2 stem (the 5th scale) and of the last decoder stage.
        text_dim: width of the coarse states (the LLM's hidden size, or the stand-in encoder's).
        num_heads: heads of both attentions in each fusion block.
        ffn_ratio: FFN hidden width / channels.
        fusion_scales: indices (0 = stride 2 ... 4 = stride 32) of the scales with a fusion block.
        moe: use a mixture-of-experts FFN (top-k of n experts) instead of the plain FFN.
        moe_experts, moe_top_k: the MoE size.
        encoder_weights: ``convnext_encoder.pt`` from ``HCMAE.export_encoders`` (``None``: random init).
        norm_name: MONAI norm of the decoder blocks (``"batch"`` for small inputs: at 64 px the stride-32
            map is 2x2, too few pixels for instance statistics).
        output_prior: initial foreground probability of the (sigmoid) head, see
            :func:`hicur_monai.networks.init.set_output_prior`; ``None`` for a softmax head.
        drop_path_rate: stochastic depth of the ConvNeXt encoder.
    """

    in_chans: int = 3
    out_channels: int = 1
    depths: tuple[int, ...] = (3, 3, 27, 3)
    dims: tuple[int, ...] = (128, 256, 512, 1024)
    stem_dim: int = 64
    text_dim: int = 4096
    num_heads: int = 4
    ffn_ratio: float = 4.0
    fusion_scales: tuple[int, ...] = (0, 1, 2, 3, 4)
    moe: bool = False
    moe_experts: int = 8
    moe_top_k: int = 2
    encoder_weights: str | None = None
    norm_name: str = "instance"
    output_prior: float | None = 0.01
    drop_path_rate: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.dims = tuple(int(d) for d in self.dims)
        self.fusion_scales = tuple(sorted({int(s) for s in self.fusion_scales}))
        if len(self.depths) != 4 or len(self.dims) != 4:
            raise ValueError(f"depths and dims need 4 ConvNeXt stages each, got {self.depths} / {self.dims}")
        if any(s < 0 or s > 4 for s in self.fusion_scales):
            raise ValueError(f"fusion_scales must be in 0..4 (stride 2..32), got {self.fusion_scales}")
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {self.out_channels}")
        if self.moe and not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"moe_top_k must be in 1..moe_experts ({self.moe_experts}), got {self.moe_top_k}")

    @classmethod
    def from_preset(cls, preset: str = "base", **overrides: Any) -> FusionSegConfig:
        """The named preset with ``overrides`` applied (``None`` values are ignored)."""
        if preset not in FUSION_PRESETS:
            raise ValueError(f"unknown fusion preset {preset!r}; known: {sorted(FUSION_PRESETS)}")
        kw = dict(FUSION_PRESETS[preset])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(kw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"FusionSegConfig: unknown options {sorted(unknown)}")
        return cls(**kw)


class MultiHeadAttention(nn.Module):
    """Multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention` (memory-efficient kernels).

    Args:
        dim: query width (and output width).
        num_heads: heads; ``dim`` must be divisible by it.
        kv_dim: key/value input width (default ``dim``).
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, N, C) attends to ``context`` (B, L, Ck) (``x`` itself when ``None``); ``mask`` (B, L)
        True = keep."""
        b, n, c = x.shape
        ctx = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class MoEFeedForward(nn.Module):
    """Mixture-of-experts FFN: a linear router picks the top-k of n expert MLPs per token.

    The router weights of the chosen experts are renormalised (softmax over the top-k logits).
    ``aux_loss`` holds the Switch-Transformer load-balancing term of the last forward
    (``n * sum(fraction routed * mean router probability)``), for the trainer to add if wanted.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 8, top_k: int = 2) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(_mlp(dim, hidden) for _ in range(num_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat)
        top_val, top_idx = logits.topk(self.top_k, dim=-1)
        weights = top_val.softmax(dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_idx == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        probs = logits.softmax(dim=-1)
        frac = F.one_hot(top_idx[:, 0], probs.shape[-1]).float().mean(0)
        self.aux_loss = probs.shape[-1] * (frac * probs.mean(0)).sum()
        return out.view(shape)


class FusionBlock(nn.Module):
    """Cross-attention to the coarse states, self-attention, FFN (or MoE); pre-norm, residual.

    Args:
        dim: channels of the feature map.
        text_dim: width of the coarse states.
        num_heads: attention heads.
        ffn_ratio: FFN hidden width / ``dim``.
        moe, moe_experts, moe_top_k: mixture-of-experts FFN.
    """

    def __init__(
        self, dim: int, text_dim: int, num_heads: int = 4, ffn_ratio: float = 4.0,
        moe: bool = False, moe_experts: int = 8, moe_top_k: int = 2,
    ) -> None:
        super().__init__()
        self.text_norm = nn.LayerNorm(text_dim)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = MultiHeadAttention(dim, num_heads, kv_dim=text_dim)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * ffn_ratio)
        self.ffn = MoEFeedForward(dim, hidden, moe_experts, moe_top_k) if moe else _mlp(dim, hidden)
        # the block starts as the identity on the feature map (zero-initialised output projections)
        for proj in (self.cross.proj, self.self_attn.proj):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, feat: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``feat`` (B, C, H, W), ``text`` (B, L, D) or ``None`` (cross-attention skipped)."""
        b, c, h, w = feat.shape
        x = feat.flatten(2).transpose(1, 2)
        if text is not None:
            x = x + self.cross(self.norm_cross(x), self.text_norm(text.to(x.dtype)), text_mask)
        x = x + self.self_attn(self.norm_self(x))
        x = x + self.ffn(self.norm_ffn(x))
        return x.transpose(1, 2).reshape(b, c, h, w)


@NETWORKS.add_def("fusion_seg", "HiCur-NPC fusion U-Net: ConvNeXtV2 features cross-attending to coarse LLM states")
class FusionSegNet(nn.Module):
    """The stage-III fusion U-Net (see the module docstring).

    Args:
        preset: ``"base"`` (original) or ``"tiny"`` (tests, CPU demos).
        config: a full :class:`FusionSegConfig` (``preset`` and keywords are then ignored).
        **overrides: fields of :class:`FusionSegConfig`.

    Example:
        >>> net = FusionSegNet(preset="tiny")
        >>> states, mask = torch.randn(2, 7, 64), torch.ones(2, 7, dtype=torch.bool)
        >>> net(torch.randn(2, 3, 64, 64), states, mask).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        preset: str = "base",
        config: FusionSegConfig | None = None,
        encoder_source: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        cfg = config or FusionSegConfig.from_preset(preset, **overrides)
        self.config = cfg
        #: where the encoder came from: ``{"path", "sha256", "kwargs"}`` (``None``: random init)
        self.encoder_source = encoder_source
        if cfg.encoder_weights:
            self.encoder = self._load_encoder(os.fspath(cfg.encoder_weights))
        elif encoder_source:  # the structure of a recorded encoder, weights from the checkpoint
            self.encoder = ConvNeXt(**encoder_source["kwargs"])
        else:
            self.encoder = ConvNeXt(
                in_chans=cfg.in_chans, depths=tuple(cfg.depths), dims=tuple(cfg.dims), use_grn=True,
                ls_init_value=None, conv_mlp=False, num_classes=0, drop_path_rate=cfg.drop_path_rate,
            )
        dims = [int(cast(int, info["num_chs"])) for info in self.encoder.feature_info]
        self.scale_dims = (cfg.stem_dim, *dims)
        self.stem2 = UnetResBlock(2, cfg.in_chans, cfg.stem_dim, kernel_size=3, stride=2, norm_name=cfg.norm_name)
        self.fusion = nn.ModuleDict({
            str(s): FusionBlock(self.scale_dims[s], cfg.text_dim, cfg.num_heads, cfg.ffn_ratio,
                                cfg.moe, cfg.moe_experts, cfg.moe_top_k)
            for s in cfg.fusion_scales
        })
        ups = []
        for s in range(4, 0, -1):  # stride 32 -> 16 -> 8 -> 4 -> 2
            ups.append(UnetrUpBlock(2, self.scale_dims[s], self.scale_dims[s - 1], kernel_size=3,
                                    upsample_kernel_size=2, norm_name=cfg.norm_name, res_block=True))
        self.decoder = nn.ModuleList(ups)
        # stride 2 -> 1: a transposed convolution, then the 1x1 head (no convolution block at full resolution)
        self.final_up = nn.ConvTranspose2d(cfg.stem_dim, cfg.stem_dim, kernel_size=2, stride=2)
        self.head = UnetOutBlock(2, cfg.stem_dim, cfg.out_channels)
        set_output_prior(self.head, cfg.output_prior)

    def _load_encoder(self, path: str) -> ConvNeXt:
        """The HCMAE ConvNeXt at ``path``, its checksum and constructor arguments recorded in ``encoder_source``."""
        from hicur_monai.networks.hcmae import load_encoder

        encoder = load_encoder(path)
        if not isinstance(encoder, ConvNeXt):
            raise ValueError(f"{path}: not a ConvNeXt encoder ({type(encoder).__name__})")
        if int(cast(nn.Conv2d, encoder.stem[0]).in_channels) != self.config.in_chans:
            raise ValueError(f"{path}: encoder takes {encoder.stem[0].in_channels} channels, "
                             f"config in_chans={self.config.in_chans}")
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        self.encoder_source = {"path": os.path.abspath(path), "sha256": sha256_file(path), "kwargs": meta["kwargs"]}
        return encoder

    def get_extra_state(self) -> dict[str, Any]:
        """The configuration and encoder provenance saved with the weights (``_extra_state``)."""
        config = dataclasses.asdict(self.config)
        config.update(depths=list(config["depths"]), dims=list(config["dims"]),
                      fusion_scales=list(config["fusion_scales"]))
        return {"format": 1, "config": config, "encoder_source": self.encoder_source}

    def set_extra_state(self, state: Any) -> None:
        """Check a checkpoint's recorded configuration against this network; warn when the encoder file changed.

        Raises:
            ValueError: the checkpoint was trained with a different network shape (names the fields).
        """
        if not isinstance(state, dict) or "config" not in state:
            return
        mine, theirs = self.get_extra_state()["config"], state["config"]
        differ = sorted(k for k in set(mine) | set(theirs)
                        if k not in _NON_STRUCTURAL and mine.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, network {mine.get(k)!r}" for k in differ)
            raise ValueError(f"FusionSegNet: the checkpoint was trained with another configuration ({detail}); "
                             "build the network with hicur_monai.networks.fusion_seg.load_trained_network")
        source = state.get("encoder_source") or {}
        check_recorded_checksum(source.get("path"), source.get("sha256"), _ENCODER_WHAT)
        if source:  # the weights now come from the checkpoint: so does their provenance
            self.encoder_source = dict(source)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints saved before the configuration was recorded have no ``_extra_state``: still load them
        state_dict.setdefault(prefix + "_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FusionSegNet:
        """The network a saved state dict was trained as (its ``_extra_state`` configuration), weights loaded."""
        extra = state.get("_extra_state")
        if not isinstance(extra, dict) or "config" not in extra:
            raise ValueError("this checkpoint records no FusionSegNet configuration (saved before the configuration "
                             "was recorded): build the network with the options it was trained with")
        fields = {f.name for f in dataclasses.fields(FusionSegConfig)}
        config = FusionSegConfig(**{k: v for k, v in extra["config"].items() if k in fields and k != "encoder_weights"})
        net = cls(config=config, encoder_source=extra.get("encoder_source"))
        net.load_state_dict(state)
        return net

    @property
    def moe_aux_loss(self) -> torch.Tensor:
        """Sum of the MoE load-balancing terms of the last forward (0 without MoE)."""
        terms = [m.aux_loss for m in self.modules() if isinstance(m, MoEFeedForward)]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 5 encoder scales (strides 2, 4, 8, 16, 32), before fusion."""
        feats = [self.stem2(x)]
        h = self.encoder.stem(x)
        for stage in self.encoder.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(
        self, x: torch.Tensor, text_states: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, out_channels, H, W)`` of images ``(B, in_chans, H, W)`` (H, W divisible by 32).

        Args:
            x: normalised images.
            text_states: coarse states ``(B, L, text_dim)`` (or ``(1, L, text_dim)``, broadcast); ``None``
                skips the cross-attention.
            text_mask: ``(B, L)`` True for real (not padding) tokens; ``None``: all real.
        """
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"FusionSegNet: image size {tuple(x.shape[-2:])} must be divisible by 32")
        if text_states is not None:
            if text_states.ndim != 3 or text_states.shape[-1] != self.config.text_dim:
                raise ValueError(f"text_states must be (B, L, {self.config.text_dim}), got {tuple(text_states.shape)}")
            if text_states.shape[0] == 1 and x.shape[0] > 1:
                text_states = text_states.expand(x.shape[0], -1, -1)
                text_mask = None if text_mask is None else text_mask.expand(x.shape[0], -1)
        feats = self.encode(x)
        for key, block in self.fusion.items():
            s = int(key)
            feats[s] = block(feats[s], text_states, text_mask)
        h = feats[4]
        for i, up in enumerate(self.decoder):
            h = up(h, feats[3 - i])
        return self.head(F.gelu(self.final_up(h)))

    def parameter_count(self) -> dict[str, int]:
        """Parameters of the encoder, the fusion blocks, and the rest (stem, decoder, head)."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        fus = sum(p.numel() for p in self.fusion.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"encoder": enc, "fusion": fus, "other": total - enc - fus, "total": total}



def _network_state(path: str | os.PathLike, map_location: str | torch.device) -> dict[str, Any]:
    """The network's state dict in a ``model.pt`` (plain) or a resumable ``last.pt`` (under ``network``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a network checkpoint (a state dict, or one under 'network')")
    return state


def load_trained_network(
    path: str | os.PathLike, network: nn.Module, device: str | torch.device | None = None
) -> nn.Module:
    """``network`` with the weights of the checkpoint at ``path``; rebuilt as the checkpoint's own network if it
    differs.

    A :class:`FusionSegNet` checkpoint records its configuration: when it differs from ``network``'s
    (a ``tiny`` demo model evaluated under the ``base`` defaults), the network is built from the
    checkpoint's configuration instead, and the differing fields are logged. Other networks
    (the MONAI UNet baseline) load the weights into ``network`` as it is.

    Args:
        path: ``model.pt`` (or a resumable ``last.pt``).
        network: the network the command line describes.
        device: where to put the result (default: where ``network`` is).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no trained model; train first (bundles/npc_segmentation/configs/train.json) "
                                "or pass --ckpt_path")
    device = device or next(network.parameters()).device
    state = _network_state(path, "cpu")
    extra = state.get("_extra_state")
    if isinstance(network, FusionSegNet) and isinstance(extra, dict) and "config" in extra:
        mine = network.get_extra_state()["config"]
        differ = {k: v for k, v in extra["config"].items() if k not in _NON_STRUCTURAL and mine.get(k) != v}
        if differ:
            log.info("%s: building the network the checkpoint was trained as (%s)", path,
                     ", ".join(f"{k}={v!r}" for k, v in sorted(differ.items())))
            return FusionSegNet.from_state(state).to(device)
    network.load_state_dict(state)
    return network.to(device)


def trained_input_size(network: nn.Module, default: int) -> int:
    """The input size a network was trained at (``config.extra['img_size']`` of a :class:`FusionSegNet`), else
    ``default``."""
    config = getattr(network, "config", None)
    size = getattr(config, "extra", {}).get("img_size") if config is not None else None
    return int(size) if size else int(default)
