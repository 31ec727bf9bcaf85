"""Prognosis networks: the DeepSurv MLP, the authors' binary image+text head, a text encoder.

* :class:`DeepSurvNet`: the DeepSurv risk network (Katzman et al. 2018): MLP with SELU and
  dropout to one log relative hazard per patient.
* :class:`SliceTextPrognosisNet`: the released model's prognosis head, kept as a baseline:
  up to 32 per-slice feature vectors (a frozen encoder's pooled output per MRI slice), a CLS
  token and learned positions, two transformer layers whose cross-attention attends to the
  text embedding of a patient description, an MLP to two binary logits (death, distant
  metastasis).
* :class:`HashedBagOfWordsEncoder`: a deterministic, offline text encoder (each word hashed
  to a fixed random vector, plus a position code), registered in ``TEXT_ENCODERS`` as
  ``"hashed_bow"`` behind the generic interface ``encode(texts) -> (states (B, L, D), mask (B, L))``.
  It stands in until the LLM plugin's text states are available; any encoder with the
  same interface can replace it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hicur_monai.registry import NETWORKS, TEXT_ENCODERS

__all__ = [
    "DeepSurvNet",
    "pool_slice_features",
    "SliceTextPrognosisConfig",
    "SliceTextPrognosisNet",
    "HashedBagOfWordsEncoder",
    "TextEncoder",
]


@NETWORKS.add_def("deepsurv_mlp", "DeepSurv risk MLP (SELU, dropout) -> one log relative hazard")
class DeepSurvNet(nn.Module):
    """MLP ``in -> hidden... -> 1`` with SELU activations and dropout (DeepSurv).

    Args:
        in_features: number of (standardised) covariates.
        hidden: widths of the hidden layers.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (32, 32), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            lin = nn.Linear(width, h)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="linear")  # LeCun-normal-like scale for SELU
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.SELU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1, bias=False)  # a bias is not identifiable in a Cox model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log relative hazard, shape ``(B,)``."""
        return self.out(self.body(x)).squeeze(-1)


# --------------------------------------------------------------------------- text encoders
class TextEncoder:
    """Interface of a text encoder: ``encode(texts) -> (states (B, L, D) float, mask (B, L) bool)``."""

    dim: int

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


@TEXT_ENCODERS.add_def("hashed_bow", "deterministic offline word-hashing encoder (no weights, no network)")
class HashedBagOfWordsEncoder(TextEncoder):
    """Each lower-cased word becomes a fixed pseudo-random unit vector (seeded by its hash).

    Deterministic across processes and machines (SHA-256 of the word, not Python's ``hash``),
    needs no weights. A sinusoidal position code is added so word order is not lost.

    Args:
        dim: embedding size.
        max_tokens: words kept per text (longer texts are truncated).
        position_scale: weight of the sinusoidal position code.
    """

    def __init__(self, dim: int = 64, max_tokens: int = 64, position_scale: float = 0.1):
        self.dim = int(dim)
        self.max_tokens = int(max_tokens)
        self.position_scale = float(position_scale)
        self._cache: dict[str, torch.Tensor] = {}

    def _word(self, word: str) -> torch.Tensor:
        vec = self._cache.get(word)
        if vec is None:
            seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            vec = torch.randn(self.dim, generator=g)
            vec = vec / vec.norm()
            self._cache[word] = vec
        return vec

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``(B, L, dim)`` and a padding mask ``(B, L)`` (True = real token)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of texts, not one string")
        tokens = [re.findall(r"[\w.+<>-]+", str(t).lower())[: self.max_tokens] or ["<empty>"] for t in texts]
        length = max(len(t) for t in tokens)
        states = torch.zeros(len(tokens), length, self.dim)
        mask = torch.zeros(len(tokens), length, dtype=torch.bool)
        pos = torch.arange(length, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float32) * (-math.log(10000.0) / self.dim))
        pe = torch.zeros(length, self.dim)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)[:, : self.dim // 2]
        for i, toks in enumerate(tokens):
            for j, w in enumerate(toks):
                states[i, j] = self._word(w) + self.position_scale * pe[j]
            mask[i, : len(toks)] = True
        return states, mask


# --------------------------------------------------------------------------- binary baseline
@dataclass
class SliceTextPrognosisConfig:
    """Configuration of :class:`SliceTextPrognosisNet` (the released prognosis head).

    Attributes:
        feature_dim: size of the per-slice feature from the frozen image encoder.
        text_dim: size of the text encoder's states.
        d_model: transformer width.
        n_heads: attention heads.
        n_layers: transformer layers (self-attention over slices, cross-attention to text).
        max_slices: maximum slices per patient (positions learned up to this number).
        dropout: dropout in the transformer and head.
        n_outputs: binary outputs (death, distant metastasis).
    """

    feature_dim: int = 768
    text_dim: int = 576
    d_model: int = 256
    n_heads: int = 8
    n_layers: int = 2
    max_slices: int = 32
    dropout: float = 0.1
    n_outputs: int = 2


@NETWORKS.add_def("slice_text_prognosis",
                  "released HiCur prognosis head: slices + CLS -> 2 transformer layers x text -> 2 logits")
class SliceTextPrognosisNet(nn.Module):
    """Slice features + CLS + learned positions, transformer layers cross-attending to text.

    ``forward(slices (B, S, F), slice_mask (B, S), text (B, L, T), text_mask (B, L))`` returns
    ``(B, n_outputs)`` logits (death, distant metastasis), trained with binary cross-entropy.
    """

    def __init__(self, config: SliceTextPrognosisConfig | None = None, **kwargs: Any):
        super().__init__()
        cfg = config or SliceTextPrognosisConfig(**kwargs)
        self.config = cfg
        self.slice_proj = nn.Linear(cfg.feature_dim, cfg.d_model)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_slices + 1, cfg.d_model))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.n_heads, dim_feedforward=4 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.n_layers)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.d_model, cfg.n_outputs))

    def forward(self, slices: torch.Tensor, slice_mask: torch.Tensor | None, text: torch.Tensor,
                text_mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = slices.shape
        if s > self.config.max_slices:
            raise ValueError(f"{s} slices given; this network takes at most {self.config.max_slices}")
        x = torch.cat([self.cls.expand(b, -1, -1), self.slice_proj(slices)], dim=1) + self.pos[:, : s + 1]
        pad = None
        if slice_mask is not None:
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=x.device), ~slice_mask.bool()], dim=1)
        mem_pad = None if text_mask is None else ~text_mask.bool()
        x = self.layers(x, self.text_proj(text), tgt_key_padding_mask=pad, memory_key_padding_mask=mem_pad)
        return self.head(self.norm(x[:, 0]))


def pool_slice_features(features: torch.Tensor) -> torch.Tensor:
    """Pool an encoder's per-slice token map to one vector per slice.

    ``(S, C, H, W)`` feature maps -> ``(S, C)`` by global average; ``(S, N, C)`` token
    sequences -> ``(S, C)`` by token mean; ``(S, C)`` is returned as is.
    """
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 2:
        return features
    raise ValueError(f"cannot pool features of shape {tuple(features.shape)}")


