"""Coarse states for the fusion U-Net: what the aligned LLM "says" about an image, computed once and cached.

In the original system (stage III) the aligned vision-language model is run once, without
generation, on each image together with a fixed instruction asking for a description for
disease-area segmentation; its last hidden layer, padded to a fixed number of tokens, is
the key/value sequence of the fusion blocks' cross-attention.

* :class:`TextEncoderStates` turns any encoder registered in
  :data:`hicur_monai.registry.TEXT_ENCODERS` (interface ``encode(texts) -> (states, mask)``)
  into a coarse-state provider. An image-conditioned encoder (the VLM's ``"vlm_coarse"``,
  which adds the fixed instruction itself) receives the images, as in the original. A text-only
  encoder (the default, the offline ``"hashed_bow"``) is a **stand-in**: it encodes the fixed
  instruction only, so every image gets the same states.
* :class:`~hicur_monai.segmentation.handoff.VLMStates` is the stage II -> III hand-off: the
  aligned VLM saved by ``bundles/vl_alignment`` run on each image with the fixed instruction
  (optionally followed by the study's radiology report);
  :func:`~hicur_monai.segmentation.handoff.coarse_provider` picks it or the stand-in from one
  bundle key (``vlm_checkpoint``).
* Both keep the **last** ``num_tokens`` real positions of the sequence: in a causal LM those are the
  positions that have seen the image and the whole instruction (the first positions hold the chat
  template, identical for every image).
* :class:`CoarseStateCache` keys the states by a SHA-256 of the image tensor (and of the report
  text, when the provider uses it) under the provider's key (which includes the VLM's checksum),
  in memory and (optionally) on disk, written atomically: a training run computes them once per
  image, not once per epoch, and a second run reuses them.
* :class:`CoarseStatesd` is the dictionary transform that adds ``coarse_states`` /
  ``coarse_mask`` to a data item (put it before random augmentation, so the cached value
  is that of the un-augmented image, as in the original).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from hicur_monai.utils.io import atomic_save_torch

__all__ = [
    "SEGMENTATION_INSTRUCTION",
    "TextEncoderStates",
    "CoarseStateCache",
    "CoarseStatesd",
    "check_texts",
    "image_hash",
    "keep_last",
    "REPORT_PREFIX",
    "REPORT_LAYOUT",
    "report_inputs",
    "report_key",
    "with_report",
]

#: what joins the fixed instruction and a study's radiology report (``coarse_report``)
REPORT_PREFIX = "\nThe radiology report of this study: "

#: where an image-conditioned encoder that takes contexts reads the report (part of cache keys)
REPORT_LAYOUT = "system turn before the image"

#: the fixed instruction of the original (a description for disease-area segmentation)
SEGMENTATION_INSTRUCTION = (
    "Describe the nasopharyngeal carcinoma in this image: where the tumour is, its extent and "
    "its boundaries, for segmentation of the disease area."
)


def image_hash(image: torch.Tensor) -> str:
    """SHA-256 of a tensor's float32 values and shape (metadata ignored)."""
    t = torch.as_tensor(image).detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def with_report(instruction: str, report: str | None) -> str:
    """The instruction followed by a study's radiology report text (the instruction alone without one)."""
    return instruction if not report else f"{instruction}{REPORT_PREFIX}{report.strip()}"


def report_inputs(encoder: Any, instruction: str, reports: Sequence[str | None]) -> dict[str, list[Any]]:
    """How an image-conditioned encoder is given the instruction and each image's report text.

    An encoder with ``takes_context`` (the VLM) reads each report in a system turn before the
    image (:data:`REPORT_LAYOUT`), so the slices of a study share the report's forward pass;
    any other encoder gets the report after the instruction (:func:`with_report`).
    """
    if getattr(encoder, "takes_context", False):
        lead = REPORT_PREFIX.strip()
        return {"instructions": [instruction] * len(reports),
                "contexts": [f"{lead} {r.strip()}" if r else None for r in reports]}
    return {"instructions": [with_report(instruction, r) for r in reports]}


def report_key(report: bool, takes_context: bool) -> str:
    """The report part of a provider's cache key (the layout too, where the encoder takes contexts)."""
    if report and takes_context:
        return f"report={report}|{REPORT_LAYOUT}"
    return f"report={report}"


def _text_key(key: str, text: str | None) -> str:
    if text is None:
        return key
    return hashlib.sha256(f"{key}|{text}".encode()).hexdigest()


def _create_text_encoder(name: str, kwargs: Mapping[str, Any] | None) -> Any:
    """Build a registered text encoder, importing the modules that register them if needed."""
    import importlib

    from hicur_monai import registry

    for module in ("hicur_monai.networks.prognosis", "hicur_monai.vlm"):
        if name in registry.names("text_encoders"):
            break
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    if name not in registry.names("text_encoders"):
        raise KeyError(f"text encoder {name!r} is not registered; available: {registry.names('text_encoders')}")
    return registry.create("text_encoders", name, **dict(kwargs or {}))


class TextEncoderStates:
    """Coarse-state provider from a registered text encoder: the last ``num_tokens`` real positions, zero-padded.

    Args:
        encoder: a name in :data:`~hicur_monai.registry.TEXT_ENCODERS` or an encoder object.
        instruction: the fixed instruction.
        num_tokens: tokens per image (the original pads to a fixed number).
        encoder_kwargs: keywords for building a named encoder (e.g. ``{"dim": 64}``, or
            ``{"model": "runs/vl_alignment/step2/model"}`` for ``"vlm_coarse"``).
        image_conditioned: call ``encoder.encode(images)`` (the encoder adds its own instruction,
            as ``"vlm_coarse"`` does) instead of encoding ``instruction`` once for all images;
            ``None``: True for ``"vlm_coarse"``.
        report: the provider takes each image's radiology report text (``coarse_report``); a
            text-only encoder then encodes the instruction followed by the report.

    ``__call__(images, texts=None)`` with images ``(B, C, H, W)`` (and, with ``report``, one report
    text per image) returns states ``(B, num_tokens, dim)`` and a mask ``(B, num_tokens)``
    (True = real token).
    """

    def __init__(
        self,
        encoder: str | Any = "hashed_bow",
        instruction: str = SEGMENTATION_INSTRUCTION,
        num_tokens: int = 32,
        encoder_kwargs: Mapping[str, Any] | None = None,
        image_conditioned: bool | None = None,
        report: bool = False,
    ) -> None:
        if isinstance(encoder, str):
            self.name = encoder
            encoder = _create_text_encoder(encoder, encoder_kwargs)
        else:
            self.name = type(encoder).__name__
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.encoder = encoder
        self.instruction = str(instruction)
        self.num_tokens = int(num_tokens)
        if image_conditioned is None:
            image_conditioned = self.name == "vlm_coarse" or bool(getattr(encoder, "image_conditioned", False))
        self.image_conditioned = bool(image_conditioned)
        self.dim = int(getattr(encoder, "dim", 0)) or None
        self.report = bool(report)
        self._text_only: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def key(self) -> str:
        """Identifies the provider in cache keys (encoder, instruction, token count, dim, report use)."""
        raw = f"{self.name}|{self.dim}|{self.num_tokens}|{self.instruction}|keep-last|" + \
            report_key(self.report, bool(getattr(self.encoder, "takes_context", False)))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def description(self) -> str:
        """One line saying what the states are (written next to every result that used them)."""
        if self.image_conditioned:
            return (f"{self.name} encoder states of each image + the fixed instruction "
                    f"({self.dim}-d, {self.num_tokens} positions)")
        what = "the fixed instruction + each study's MRI report (per study, not per image)" if self.report else \
            "the fixed instruction only: the same states for every image"
        return f"stand-in: text-only {self.name} encoding of {what} ({self.dim}-d); no vlm_checkpoint given"

    def _fix_length(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return keep_last(states, mask, self.num_tokens)

    def _encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._text_only:
            states, mask = self.encoder.encode([text])
            self._text_only[text] = self._fix_length(torch.as_tensor(states), torch.as_tensor(mask))
        return self._text_only[text]

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, texts: Sequence[str | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = int(images.shape[0])
        reports = check_texts(self, b, texts)
        if self.image_conditioned:
            inputs = report_inputs(self.encoder, self.instruction, reports) if self.report else {}
            states, mask = self.encoder.encode(list(images), **inputs)
            return self._fix_length(torch.as_tensor(states), torch.as_tensor(mask))
        pairs = [self._encode_text(with_report(self.instruction, r)) for r in reports]
        return torch.stack([p[0][0] for p in pairs]), torch.stack([p[1][0] for p in pairs])


def check_texts(provider: Any, batch: int, texts: Sequence[str | None] | None) -> list[str | None]:
    """The report texts a provider uses for a batch: one per image with ``provider.report``, else ``None`` each.

    Raises:
        ValueError: the provider uses reports (``coarse_report``) and an image has none.
    """
    if not getattr(provider, "report", False):
        return [None] * batch
    if texts is None or len(texts) != batch or any(not t for t in texts):
        raise ValueError("coarse_report is true but an image came without its study's report text "
                         "(the datalist item needs a 'report' file, read by ReportTextd)")
    return [str(t) for t in texts]


def keep_last(states: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``n`` real (mask True) positions of each sequence, left-aligned, zero-padded at the end.

    Returns ``states (B, n, D)`` float32 and ``mask (B, n)`` bool.
    """
    states, mask = torch.as_tensor(states).float(), torch.as_tensor(mask).bool()
    out = states.new_zeros(states.shape[0], n, states.shape[2])
    keep = torch.zeros(states.shape[0], n, dtype=torch.bool, device=states.device)
    for b in range(states.shape[0]):
        real = states[b][mask[b]][-n:]
        out[b, : real.shape[0]] = real
        keep[b, : real.shape[0]] = True
    return out, keep


class CoarseStateCache:
    """Coarse states per image, computed once: in memory (LRU) and, with ``cache_dir``, on disk.

    Args:
        provider: callable ``images (B, C, H, W) -> (states (B, L, D), mask (B, L))`` with a ``key``.
        cache_dir: folder of ``<provider key>/<image hash>.pt`` files (``None``: memory only).
        max_memory_items: items kept in memory.

    ``hits`` / ``misses`` count lookups (``misses`` = provider calls per image).
    """

    def __init__(self, provider: Any, cache_dir: str | os.PathLike | None = None, max_memory_items: int = 4096) -> None:
        self.provider = provider
        self.cache_dir = None if cache_dir in (None, "") else Path(cache_dir) / str(getattr(provider, "key", "default"))
        self.max_memory_items = int(max_memory_items)
        self._mem: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def _remember(self, key: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._mem[key] = value
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_memory_items:
            self._mem.popitem(last=False)

    def _disk(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            return obj["states"], obj["mask"]
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    @property
    def description(self) -> str:
        """The provider's one-line description."""
        return str(getattr(self.provider, "description", type(self.provider).__name__))

    @property
    def report(self) -> bool:
        """Whether the provider takes each image's report text."""
        return bool(getattr(self.provider, "report", False))

    def get(self, images: torch.Tensor, texts: Sequence[str | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``(B, L, D)`` and mask ``(B, L)`` of a batch of images (and report texts), cached where possible."""
        images = _plain(images)  # a MetaTensor's metadata must not reach the states (nor their files)
        reports = check_texts(self.provider, int(images.shape[0]), texts)
        keys = [_text_key(image_hash(img), r) for img, r in zip(images, reports)]
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for k in keys:
            v = self._mem.get(k) or self._disk(k)
            if v is not None:
                self.hits += 1
                self._remember(k, v)
            out.append(v)
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            self.misses += len(todo)
            if self.report:
                states, mask = self.provider(images[todo], [reports[i] for i in todo])
            else:
                states, mask = self.provider(images[todo])
            for j, i in enumerate(todo):
                v = (_plain(states[j]).detach().cpu().clone(), _plain(mask[j]).detach().cpu().clone())
                out[i] = v
                self._remember(keys[i], v)
                if self.cache_dir is not None:
                    atomic_save_torch({"states": v[0], "mask": v[1]}, self.cache_dir / f"{keys[i]}.pt")
        return torch.stack([v[0] for v in out]), torch.stack([v[1] for v in out])  # type: ignore[index]

    __call__ = get


class CoarseStatesd(MapTransform):
    """Add the coarse states of ``data[key]`` (one channel-first 2D image) as ``states_key`` / ``mask_key``.

    Args:
        keys: the image key (one).
        cache: a :class:`CoarseStateCache` (or any callable with the same contract).
        states_key, mask_key: output keys.
        text_key: the item's report text (``report_text``, added by
            :class:`~hicur_monai.segmentation.handoff.ReportTextd`), passed on when the provider uses reports.

    Inside :func:`~hicur_monai.segmentation.pipeline.flat_compose`, after the slicer, :meth:`call_list`
    gets a volume's slices at once (one cache call, so uncached slices go to the VLM in batches).
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: CoarseStateCache,
        states_key: str = "coarse_states",
        mask_key: str = "coarse_mask",
        text_key: str = "report_text",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cache = cache
        self.states_key, self.mask_key, self.text_key = states_key, mask_key, text_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self.call_list([data])[0]

    def call_list(self, samples: Sequence[Mapping[Hashable, Any]]) -> list[dict[Hashable, Any]]:
        """The states of many samples (a volume's slices) in one cache call: the VLM runs on them in batches."""
        out = [dict(d) for d in samples]
        for key in self.keys:
            have = [d for d in out if key in d]
            if len(have) < len(out) and not self.allow_missing_keys:
                missing = next(d for d in out if key not in d)
                raise KeyError(f"CoarseStatesd: key {key!r} is missing from item {_name(missing)}")
            if not have:
                continue
            images = torch.stack([self._image(d, key) for d in have])
            if getattr(self.cache, "report", False):
                states, mask = self.cache(images, [self._text(d) for d in have])
            else:
                states, mask = self.cache(images)
            for i, d in enumerate(have):
                d[self.states_key], d[self.mask_key] = states[i], mask[i]
        return out

    @staticmethod
    def _image(d: Mapping[Hashable, Any], key: Hashable) -> torch.Tensor:
        img = torch.as_tensor(d[key])
        if img.ndim != 3:
            raise ValueError(f"CoarseStatesd: {key!r} of item {_name(d)} must be a channel-first 2D image (C, H, W), "
                             f"got {tuple(img.shape)}")
        return img

    def _text(self, d: Mapping[Hashable, Any]) -> str:
        if not d.get(self.text_key):
            raise ValueError(f"CoarseStatesd: coarse_report is true but item {_name(d)} has no "
                             f"{self.text_key!r} (its 'report' file, read by ReportTextd)")
        return str(d[self.text_key])


def _name(d: Mapping[Hashable, Any]) -> str:
    """How an item is named in messages: its study, else its image file."""
    meta = getattr(d.get("image"), "meta", None) or {}
    return repr(d.get("study") or meta.get("filename_or_obj") or "?")


def _plain(t: Any) -> torch.Tensor:
    """A plain tensor (MONAI's ``MetaTensor`` without its metadata)."""
    return torch.as_tensor(t).as_subclass(torch.Tensor)
