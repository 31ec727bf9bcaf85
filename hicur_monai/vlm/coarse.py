"""Stage III coarse features: the aligned LLM's hidden states for an image and a fixed instruction.

As in the original system, the aligned vision-language model is run once (no generation)
on the image with a fixed instruction asking for a description for disease-area
segmentation; the last hidden layer (``blend="last"``) or ``0.3 * second-to-last + 0.7 *
last`` (``blend="0.3/0.7"``) is taken and padded / truncated to a fixed number of tokens.
The segmentation and prognosis networks cross-attend to these states.

:class:`VLMCoarseEncoder` wraps this behind the text-encoder interface of
:data:`hicur_monai.registry.TEXT_ENCODERS` (``encode(items) -> (states, mask)``, ``dim``),
registered as ``"vlm_coarse"``; items may be images (tensors or files) or plain texts
(a patient description for prognosis: then the text is the user message, without image).

Example:
    >>> from hicur_monai.registry import create  # doctest: +SKIP
    >>> enc = create("text_encoders", "vlm_coarse", model="runs/vl_alignment/step2/model")  # doctest: +SKIP
    >>> states, mask = enc.encode(["demo_data/endoscopy/e0001.png"])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hicur_monai.registry import TEXT_ENCODERS

__all__ = ["DEFAULT_SEG_INSTRUCTION", "BLENDS", "coarse_features", "VLMCoarseEncoder"]

DEFAULT_SEG_INSTRUCTION = (
    "Describe this image for segmentation of the diseased area: where is the lesion, how large is it, "
    "and what are its borders?"
)
BLENDS = ("last", "0.3/0.7")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".gz", ".nrrd")


def _blend(hidden: Sequence[torch.Tensor], blend: str) -> torch.Tensor:
    if blend == "last":
        return hidden[-1]
    if blend == "0.3/0.7":
        return 0.3 * hidden[-2] + 0.7 * hidden[-1]
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


@torch.no_grad()
def coarse_features(model: Any, images: torch.Tensor | Sequence[torch.Tensor | None] | None,
                    instruction: str | Sequence[str] = DEFAULT_SEG_INSTRUCTION, length: int = 640,
                    blend: str = "last") -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the LLM for each (image, instruction), padded/truncated to ``length``.

    Args:
        model: a :class:`~hicur_monai.networks.vlm.VisionLanguageModel`.
        images: ``(B, 3, H, W)`` model-normalised images, a list with None for text-only
            items, or None (all text-only; then ``instruction`` must be a list).
        instruction: the user message: one for all items or one per item.
        length: number of positions returned. Sequences (image tokens + prompt, rendered with
            the chat template and its generation prompt) longer than ``length`` keep their
            last ``length`` positions (in a causal LM those have seen everything before them);
            shorter ones are padded with zeros at the end.
        blend: ``"last"`` or ``"0.3/0.7"`` (0.3 x second-to-last + 0.7 x last layer).

    Returns:
        ``states (B, length, d_llm)`` float32 and ``mask (B, length)`` bool (True = real position).
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if images is None:
        if isinstance(instruction, str):
            raise ValueError("coarse_features without images needs one instruction (text) per item")
        items: list[torch.Tensor | None] = [None] * len(instruction)
    else:
        items = list(images)
    texts = [instruction] * len(items) if isinstance(instruction, str) else list(instruction)
    if len(texts) != len(items):
        raise ValueError(f"{len(items)} images but {len(texts)} instructions")
    samples = []
    for img, text in zip(items, texts):
        msgs = model._messages_with_image([{"role": "user", "content": text}], img is not None)
        ids, _ = model.tokenize(msgs, add_generation_prompt=True)
        samples.append({"input_ids": ids, "labels": None, "image": img})
    batch = model.collate(samples)
    was_training = model.training
    model.eval()
    try:
        embeds, mask, _ = model.embed(batch["input_ids"], batch["attention_mask"], None, batch["images"], "right")
        # only the hidden states are used: the LM head runs on one position, not on every position
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False,
                        logits_to_keep=1)
    finally:
        model.train(was_training)
    hidden = _blend(out.hidden_states, blend).float()
    states = hidden.new_zeros(hidden.shape[0], int(length), hidden.shape[-1])
    keep = torch.zeros(hidden.shape[0], int(length), dtype=torch.bool, device=hidden.device)
    for b in range(hidden.shape[0]):
        n = int(mask[b].sum())
        h = hidden[b, :n][-int(length):]
        states[b, : h.shape[0]] = h
        keep[b, : h.shape[0]] = True
    return states, keep


@TEXT_ENCODERS.add_def("vlm_coarse", "hidden states of the aligned VLM for an image (or text) + fixed instruction")
class VLMCoarseEncoder:
    """The aligned VLM as a state encoder for Stage III (``encode(items) -> (states, mask)``).

    Args:
        model: a :class:`~hicur_monai.networks.vlm.VisionLanguageModel` or the folder it was saved to.
            Image tensors from another pipeline (e.g. 256 px MRI slices, 1 or 3 channels, normalised
            with the shared statistics) are resized to the vision tower's size.
        instruction: the fixed instruction sent with each image.
        length: positions per item (see :func:`coarse_features`).
        blend: ``"last"`` or ``"0.3/0.7"``.
        device: where to run (default: CUDA when available).
        modality: modality of image files given by path (intensity scaling).
        batch_size: items per LLM call.
    """

    def __init__(self, model: Any, instruction: str = DEFAULT_SEG_INSTRUCTION, length: int = 640, blend: str = "last",
                 device: str | torch.device | None = None, modality: str = "endoscopy", batch_size: int = 8):
        from hicur_monai.networks.vlm import VisionLanguageModel

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, (str, os.PathLike)):
            model = VisionLanguageModel.from_pretrained(model, device=dev).merge_adapter()  # inference only
        self.model = model.eval()
        self.instruction = instruction
        self.length = int(length)
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        self.blend = blend
        self.modality = modality
        self.batch_size = int(batch_size)
        self.dim = int(model.projector_out_dim)

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """A model-normalised ``(C, H, W)`` tensor from another pipeline -> 3 channels at the tower's size."""
        if image.ndim != 3:
            raise ValueError(f"an image tensor must be (C, H, W), got shape {tuple(image.shape)}")
        image = image.float()
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        elif image.shape[0] != 3:
            raise ValueError(f"an image tensor must have 1 or 3 channels, got {image.shape[0]}")
        size = self.model.image_size
        if tuple(image.shape[-2:]) != (size, size):
            image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear",
                                                    align_corners=False, antialias=True)[0]
        return image

    def _item(self, item: Any) -> tuple[torch.Tensor | None, str]:
        from hicur_monai.vlm.data import load_image

        if isinstance(item, torch.Tensor):
            return self._fit(item), self.instruction
        if isinstance(item, (str, os.PathLike)):
            s = str(item)
            if s.lower().endswith(_IMAGE_SUFFIXES) and "\n" not in s:
                if not Path(s).is_file():
                    raise FileNotFoundError(f"{s}: image file not found")
                return load_image(s, self.model.image_size, self.modality), self.instruction
            return None, s  # a text (e.g. a patient description)
        raise TypeError(f"cannot encode a {type(item).__name__}; give image tensors, image files or texts")

    def encode(self, items: Sequence[Any],
               instructions: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``(B, length, dim)`` and mask ``(B, length)`` for images (tensors / files) or texts.

        Args:
            items: image tensors, image files or texts.
            instructions: one instruction per image item instead of the fixed ``instruction``
                (e.g. the instruction followed by the study's radiology report); ignored for texts.
        """
        if isinstance(items, (str, os.PathLike)):
            raise TypeError("encode expects a sequence of items, not one string")
        if isinstance(items, torch.Tensor) and items.ndim == 3:
            items = [items]
        if instructions is not None and len(instructions) != len(items):
            raise ValueError(f"{len(items)} items but {len(instructions)} instructions")
        states, masks = [], []
        for start in range(0, len(items), self.batch_size):
            chunk = [self._item(x) for x in items[start: start + self.batch_size]]
            if instructions is not None:
                texts = instructions[start: start + self.batch_size]
                chunk = [(img, str(t) if img is not None else q) for (img, q), t in zip(chunk, texts)]
            s, m = coarse_features(self.model, [c[0] for c in chunk], [c[1] for c in chunk], self.length, self.blend)
            states.append(s.cpu())
            masks.append(m.cpu())
        return torch.cat(states), torch.cat(masks)
