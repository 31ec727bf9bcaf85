"""Opt-in CPU tuning for HCMAE pretraining (the bundle's ``configs/cpu_lean.json`` overlay).

Nothing here is on the default code path: it serves CPU runs of a model that trains on
GPUs, where it lowers peak memory (and speeds up the depthwise convolutions' backward).
Measured figures: ``benchmarks/results.md`` (## HCMAE); used with ``grad_checkpointing``.

* :func:`use_fast_depthwise`: swaps every stride-1 depthwise convolution for
  :class:`FastDepthwiseConv2d`, whose CPU backward runs as forward convolutions.
  PyTorch's CPU backward of a depthwise convolution takes a slow per-group path (15-40x
  its forward; ``aten::convolution_backward`` 2.9 s of a 15 s ConvNeXtV2-B step at 384 px).
  Both gradients of a stride-1 depthwise convolution are depthwise convolutions
  themselves: the input gradient with the flipped kernel; the kernel gradient as one
  grouped convolution over ``batch x channels`` groups whose kernels are the output
  gradients. Same values up to float summation order; off CPU the layer's own path runs.
* :class:`AdamWInBackward`: PyTorch's "optimizer step in backward" recipe (one AdamW per
  parameter stepped from ``register_post_accumulate_grad_hook``, then the gradient is
  freed): a full set of gradients (0.83 GB for HCMAE-Base) never exists. Not with global
  gradient clipping, gradient accumulation or DDP (:class:`LeanMaskedImageTrainer` refuses).
* :func:`limit_heap_retention` (``mallopt(M_MMAP_THRESHOLD)``), :func:`release_free_heap`
  (``malloc_trim(0)``), :func:`enable_huge_pages` (``THP_MEM_ALLOC_ENABLE``): glibc keeps
  freed tensor memory in its heap (0.3-0.7 GB between HCMAE-Base steps); a fixed mmap
  threshold returns large blocks on free, ``malloc_trim`` hands back the rest at chosen
  points, and transparent huge pages make the page faults of freshly mapped tensors 512x
  fewer.
* :class:`LeanMaskedImageTrainer`: :class:`~hicur_monai.training.engine.MaskedImageTrainer`
  that releases the heap between forward and backward and after the step, and refuses the
  combinations :class:`AdamWInBackward` cannot serve.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import resource
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from hicur_monai.training.engine import MaskedImageTrainer

__all__ = [
    "FastDepthwiseConv2d",
    "use_fast_depthwise",
    "AdamWInBackward",
    "limit_heap_retention",
    "release_free_heap",
    "enable_huge_pages",
    "rss_gb",
    "peak_rss_gb",
    "LeanMaskedImageTrainer",
]

log = logging.getLogger(__name__)

_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


# ----------------------------------------------------------------------------- depthwise convolution


class _DepthwiseConv2d(torch.autograd.Function):
    """Stride-1 depthwise ``conv2d`` whose backward runs as forward convolutions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        kh, kw = weight.shape[-2:]
        ph, pw = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=(kh - 1 - ph, kw - 1 - pw), groups=c)
            grad_x = grad_x.contiguous(memory_format=_memory_format(x))
        if ctx.needs_input_grad[1]:
            ho, wo = grad.shape[-2:]
            per_sample = F.conv2d(
                x.contiguous().reshape(1, b * c, h, w),
                grad.contiguous().reshape(b * c, 1, ho, wo),
                padding=(ph, pw),
                groups=b * c,
            )
            grad_w = per_sample.reshape(b, c, kh, kw).sum(0).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def is_fast_depthwise(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :class:`FastDepthwiseConv2d` takes the fast-backward path for ``conv`` on ``x``."""
    padding = conv.padding
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and conv.groups == conv.in_channels == conv.out_channels == x.shape[1]
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(padding, str)
        and all(0 <= p < k for p, k in zip(padding, conv.kernel_size))
    )


class FastDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose stride-1 depthwise CPU backward runs as forward convolutions (same parameters)."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> FastDepthwiseConv2d:
        """The same layer (same parameter objects) with the fast backward."""
        new = cls.__new__(cls)
        # the module's own tables (parameters, buffers, hooks) copied, the tensors in them shared
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in conv.__dict__.items()})
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_fast_depthwise(self, x):
            return super().forward(x)
        return _DepthwiseConv2d.apply(x, self.weight, self.bias, tuple(self.padding))


def use_fast_depthwise(module: nn.Module) -> nn.Module:
    """Replace every depthwise ``nn.Conv2d`` in ``module`` by :class:`FastDepthwiseConv2d` (in place; returns it).

    The parameters are the same objects, so state dicts and optimisers are unaffected.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and child.groups == child.in_channels == child.out_channels > 1:
                setattr(parent, name, FastDepthwiseConv2d.from_conv(child))
    return module


# ----------------------------------------------------------------------------- optimiser step inside backward


class AdamWInBackward(torch.optim.Optimizer):
    """AdamW stepped parameter by parameter during ``backward()``; gradients are freed at once.

    Args:
        params: parameters or parameter groups (as :class:`torch.optim.AdamW`; e.g.
            :func:`param_groups`).
        lr, betas, eps, weight_decay: AdamW hyper-parameters (group values override them).
        fused: use the fused AdamW kernel (CPU and CUDA in recent PyTorch); ``False`` uses
            the single-tensor loop (never the multi-tensor ``foreach`` path, whose
            temporaries cost memory).

    After construction, ``param_groups`` holds one group per parameter (each the
    ``param_groups[0]`` of that parameter's own AdamW, same dict object), so a scheduler
    that sets ``group["lr"]`` changes the LR used in the next backward. ``step()`` is
    cheap: it only updates parameters that still hold a gradient (none after a normal
    backward).

    Example:
        >>> net = torch.nn.Linear(4, 2)
        >>> opt = AdamWInBackward(net.parameters(), lr=1e-2)
        >>> net(torch.rand(3, 4)).sum().backward()  # parameters are updated here
        >>> net.weight.grad is None
        True
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        fused: bool = True,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self._subs: list[torch.optim.AdamW] = []
        self._handles: list[Any] = []
        groups = []
        for group in self.param_groups:
            opts = {k: v for k, v in group.items() if k in _ADAMW_KEYS}
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                sub = torch.optim.AdamW([p], fused=bool(fused), **opts)
                sub.state = self.state  # one state table: the wrapper's state_dict covers every parameter
                self._subs.append(sub)
                groups.append(sub.param_groups[0])
                self._handles.append(p.register_post_accumulate_grad_hook(self._make_hook(sub)))
        if not groups:
            raise ValueError("AdamWInBackward: no trainable parameters")
        self.param_groups = groups

    @staticmethod
    def _make_hook(sub: torch.optim.AdamW) -> Any:
        def hook(param: torch.Tensor) -> None:
            if param.grad is None:
                return
            sub.step()
            param.grad = None

        return hook

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Update parameters that still hold a gradient (not done in backward); returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # its backward already stepped through the hooks
        for sub in self._subs:
            p = sub.param_groups[0]["params"][0]
            if p.grad is not None:
                sub.step()
                p.grad = None
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as :class:`torch.optim.Optimizer` does, then re-link the per-parameter optimisers."""
        super().load_state_dict(state_dict)
        if len(self.param_groups) != len(self._subs):
            raise ValueError(
                f"AdamWInBackward.load_state_dict: {len(self.param_groups)} groups loaded, {len(self._subs)} parameters"
            )
        for sub, group in zip(self._subs, self.param_groups):
            sub.param_groups = [group]
            sub.state = self.state

    def remove_hooks(self) -> None:
        """Detach from the parameters (after this, backward no longer updates them)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ----------------------------------------------------------------------------- C heap and huge pages


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None


def limit_heap_retention(mmap_threshold: int | None = 256 * 1024) -> bool:
    """Make ``malloc`` map blocks above ``mmap_threshold`` bytes (and unmap them on free).

    Args:
        mmap_threshold: bytes; ``None`` or ``0`` leaves the C library's default alone.

    Returns:
        ``True`` when the setting was applied (glibc), ``False`` when nothing was done
        (other C libraries, or ``mmap_threshold`` unset).

    Raises:
        ValueError: ``mmap_threshold`` is negative or above glibc's maximum (32 MiB on 64-bit).
    """
    if not mmap_threshold:
        return False
    mmap_threshold = int(mmap_threshold)
    if not 0 < mmap_threshold <= 32 * 1024 * 1024:
        raise ValueError(f"mmap_threshold must be in (0, 32 MiB], got {mmap_threshold}")
    try:
        mallopt = _libc().mallopt
    except AttributeError:  # no C library found, or one without mallopt
        log.warning("limit_heap_retention: no glibc mallopt in this process; left the allocator alone")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1:
        log.warning("limit_heap_retention: mallopt(M_MMAP_THRESHOLD, %d) failed", mmap_threshold)
        return False
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return the malloc heap's free pages to the system (glibc ``malloc_trim(0)``).

    Unlike the mmap threshold this costs nothing per allocation: freed memory is reused
    from the heap as usual, and only at the call are the free pages handed back (a few
    milliseconds for a heap of a few GB).

    Returns:
        ``True`` when memory was released, ``False`` when none was or the C library has
        no ``malloc_trim``.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_HUGE_PAGE = 2 * 1024 * 1024


def _thp_mode() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), ``None`` when unknown."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def enable_huge_pages() -> bool:
    """Back PyTorch's large CPU tensors (2 MiB and more) with transparent huge pages.

    Sets ``THP_MEM_ALLOC_ENABLE=1``, which PyTorch's CPU allocator reads once, at its first
    allocation; so call this before any tensor exists (the bundle does it in
    ``initialize``), or set the variable in the environment before starting Python. The
    result is checked with a 4 MiB probe tensor, which PyTorch aligns to a page only when
    the setting is in effect (otherwise to 64 bytes).

    Returns:
        ``True`` when large tensors now get huge pages; ``False`` (with a warning naming the
        cause) when the kernel has them switched off, or PyTorch read its setting before this
        call.
    """
    mode = _thp_mode()
    if mode == "never":
        log.warning("enable_huge_pages: transparent huge pages are off in this kernel (%s: never)", THP_SETTING)
        return False
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    import torch  # the setting has to be in place before torch's first allocation

    probe = torch.empty(2 * _HUGE_PAGE + 64, dtype=torch.uint8)
    if probe.data_ptr() % os.sysconf("SC_PAGE_SIZE"):
        log.warning(
            "enable_huge_pages: PyTorch allocated tensors before this call and kept its earlier setting; "
            "start the process with THP_MEM_ALLOC_ENABLE=1 in the environment instead"
        )
        return False
    return True


def rss_gb() -> float:
    """Current resident set size of this process in GB (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except OSError:
        return 0.0


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far in GB (``getrusage``; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ----------------------------------------------------------------------------- trainer


class LeanMaskedImageTrainer(MaskedImageTrainer):
    """:class:`~hicur_monai.training.engine.MaskedImageTrainer` that returns freed heap memory each step.

    Calls :func:`release_free_heap` between forward and backward and after the optimiser
    step. With :class:`AdamWInBackward` it refuses ``grad_clip`` (the gradients never
    exist together) and DDP/DataParallel (the step would use the local, not yet reduced,
    gradients).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.optimizer, AdamWInBackward):
            if self.grad_clip:
                raise ValueError("grad_clip needs all gradients at once; AdamWInBackward steps inside backward")
            if isinstance(self.network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
                raise ValueError(
                    "AdamWInBackward would update on the local, not yet all-reduced gradients under "
                    "DDP/DataParallel: use a plain AdamW there"
                )

    def backward_step(self, loss: torch.Tensor) -> None:
        release_free_heap()  # the forward's freed temporaries, before backward's peak
        super().backward_step(loss)
        release_free_heap()
