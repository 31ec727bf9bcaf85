"""Activation checkpointing for block stacks: full, or selective (save matmul outputs only).

Full checkpointing keeps only each block's input and re-runs the whole block in
backward: the least memory, for one extra forward pass. *Selective* checkpointing
(PyTorch's selective activation checkpointing, ``create_selective_checkpoint_contexts``)
keeps the outputs of the expensive operators (matrix products, convolutions, attention)
and recomputes only the cheap per-element ones (LayerNorm, GELU, GRN, residual adds,
gathers) in backward. The per-element operators are where most of a block's saved
tensors come from (each saves one or two tensors of the 4x-expanded MLP width), so
selective checkpointing keeps most of the memory saving at a fraction of the cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

__all__ = [
    "CHECKPOINT_MODES",
    "canonical_checkpoint_mode",
    "checkpoint_modes",
    "SAVED_OPS",
    "save_compute_policy",
    "checkpoint_call",
]

CHECKPOINT_MODES = ("full", "selective")


def checkpoint_modes(value: Any, parts: tuple[str, ...]) -> dict[str, str | None] | str | None:
    """A config's checkpointing setting: one mode for every part, or a mode per named part.

    Args:
        value: a mode (see :func:`canonical_checkpoint_mode`) or a mapping ``{part: mode}``;
            parts a mapping leaves out are not checkpointed.
        parts: the names a mapping may use.

    Returns:
        ``None``, ``"full"``, ``"selective"``, or ``{part: mode}`` for every name in ``parts``.

    Raises:
        ValueError: an unknown part or mode.
    """
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(parts))
        if unknown:
            raise ValueError(f"grad_checkpointing names unknown parts {unknown}; known: {list(parts)}")
        modes = {part: canonical_checkpoint_mode(value.get(part)) for part in parts}
        distinct = set(modes.values())
        return distinct.pop() if len(distinct) == 1 else modes
    return canonical_checkpoint_mode(value)


def canonical_checkpoint_mode(value: bool | str | None) -> str | None:
    """``None`` (off), ``"full"`` or ``"selective"`` from a config value.

    ``True`` means ``"full"``; ``False``, ``None``, ``"off"`` and ``"none"`` mean off.

    Raises:
        ValueError: any other value.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "full"
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("off", "none", "false", ""):
            return None
        if v in ("true",):
            return "full"
        if v in CHECKPOINT_MODES:
            return v
    raise ValueError(f"grad_checkpointing must be a bool or one of {('off',) + CHECKPOINT_MODES}, got {value!r}")


def _ops(names: Iterable[str]) -> frozenset[Any]:
    aten, found = torch.ops.aten, []
    for name in names:
        packet = getattr(aten, name, None)  # some attention kernels exist only in some builds
        if packet is not None:
            found.append(packet.default)
    return frozenset(found)


SAVED_OPS = _ops(
    (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "convolution",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
)
"""Operators whose outputs selective checkpointing keeps (the FLOP-heavy ones)."""


def save_compute_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """Selective-checkpointing policy: save :data:`SAVED_OPS` outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SELECTIVE_CONTEXTS = functools.partial(create_selective_checkpoint_contexts, save_compute_policy)


def checkpoint_call(fn: Callable[..., torch.Tensor], *args: Any, mode: str | None) -> torch.Tensor:
    """``fn(*args)`` under activation checkpointing ``mode`` (``None``: a plain call).

    Non-reentrant checkpointing (keyword arguments and inputs without gradients work);
    ``"selective"`` adds :func:`save_compute_policy`. Outside autograd (``torch.no_grad``,
    inference) the call is plain whatever the mode.
    """
    if mode is None or not torch.is_grad_enabled():
        return fn(*args)
    if mode == "selective":
        return checkpoint(fn, *args, use_reentrant=False, context_fn=_SELECTIVE_CONTEXTS)
    return checkpoint(fn, *args, use_reentrant=False)
