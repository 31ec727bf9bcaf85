"""CPU thread count of a run, as bundle configs set it."""

from __future__ import annotations

__all__ = ["set_cpu_threads"]


def set_cpu_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given; ``0`` / ``None`` keep PyTorch's default."""
    if n:
        import torch

        torch.set_num_threads(int(n))
