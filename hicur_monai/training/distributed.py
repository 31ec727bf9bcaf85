"""Distributed-training glue the ``multi_gpu_train.json`` overlays wire in: the backend and device come
from the machine (``nccl`` + the process's GPU when CUDA is there, else ``gloo`` + CPU), so the same
overlay runs under ``torchrun`` on a GPU node and with two gloo processes on a laptop or in CI.

Everything here is a thin layer over :mod:`torch.distributed`; there is no home-made cluster code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "default_backend",
    "summary_writer",
    "local_device",
    "init_distributed",
    "destroy_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "ddp",
    "rank_zero_handlers",
]


def default_backend() -> str:
    """``"nccl"`` when CUDA and NCCL are available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` in the environment).

    Sets the CUDA device of this process first when there is one. Does nothing when the group
    exists already.

    Returns:
        True when running distributed after the call.

    Raises:
        RuntimeError: not launched by ``torchrun`` (no ``WORLD_SIZE`` / ``RANK`` in the environment).
    """
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise RuntimeError("multi_gpu_train.json runs under torchrun (WORLD_SIZE and RANK are not set): "
                           "torchrun --nproc_per_node N -m monai.bundle run --config_file \"['...train.json',"
                           "'...multi_gpu_train.json']\"")
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend or default_backend())
    return True


def destroy_distributed() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files."""
    return get_rank() == 0


def ddp(module: torch.nn.Module, device: torch.device | str | None = None, **kwargs: Any
        ) -> torch.nn.parallel.DistributedDataParallel:
    """Move ``module`` to ``device`` and wrap it in :class:`~torch.nn.parallel.DistributedDataParallel`.

    ``device_ids`` is given for a CUDA device only (DDP takes none on the CPU).
    """
    dev = torch.device(device) if device is not None else local_device()
    module = module.to(dev)
    ids = [dev] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)


def rank_zero_handlers(handlers: Sequence[Any], shared: int) -> list[Any]:
    """All ``handlers`` on rank 0; on the other ranks only the first ``shared`` ones.

    The bundles list the handlers every rank must run first (resume, LR schedule, and the
    validation when it runs collectives), then the ones that write files (checkpoints, logs,
    figures, exports, progress), which only rank 0 runs.
    """
    return list(handlers) if is_main_process() else list(handlers)[: int(shared)]


class _NullWriter:
    """A TensorBoard ``SummaryWriter`` stand-in that writes nothing (the non-main processes')."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def summary_writer(log_dir: str) -> Any:
    """A TensorBoard ``SummaryWriter`` on the main process; a no-op stand-in on the others."""
    if not is_main_process():
        return _NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)


