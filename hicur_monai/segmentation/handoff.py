"""The stage II -> III hand-off: coarse states of the aligned VLM, from one bundle key (``vlm_checkpoint``).

:func:`coarse_provider` is what the segmentation bundle instantiates: with no checkpoint, the
offline stand-in (:class:`~hicur_monai.segmentation.coarse.TextEncoderStates` over ``hashed_bow``,
the same states for every image, and it says so); with the folder ``bundles/vl_alignment`` saved
(``<output_root>/step2/model``), a :class:`VLMStates` that runs the VLM once per image on the
image + the fixed segmentation instruction (optionally + the study's radiology report) and keeps
the last ``num_tokens`` positions of its last hidden layer.

* The width of the states (the fusion network's ``text_dim``) is read from the checkpoint's
  ``vlm_config.json`` (``projector.d_llm``), not from a flag.
* The cache key includes the model's checksum (:func:`vlm_checksum`: every file of the folder),
  so a step-1 and a step-2 model, or a re-trained one, never share cached states.
* A checkpoint of the wrong stage (a file such as an HCMAE ``vit_encoder.pt``, a folder without
  ``vlm_config.json``) is an error naming it; :func:`load_checked_network` refuses a trained fusion
  model whose ``text_dim`` (or recorded coarse-state key) differs from the provider's, naming both files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hicur_monai.segmentation.coarse import (
    SEGMENTATION_INSTRUCTION,
    TextEncoderStates,
    check_texts,
    report_inputs,
    report_key,
)
from hicur_monai.utils.checksum import sha256_tree

__all__ = ["VLMStates", "coarse_provider", "describe_coarse", "load_checked_network", "read_vlm_config", "vlm_checksum"]

_VLM_HINT = "the folder bundles/vl_alignment saves (<output_root>/step2/model, or step1/model)"


def read_vlm_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """``vlm_config.json`` of a stage II model folder, checked for the fields the hand-off needs.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: it is a file (e.g. a stage I ``vit_encoder.pt``), a folder without
            ``vlm_config.json``, or its config is unreadable / lacks ``projector.d_llm``.
    """
    from hicur_monai.networks.vlm import VLM_FORMAT

    root = Path(checkpoint)
    if not root.exists():
        raise FileNotFoundError(f"{root}: vlm_checkpoint not found; it must be {_VLM_HINT}")
    if root.is_file():
        stage = (" (a .pt file is a stage I HCMAE export such as models/vit_encoder.pt, or a trained network: "
                 "the wrong stage)") if root.suffix == ".pt" else ""
        raise ValueError(f"{root}: vlm_checkpoint is a file{stage}; it must be {_VLM_HINT}, with vlm_config.json")
    cfg_path = root / "vlm_config.json"
    if not cfg_path.is_file():
        stage = (" (it looks like a stage I HCMAE output folder: models/vit_encoder.pt)"
                 if (root / "models" / "vit_encoder.pt").is_file() else "")
        raise ValueError(f"{root}: no vlm_config.json, not a stage II vision-language model{stage}; "
                         f"vlm_checkpoint must be {_VLM_HINT}")
    try:
        cfg = json.loads(cfg_path.read_text())
        dim = int(cfg["projector"]["d_llm"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path}: unreadable or without projector.d_llm (the LLM width): {err}") from err
    if cfg.get("format") != VLM_FORMAT:
        raise ValueError(f"{cfg_path}: 'format' is {cfg.get('format')!r}, expected {VLM_FORMAT!r}")
    cfg["_dim"] = dim
    return cfg


def vlm_checksum(checkpoint: str | os.PathLike) -> str:
    """SHA-256 over every file of a stage II model folder (relative names and contents, sorted).

    Step 1 and step 2 of the same run differ (projector, adapter), and re-training changes it.
    """
    return sha256_tree(checkpoint, skip_hidden=True)


class VLMStates:
    """Coarse states of a stage II model for images (+ the fixed instruction, optionally + a report).

    Args:
        checkpoint: the stage II model folder (with ``vlm_config.json``).
        num_tokens: positions kept per image: the **last** ``num_tokens`` of the sequence (image
            tokens + instruction + generation prompt), those that have seen the image and the text.
        instruction: the fixed segmentation instruction.
        report: each image comes with its study's radiology report text, read in a system turn
            before the image (one forward pass over the report for a study's slices).
        device: where the VLM runs (default: CUDA when available).
        batch_size: images per LLM call.
        mean, std: the model-input normalisation applied to the ``[0, 1]`` slices before the VLM.

    The model is loaded on the first call (a run whose states are all cached never loads it).
    ``dim`` (from ``vlm_config.json``), ``checksum`` and ``key`` are known without loading it.
    """

    def __init__(self, checkpoint: str | os.PathLike, num_tokens: int = 32, instruction: str = SEGMENTATION_INSTRUCTION,
                 report: bool = False, device: str | torch.device | None = None, batch_size: int = 16,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        from hicur_monai.segmentation.inferer import MEAN, STD

        if int(num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.checkpoint = Path(checkpoint)
        cfg = read_vlm_config(self.checkpoint)
        self.dim = cfg["_dim"]
        self.checksum = vlm_checksum(self.checkpoint)
        self.num_tokens, self.instruction, self.report = int(num_tokens), str(instruction), bool(report)
        self.device, self.batch_size = device, int(batch_size)
        self.mean = torch.tensor(MEAN if mean is None else mean).view(1, -1, 1, 1)
        self.std = torch.tensor(STD if std is None else std).view(1, -1, 1, 1)
        self._encoder: Any = None

    @property
    def key(self) -> str:
        """Cache folder name: the model's checksum, the instruction, positions kept, report use."""
        # the VLM reads reports as contexts (known without loading it)
        raw = f"vlm|{self.checksum}|{self.num_tokens}|keep-last|{self.instruction}|{report_key(self.report, True)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def description(self) -> str:
        text = ("the fixed instruction, after the study's MRI report (a system turn shared by its slices)"
                if self.report else "the fixed instruction")
        return (f"VLM states: {self.checkpoint} (sha256 {self.checksum[:12]}), each image + {text}, "
                f"last {self.num_tokens} positions of the last hidden layer, {self.dim}-d")

    @property
    def encoder(self) -> Any:
        """The :class:`~hicur_monai.vlm.coarse.VLMCoarseEncoder` (loaded on first use)."""
        if self._encoder is None:
            from hicur_monai.vlm.coarse import VLMCoarseEncoder

            self._encoder = VLMCoarseEncoder(str(self.checkpoint), self.instruction, length=self.num_tokens,
                                             device=self.device, batch_size=self.batch_size)
            if self._encoder.dim != self.dim:
                raise ValueError(f"{self.checkpoint / 'vlm_config.json'}: projector.d_llm is {self.dim} but the "
                                 f"model's projector gives {self._encoder.dim}")
        return self._encoder

    @torch.no_grad()
    def __call__(self, images: torch.Tensor,
                 texts: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``(B, num_tokens, dim)`` and mask of slices ``(B, 1 or 3, H, W)`` in ``[0, 1]``."""
        images = torch.as_tensor(images).float().cpu()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = (images - self.mean) / self.std
        reports = check_texts(self, int(images.shape[0]), texts)
        return self.encoder.encode(list(images), **report_inputs(self.encoder, self.instruction, reports))


def coarse_provider(vlm_checkpoint: str | os.PathLike | None = None, num_tokens: int = 32,
                    coarse_report: bool | str = False,
                    device: str | torch.device | None = None, stand_in: str = "hashed_bow", stand_in_dim: int = 64,
                    batch_size: int = 16) -> TextEncoderStates | VLMStates:
    """The coarse-state provider of the segmentation bundle, from its ``vlm_checkpoint`` key.

    Args:
        vlm_checkpoint: a stage II model folder, or ``None`` / ``""`` for the offline stand-in.
        num_tokens: positions per image.
        coarse_report: give the model each study's MRI radiology report (the VLM reads it in a system turn
            before the image; the stand-in encodes it after the instruction).
        device: where the VLM runs.
        stand_in, stand_in_dim: the text-only encoder used without a checkpoint.
        batch_size: images per VLM call.
    """
    from hicur_monai.utils.flags import as_flag, is_unset

    report = as_flag(coarse_report, "coarse_report")
    if is_unset(vlm_checkpoint):
        return TextEncoderStates(stand_in, num_tokens=num_tokens, encoder_kwargs={"dim": int(stand_in_dim)},
                                 report=report)
    return VLMStates(str(vlm_checkpoint), num_tokens=num_tokens, report=report, device=device, batch_size=batch_size)


def describe_coarse(provider: Any, use_coarse: bool | str = True) -> str:
    """The one-line ``coarse_states`` description written next to results."""
    from hicur_monai.utils.flags import as_flag

    if not as_flag(use_coarse, "use_coarse"):
        return "none: the network gets no coarse states (use_coarse false, e.g. the MONAI UNet baseline)"
    return str(getattr(provider, "description", type(provider).__name__))


def _source(provider: Any) -> str:
    ckpt = getattr(provider, "checkpoint", None)
    return str(Path(ckpt) / "vlm_config.json") if ckpt else "the stand-in (no vlm_checkpoint)"


def _recorded_extra(path: str | os.PathLike) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    extra = state.get("_extra_state") if isinstance(state, dict) else None
    config = extra.get("config", {}) if isinstance(extra, dict) else {}
    return dict(config.get("extra") or {})


def load_checked_network(path: str | os.PathLike, network: torch.nn.Module, device: str | torch.device | None = None,
                         provider: Any = None, use_coarse: bool | str = True) -> torch.nn.Module:
    """:func:`~hicur_monai.networks.fusion_seg.load_trained_network`, then the hand-off check against ``provider``.

    Raises:
        ValueError: the trained fusion network's ``text_dim`` differs from the provider's width, or the
            network recorded other coarse states (another VLM checkpoint, report use, token count);
            the message names the checkpoint and the VLM config.
    """
    from hicur_monai.networks.fusion_seg import FusionSegNet, load_trained_network
    from hicur_monai.utils.flags import as_flag

    net = load_trained_network(path, network, device)
    if not isinstance(net, FusionSegNet) or provider is None or not as_flag(use_coarse, "use_coarse"):
        return net
    dim = getattr(provider, "dim", None)
    if dim is not None and int(dim) != int(net.config.text_dim):
        raise ValueError(f"{path}: the fusion network was trained with text_dim {net.config.text_dim}, but the coarse "
                         f"states of {_source(provider)} are {dim}-d; evaluate with the vlm_checkpoint it was trained "
                         "with (or none for the stand-in)")
    recorded = _recorded_extra(path).get("coarse_key")
    key = getattr(provider, "key", None)
    if recorded and key and recorded != key:
        raise ValueError(f"{path}: the fusion network was trained on other coarse states (key {recorded}) than "
                         f"{_source(provider)} gives now (key {key}: {describe_coarse(provider)}); use the "
                         "vlm_checkpoint, coarse_report and num_tokens it was trained with")
    return net
