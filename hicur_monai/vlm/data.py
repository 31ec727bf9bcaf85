"""Images and LLaVA conversations as model inputs for the vision-language model.

* :func:`image_transform`: the one image pipeline of the VLM, built from the shared
  ``transforms/`` fragments (``common.json::load_any`` then ``common.json::normalize``) with a
  longest-side resize and square pad to the vision tower's size in between.
* :class:`LlavaConversationDataset`: LLaVA records (``id``, ``image``, ``conversations`` of
  ``human``/``gpt`` turns with ``<image>``; the format :mod:`hicur_monai.data.instructions`
  writes) -> ``{"id", "input_ids", "labels", "image"}`` samples for
  :meth:`hicur_monai.networks.vlm.VisionLanguageModel.collate`. Records that cannot be used
  (malformed turns, missing image file, no answer left after truncation) are checked up front,
  logged and listed in ``skipped``, so a long run never stops on one bad record.

A record's relative ``image`` resolves against the dataset's image folder, unless the record
has its own ``image_folder`` (relative to the records file's folder), as the MRI slices that
``hicur instructions build`` exports do (:func:`resolve_image`); its ``modality`` picks the
intensity rule.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hicur_monai.llm.conversation import IGNORE_INDEX, from_llava

__all__ = ["image_transform", "load_image", "read_records", "resolve_image", "LlavaConversationDataset"]

logger = logging.getLogger(__name__)


def image_transform(image_size: int) -> Any:
    """``{"image": path, "modality": ...}`` -> ``{"image": (3, S, S) float tensor}``, model-normalised."""
    from monai.transforms import Compose, EnsureTyped, Resized, SpatialPadd

    from hicur_monai.transforms import EnsureRGBd
    from hicur_monai.transforms.fragments import build_fragment

    return Compose([
        build_fragment("common.json::load_any"),
        EnsureRGBd(keys=["image"]),
        Resized(keys=["image"], spatial_size=int(image_size), size_mode="longest", mode="bilinear"),
        SpatialPadd(keys=["image"], spatial_size=[int(image_size), int(image_size)]),
        EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
        build_fragment("common.json::normalize"),
    ])


def load_image(path: str | os.PathLike, image_size: int, modality: str = "endoscopy") -> torch.Tensor:
    """One image file as a model input ``(3, S, S)``.

    Raises:
        ValueError: the file cannot be read as an image (names the file).
    """
    out = image_transform(image_size)({"image": str(path), "modality": modality})
    return torch.as_tensor(out["image"]).float()


def resolve_image(rec: Mapping[str, Any], image_folder: str | os.PathLike | None,
                  records_dir: str | os.PathLike | None) -> Path:
    """The file a record's ``image`` names.

    Absolute paths are kept; a relative one resolves against the record's ``image_folder``
    (itself relative to ``records_dir``, the records file's folder) when it has one, else
    against ``image_folder``.
    """
    path = Path(str(rec["image"]))
    if path.is_absolute():
        return path
    if rec.get("image_folder") is not None:
        return Path(records_dir or ".") / str(rec["image_folder"]) / path
    return Path(image_folder) / path if image_folder is not None else path


def read_records(source: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """LLaVA records from a ``.json`` list, a ``.jsonl`` file or an in-memory list.

    Raises:
        FileNotFoundError / ValueError: naming the file (and line) that cannot be read.
    """
    if not isinstance(source, (str, os.PathLike)):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: conversation file not found")
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        return out
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}")
    return data


class LlavaConversationDataset(torch.utils.data.Dataset):
    """LLaVA conversation records as tokenised, labelled samples with their image.

    Args:
        records: a ``.json``/``.jsonl`` file or a list of records.
        model: the :class:`~hicur_monai.networks.vlm.VisionLanguageModel` (its tokenizer, chat
            template, image size and token count).
        image_folder: the folder ``image`` paths are relative to (default: the records file's folder).
        modality: modality of the images (for intensity scaling), unless a record has ``modality``.
        cache_images: keep loaded images in memory (small data sets).
        limit: use only the first ``limit`` usable records.
    """

    def __init__(self, records: str | os.PathLike | Sequence[Mapping[str, Any]], model: Any,
                 image_folder: str | os.PathLike | None = None, modality: str = "endoscopy",
                 cache_images: bool = True, limit: int | None = None):
        self.source = str(records) if isinstance(records, (str, os.PathLike)) else "<records>"
        self.records_dir = Path(records).parent if isinstance(records, (str, os.PathLike)) else None
        if image_folder is None and isinstance(records, (str, os.PathLike)):
            image_folder = Path(records).parent
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.model = model
        self.modality = modality
        self.transform = image_transform(model.image_size)
        self.cache: dict[str, torch.Tensor] | None = {} if cache_images else None
        self.skipped: list[dict[str, str]] = []
        self.samples: list[dict[str, Any]] = []
        for i, rec in enumerate(read_records(records)):
            rid = str(rec.get("id", f"#{i}")) if isinstance(rec, Mapping) else f"#{i}"
            try:
                self.samples.append(self._prepare(rec, rid))
            except (ValueError, KeyError, FileNotFoundError, TypeError) as err:
                self.skipped.append({"id": rid, "reason": str(err)})
                logger.warning("%s: record %s skipped: %s", self.source, rid, err)
            if limit is not None and len(self.samples) >= limit:
                break
        if not self.samples:
            raise ValueError(f"{self.source}: no usable records ({len(self.skipped)} skipped; first: "
                             f"{self.skipped[0] if self.skipped else 'none'})")

    def _prepare(self, rec: Any, rid: str) -> dict[str, Any]:
        if not isinstance(rec, Mapping):
            raise TypeError(f"record is a {type(rec).__name__}, expected an object")
        messages = from_llava(rec.get("conversations") or [], where=f"record {rid} conversations")
        image = rec.get("image")
        placeholders = sum(m["content"].count(self.model.image_placeholder) for m in messages)
        if image:
            path = resolve_image(rec, self.image_folder, self.records_dir)
            if not path.is_file():
                raise FileNotFoundError(f"image {path} not found")
            if placeholders == 0:  # LLaVA convention: the image goes before the first question
                messages[0]["content"] = f"{self.model.image_placeholder}\n{messages[0]['content']}"
            elif placeholders > 1:
                raise ValueError(f"{placeholders} image placeholders for one image")
            image = str(path)
        elif placeholders:
            raise ValueError("the conversation has an image placeholder but the record has no 'image'")
        ids, labels = self.model.tokenize(messages)
        if all(t == IGNORE_INDEX for t in labels):
            raise ValueError(f"no answer tokens left within max_length {self.model.max_length}")
        return {"id": rid, "input_ids": ids, "labels": labels, "image": image,
                "modality": rec.get("modality", self.modality)}

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, path: str, modality: str) -> torch.Tensor:
        if self.cache is not None and path in self.cache:
            return self.cache[path]
        img = torch.as_tensor(self.transform({"image": path, "modality": modality})["image"]).float()
        if self.cache is not None:
            self.cache[path] = img
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = self._image(s["image"], s["modality"]) if s["image"] else None
        return {"id": s["id"], "input_ids": s["input_ids"], "labels": s["labels"], "image": image}
