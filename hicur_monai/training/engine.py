"""MONAI/Ignite engines for masked-image-model pretraining (HCMAE).

:class:`MaskedImageTrainer` is a :class:`monai.engines.SupervisedTrainer` whose iteration
asks the network for its own losses (``network(images, task="pretrain", generator=g)``),
steps the optimiser, and updates an EMA target when the network has one. Masks are drawn
from a generator seeded by ``(seed, iteration)``, so a run resumed from a checkpoint draws
the same masks it would have drawn without the interruption.

:class:`MaskedImageEvaluator` computes the same losses on held-out images with fixed
masks (seeded per batch), for a reconstruction-loss metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import CommonKeys as Keys

__all__ = ["MaskedImageTrainer", "MaskedImageEvaluator", "mask_generator", "unwrap", "output_value", "scalar_outputs"]

LOSS_KEYS = ("loss", "loss_mae", "loss_fcmae", "loss_contrastive")


def mask_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for the masks of one step, determined by ``(seed, step)`` only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP / DataParallel wrapper (or the module itself)."""
    return getattr(network, "module", network)


def _images(batchdata: Any, device: torch.device, non_blocking: bool) -> torch.Tensor:
    if batchdata is None:
        raise ValueError("no batch data for this iteration")
    img = batchdata[Keys.IMAGE] if isinstance(batchdata, dict) else batchdata[0]
    if hasattr(img, "as_tensor"):
        img = img.as_tensor()
    return img.to(device=device, non_blocking=non_blocking)


class MaskedImageTrainer(SupervisedTrainer):
    """Trainer for networks that compute their own self-supervised losses.

    Args:
        device, max_epochs, train_data_loader, network, optimizer: as
            :class:`~monai.engines.SupervisedTrainer`.
        seed: seed of the per-iteration mask generator.
        amp: bf16 autocast on CUDA (no grad scaler needed for bf16).
        total_iterations: iterations of the whole run for the EMA momentum schedule
            (default ``max_epochs * epoch_length``).
        grad_clip: clip the gradient norm to this value (``None``: no clipping).
        **kwargs: other :class:`~monai.engines.SupervisedTrainer` arguments (handlers, ...).

    The iteration output holds ``image`` and the scalar losses (``loss``, ``loss_mae``,
    ``loss_fcmae``, ``loss_contrastive``, ``ema_momentum``) as Python floats except ``loss``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seed: int = 0,
        amp: bool = False,
        total_iterations: int | None = None,
        grad_clip: float | None = None,
        train_handlers: Sequence | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=lambda *a: None,
            train_handlers=train_handlers,
            amp=False,
            **kwargs,
        )
        self.seed = int(seed)
        self.use_bf16 = bool(amp)
        self.total_iterations = total_iterations
        self.grad_clip = grad_clip

    def _progress(self, engine: Any) -> float:
        total = self.total_iterations or (engine.state.max_epochs or 1) * (engine.state.epoch_length or 1)
        return engine.state.iteration / max(1, total)

    def backward_step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, clip the gradients (``grad_clip``) and step the optimiser."""
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()

    def _iteration(self, engine: Any, batchdata: Any) -> dict:
        images = _images(batchdata, engine.state.device, engine.non_blocking)
        net = engine.network
        net.train()
        engine.optimizer.zero_grad(set_to_none=True)
        gen = mask_generator(self.seed, engine.state.iteration)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16 and images.is_cuda):
            out = net(images, task="pretrain", generator=gen)
        self.backward_step(out["loss"])
        update_target = getattr(unwrap(net), "update_target", None)
        momentum = update_target(self._progress(engine)) if update_target is not None else 1.0
        result = {Keys.IMAGE: images, Keys.LOSS: out["loss"].detach(), "ema_momentum": momentum}
        for k in LOSS_KEYS[1:]:
            result[k] = float(out[k])
        engine.state.output = result
        return result


class MaskedImageEvaluator(SupervisedEvaluator):
    """Evaluator of the self-supervised losses on held-out images with fixed (seeded) masks.

    The output of each iteration holds the scalar losses plus ``loss_recon``
    (``loss_mae + loss_fcmae``); attach ``ignite.metrics.Average`` on any of them.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        seed: int = 1234,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=torch.device(device) if isinstance(device, str) else device,
            val_data_loader=val_data_loader,
            network=network,
            amp=False,
            **kwargs,
        )
        self.seed = int(seed)
        self.use_bf16 = bool(amp)

    def _iteration(self, engine: Any, batchdata: Any) -> dict:
        images = _images(batchdata, engine.state.device, engine.non_blocking)
        engine.network.eval()
        gen = mask_generator(self.seed, engine.state.iteration)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16 and images.is_cuda):
            out = engine.network(images, task="pretrain", generator=gen)
        result: dict[str, Any] = {Keys.IMAGE: images, "n": images.shape[0]}
        for k in LOSS_KEYS:
            result[k] = float(out[k])
        result["loss_recon"] = result["loss_mae"] + result["loss_fcmae"]
        engine.state.output = result
        return result


def output_value(key: str) -> Callable[[dict], float]:
    """An ``output_transform`` picking one scalar from the iteration output (for metrics and loggers)."""

    def pick(output: dict) -> float:
        return float(output[key])

    return pick


def scalar_outputs(keys: Sequence[str] = LOSS_KEYS) -> Callable[[dict], dict[str, float]]:
    """An ``output_transform`` giving ``{key: float}`` for ``keys`` of the iteration output (for stats handlers)."""
    names = tuple(keys)

    def pick(output: dict) -> dict[str, float]:
        return {k: float(output[k]) for k in names}

    return pick
