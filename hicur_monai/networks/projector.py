"""Vision-to-language projectors (LLaVA's ``linear`` and ``mlp{N}x_gelu``).

Example:
    >>> proj = build_projector("mlp2x_gelu", 768, 576)
    >>> [type(m).__name__ for m in proj]
    ['Linear', 'GELU', 'Linear']
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["build_projector", "PROJECTOR_KINDS"]

PROJECTOR_KINDS = ("linear", "mlp2x_gelu", "mlp<N>x_gelu")


def build_projector(kind: str, d_vision: int, d_llm: int) -> nn.Module:
    """A projector from vision-token width ``d_vision`` to LLM embedding width ``d_llm``.

    Args:
        kind: ``"linear"`` (one ``Linear``) or ``"mlp<N>x_gelu"`` (``Linear(d_vision, d_llm)``,
            then ``N - 1`` times ``GELU, Linear(d_llm, d_llm)``; ``mlp2x_gelu`` is the original's).
        d_vision: vision token width (768 for ViT-B).
        d_llm: the LLM's hidden size.

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "linear":
        return nn.Linear(d_vision, d_llm)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector {kind!r}; expected one of {PROJECTOR_KINDS}")
    layers: list[nn.Module] = [nn.Linear(d_vision, d_llm)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(d_llm, d_llm)]
    return nn.Sequential(*layers)
