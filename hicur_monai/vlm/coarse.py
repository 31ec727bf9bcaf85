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

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hicur_monai.llm.conversation import IMAGE_TOKEN_INDEX, tokenize_conversation
from hicur_monai.registry import TEXT_ENCODERS

__all__ = ["DEFAULT_SEG_INSTRUCTION", "BLENDS", "coarse_features", "shared_prefix", "VLMCoarseEncoder"]

DEFAULT_SEG_INSTRUCTION = (
    "Describe this image for segmentation of the diseased area: where is the lesion, how large is it, "
    "and what are its borders?"
)
BLENDS = ("last", "0.3/0.7")
logger = logging.getLogger(__name__)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".gz", ".nrrd")


def _blend(hidden: Sequence[torch.Tensor], blend: str) -> torch.Tensor:
    if blend == "last":
        return hidden[-1]
    if blend == "0.3/0.7":
        return 0.3 * hidden[-2] + 0.7 * hidden[-1]
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _per_item(value: str | Sequence[str | None] | None, n: int, what: str) -> list[str | None]:
    """One entry per item: a single value repeated, or a sequence of exactly ``n``."""
    if value is None or isinstance(value, str):
        return [value] * n
    out = list(value)
    if len(out) != n:
        raise ValueError(f"{n} images but {len(out)} {what}")
    return out


def _messages(model: Any, has_image: bool, text: str, context: str | None) -> list[dict[str, str]]:
    turns = ([{"role": "system", "content": context}] if context else []) + [{"role": "user", "content": text}]
    return model._messages_with_image(turns, has_image)


def _ids(model: Any, has_image: bool, text: str, context: str | None) -> list[int]:
    """Token ids of one item, untruncated (what ``model.tokenize`` gives when the item fits)."""
    ids, _ = tokenize_conversation(model.tokenizer, _messages(model, has_image, text, context), True, None,
                                   model.image_placeholder, model.num_image_tokens)
    return ids


def _overflow(model: Any, ids: Sequence[int]) -> int:
    """Tokens by which ``ids`` exceed ``model.max_length`` (images at their token count)."""
    images = sum(1 for t in ids if t == IMAGE_TOKEN_INDEX)
    return len(ids) + images * (model.num_image_tokens - 1) - int(model.max_length)


def item_ids(model: Any, has_image: bool, text: str, context: str | None) -> list[int]:
    """Token ids of one item; a context too long for ``model.max_length`` is cut at its end, with a warning.

    The context comes before the image, so the image and the instruction are kept whole and the
    end of the context is what gives way. An item that fits is tokenized once.
    """
    ids = _ids(model, has_image, text, context)
    over = _overflow(model, ids)
    if over <= 0:
        return ids
    if context:
        tok = model.tokenizer(context, add_special_tokens=False)["input_ids"]
        for margin in (0, 8, 32):  # decoding and re-encoding at the cut may merge tokens differently
            cut = model.tokenizer.decode(tok[: max(len(tok) - over - margin, 0)])
            if _overflow(model, _ids(model, has_image, text, cut)) <= 0:
                break
        logger.warning("a context of %d tokens (e.g. the study's MRI report) is cut to %d characters so that the "
                       "item fits the VLM's max_length %d with its image and instruction", len(tok), len(cut),
                       model.max_length)
        context = cut
    ids, _ = model.tokenize(_messages(model, has_image, text, context), add_generation_prompt=True)
    return ids


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the token prefix every row of a batch shares, ending before the first image token.

    Every row keeps at least one token after the prefix. The positions before the first image
    placeholder are the same in token and embedding space, so the LLM may run them once.
    """
    lengths = attention_mask.sum(dim=1)
    limit = int(lengths.min()) - 1
    if input_ids.shape[0] < 2 or limit < 1:
        return 0
    head = input_ids[:, :limit]
    differs = (head != head[:1]).any(dim=0) | (head[0] == IMAGE_TOKEN_INDEX)
    return int(differs.nonzero()[0]) if differs.any() else limit


def _cache_kwarg(llm: Any) -> str:
    """The name under which the LLM's forward takes a KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _hidden(model: Any, embeds: torch.Tensor, mask: torch.Tensor, prefix: int, blend: str) -> torch.Tensor:
    """Blended hidden states ``(B, T, d)``; the shared ``prefix`` runs once and its KV cache is reused by every row."""
    llm = model.llm
    # only the hidden states are used: the LM head runs on one position, not on every position
    if prefix < 1:
        out = llm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False,
                  logits_to_keep=1)
        return _blend(out.hidden_states, blend)
    b = embeds.shape[0]
    head = llm(inputs_embeds=embeds[:1, :prefix], attention_mask=mask[:1, :prefix], output_hidden_states=True,
               use_cache=True, logits_to_keep=1)
    name = _cache_kwarg(llm)
    cache = head[name]
    cache.batch_repeat_interleave(b)
    tail = llm(inputs_embeds=embeds[:, prefix:], attention_mask=mask, output_hidden_states=True, use_cache=True,
               logits_to_keep=1, **{name: cache})
    return torch.cat([_blend(head.hidden_states, blend).expand(b, -1, -1), _blend(tail.hidden_states, blend)], dim=1)


@torch.no_grad()
def coarse_features(model: Any, images: torch.Tensor | Sequence[torch.Tensor | None] | None,
                    instruction: str | Sequence[str] = DEFAULT_SEG_INSTRUCTION, length: int = 640,
                    blend: str = "last", context: str | Sequence[str | None] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        context: text put in a system turn before the image (e.g. the study's radiology
            report): one for all items or one per item (None: no system turn); one too long for
            the model's ``max_length`` is cut at its end, with a warning. The token prefix
            that all items of the batch share (the chat header and a common context) runs through
            the LLM once and its KV cache is reused, so the slices of one study pay for their
            report once; the states equal those of running each item whole.

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
    texts = _per_item(instruction, len(items), "instructions")
    contexts = _per_item(context, len(items), "contexts")
    samples = []
    for img, text, ctx in zip(items, texts, contexts):
        ids = item_ids(model, img is not None, str(text), ctx)
        samples.append({"input_ids": ids, "labels": None, "image": img})
    batch = model.collate(samples)
    was_training = model.training
    model.eval()
    try:
        embeds, mask, _ = model.embed(batch["input_ids"], batch["attention_mask"], None, batch["images"], "right")
        prefix = shared_prefix(batch["input_ids"], batch["attention_mask"])
        hidden = _hidden(model, embeds, mask, prefix, blend).float()
    finally:
        model.train(was_training)
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

    ``encode`` takes per-item ``contexts`` (``takes_context``): a text such as the study's
    radiology report goes in a system turn before the image, where the slices of a study share it.

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

    takes_context = True

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

    def encode(self, items: Sequence[Any], instructions: Sequence[str] | None = None,
               contexts: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``(B, length, dim)`` and mask ``(B, length)`` for images (tensors / files) or texts.

        Args:
            items: image tensors, image files or texts.
            instructions: one instruction per image item instead of the fixed ``instruction``;
                ignored for texts.
            contexts: one system-turn text per item, before the image (e.g. the study's
                radiology report; see :func:`coarse_features`), or None.
        """
        if isinstance(items, (str, os.PathLike)):
            raise TypeError("encode expects a sequence of items, not one string")
        if isinstance(items, torch.Tensor) and items.ndim == 3:
            items = [items]
        for name, per_item in (("instructions", instructions), ("contexts", contexts)):
            if per_item is not None and len(per_item) != len(items):
                raise ValueError(f"{len(items)} items but {len(per_item)} {name}")
        states, masks = [], []
        for start in range(0, len(items), self.batch_size):
            window = slice(start, start + self.batch_size)
            chunk = [self._item(x) for x in items[window]]
            if instructions is not None:
                chunk = [(img, str(t) if img is not None else q) for (img, q), t in zip(chunk, instructions[window])]
            s, m = coarse_features(self.model, [c[0] for c in chunk], [c[1] for c in chunk], self.length, self.blend,
                                   None if contexts is None else contexts[window])
            states.append(s.cpu())
            masks.append(m.cpu())
        return torch.cat(states), torch.cat(masks)
