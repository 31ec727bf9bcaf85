"""Activation checkpointing modes of HCMAE: same gradients, and what selective mode recomputes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hicur_monai.networks.checkpointing import SAVED_OPS, canonical_checkpoint_mode
from hicur_monai.networks.hcmae import CHECKPOINT_PARTS, HCMAE


class _CountSavedOps(TorchDispatchMode):
    """Counts calls of the operators selective checkpointing keeps (matmuls, convolutions, attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SAVED_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _step(mode):
    torch.manual_seed(0)
    net = HCMAE(preset="tiny", grad_checkpointing=mode, drop_path_rate=0.1).train()
    imgs = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # drop-path draws: recomputation must replay them
    loss = net(imgs, task="pretrain", generator=torch.Generator().manual_seed(2))["loss"]
    counter = _CountSavedOps()
    with counter:
        loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, counter.calls


def test_checkpoint_modes_give_the_same_gradients_and_selective_recomputes_no_matmul():
    loss0, grads0, calls0 = _step(None)
    for mode in ("full", "selective", {"vit": "selective", "convnext": "full"}):
        loss, grads, calls = _step(mode)
        assert loss == pytest.approx(loss0, abs=0)
        assert grads.keys() == grads0.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, grads0[name], rtol=1e-5, atol=1e-6, msg=f"{mode}: {name}")
        if mode == "selective":  # matmul/conv/attention outputs are kept: backward runs only their backward kernels
            assert calls == calls0
        else:  # the forward of (some) blocks is re-run in backward
            assert calls > calls0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(False, None), (None, None), ("off", None), (True, "full"), ("full", "full"), ("Selective", "selective")],
)
def test_canonical_checkpoint_mode(value, expected):
    assert canonical_checkpoint_mode(value) == expected


def test_unknown_checkpoint_mode_is_refused_by_the_config():
    with pytest.raises(ValueError, match="grad_checkpointing"):
        HCMAE(preset="tiny", grad_checkpointing="sometimes")
    with pytest.raises(ValueError, match="unknown parts"):
        HCMAE(preset="tiny", grad_checkpointing={"encoder": "full"})


def test_checkpoint_mapping_covers_every_part():
    cfg = HCMAE(preset="tiny", grad_checkpointing={"decoder": True}).config
    assert cfg.grad_checkpointing == {"vit": None, "decoder": "full", "convnext": None}
    assert (
        HCMAE(preset="tiny", grad_checkpointing={p: "full" for p in CHECKPOINT_PARTS}).config.grad_checkpointing
        == "full"
    )


@pytest.mark.parametrize("mode,vit_first", [("lean", None), (None, None), ("lean", True)])
def test_vit_branch_backward_runs_before_the_convnext_backward(mode, vit_first):
    """LEAN_CHECKPOINTING keeps the ViT encoder's activations only because they are freed first.

    Every ViT-branch parameter (encoder, decoder) must get its gradient before any ConvNeXt
    parameter does; otherwise the kept activations would still be alive during the
    ConvNeXt's recomputation, where the step's memory peaks. Without checkpointing the
    default is the other order (the ConvNeXt keeps the most activations, so it goes first
    in backward); an explicit ``vit_branch_first`` overrides either.
    """
    from hicur_monai.networks.hcmae import LEAN_CHECKPOINTING

    assert LEAN_CHECKPOINTING["convnext"] == "full" and LEAN_CHECKPOINTING["decoder"] == "full"
    ckpt = LEAN_CHECKPOINTING if mode else None
    net = HCMAE(preset="tiny", grad_checkpointing=ckpt, vit_branch_first=vit_first).train()
    expected = vit_first if vit_first is not None else mode is None  # the default decides from the checkpointing
    vit_first = net.config.vit_branch_first
    assert vit_first is expected
    order: list[str] = []
    for name, p in net.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda _p, name=name: order.append(name))
    imgs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    net(imgs, task="pretrain", generator=torch.Generator().manual_seed(1))["loss"].backward()
    vit_side = [i for i, n in enumerate(order) if n.startswith(("vit.", "decoder", "mask_token"))]
    convnext = [i for i, n in enumerate(order) if n.startswith("convnext.")]
    assert vit_side and convnext
    if vit_first:
        assert max(convnext) < min(vit_side)
    else:
        assert max(vit_side) < min(convnext), [order[i] for i in convnext[:3]]
