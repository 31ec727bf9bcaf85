"""HCMAE's one activation-checkpointing flag (timm style): same gradients, forward re-run in backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hicur_monai.networks.hcmae import HCMAE

_HEAVY = {getattr(torch.ops.aten, n).default for n in ("mm", "addmm", "bmm", "convolution")}


class _CountHeavyOps(TorchDispatchMode):
    """Counts matrix products and convolutions (re-run by checkpointing in backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HEAVY:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _step(enable: bool):
    torch.manual_seed(0)
    net = HCMAE(preset="tiny", grad_checkpointing=enable, drop_path_rate=0.1).train()
    imgs = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # drop-path draws: recomputation must replay them
    loss = net(imgs, task="pretrain", generator=torch.Generator().manual_seed(2))["loss"]
    counter = _CountHeavyOps()
    with counter:
        loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, counter.calls


def test_checkpointing_gives_the_same_gradients_and_recomputes_the_forward():
    loss0, grads0, calls0 = _step(False)
    loss, grads, calls = _step(True)
    assert loss == pytest.approx(loss0, abs=0)
    assert grads.keys() == grads0.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, grads0[name], rtol=1e-5, atol=1e-6, msg=name)
    assert calls > calls0  # the blocks' forward ran again in backward


def test_set_grad_checkpointing_switches_the_model_and_its_timm_encoders():
    net = HCMAE(preset="tiny").train()
    assert not net.grad_checkpointing and not net.vit.grad_checkpointing
    net.set_grad_checkpointing()
    assert net.config.grad_checkpointing and net.vit.grad_checkpointing
    assert all(stage.grad_checkpointing for stage in net.convnext.stages)
    assert net.grad_checkpointing
    net.eval()
    assert not net.grad_checkpointing  # only while training
    net.train().set_grad_checkpointing(False)
    assert not net.grad_checkpointing and not net.vit.grad_checkpointing


@pytest.mark.parametrize("value", ["full", "selective", {"vit": "full"}, None])
def test_grad_checkpointing_is_a_bool(value):
    with pytest.raises(ValueError, match="grad_checkpointing must be true or false"):
        HCMAE(preset="tiny", grad_checkpointing=value)


def test_grad_checkpointing_from_the_command_line():
    assert HCMAE(preset="tiny", grad_checkpointing="true").config.grad_checkpointing is True
    assert HCMAE(preset="tiny", grad_checkpointing="false").config.grad_checkpointing is False
