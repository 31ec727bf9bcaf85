"""Dictionary twins of :mod:`hicur_monai.transforms.array`, as MONAI pairs them.

Data dictionaries follow one convention across the toolkit: the image under ``"image"``
(a path before loading), the modality under ``"modality"`` (``endoscopy`` / ``mri`` /
``ct``), the MRI sequence under ``"sequence"``, and an optional mask under ``"label"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection
from monai.transforms import MapTransform, NormalizeIntensityd, RandomizableTransform
from monai.utils import convert_to_tensor

from hicur_monai.modality import ENDOSCOPY, canonical_modality
from hicur_monai.transforms.array import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MRI_PERCENTILES,
    MODEL_INPUT_MEAN,
    MODEL_INPUT_STD,
    STORED_MAX_KEY,
    EnsureRGB,
    ExtractSlices,
    LoadMedicalImage,
    RandColorJitter,
    ScaleIntensityByModality,
    slice_range_from_mask,
)

__all__ = [
    "LoadMedicalImaged",
    "ScaleIntensityByModalityd",
    "ExtractSlicesd",
    "EnsureRGBd",
    "RandColorJitterd",
    "NormalizeModelInputd",
    "LoadMedicalImageD",
    "LoadMedicalImageDict",
    "ScaleIntensityByModalityD",
    "ScaleIntensityByModalityDict",
    "ExtractSlicesD",
    "ExtractSlicesDict",
    "EnsureRGBD",
    "EnsureRGBDict",
    "RandColorJitterD",
    "RandColorJitterDict",
    "NormalizeModelInputD",
    "NormalizeModelInputDict",
]


class LoadMedicalImaged(MapTransform):
    """Dictionary twin of :class:`~hicur_monai.transforms.array.LoadMedicalImage`."""

    def __init__(
        self,
        keys: KeysCollection,
        dtype: DtypeLike = np.float32,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(dtype=dtype, ensure_channel_first=ensure_channel_first)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class ScaleIntensityByModalityd(MapTransform):
    """Dictionary twin of :class:`~hicur_monai.transforms.array.ScaleIntensityByModality`.

    The modality is read from ``data[modality_key]`` unless ``modality`` fixes it. An item with
    a value under ``stored_max_key`` (default ``"value_max"``, the curation manifest's column,
    which :func:`~hicur_monai.training.data.pretrain_items` carries into the items it builds from a
    manifest) holds an already-normalised image stored quantised: it is divided by that value,
    whatever its modality, instead of being windowed again.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality_key: str = "modality",
        modality: str | None = None,
        ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
        mri_percentiles: Sequence[float] = DEFAULT_MRI_PERCENTILES,
        rgb_max: float = 255.0,
        stored_max_key: str | None = STORED_MAX_KEY,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.stored_max_key = stored_max_key
        self.scaler = ScaleIntensityByModality(modality, ct_window, mri_percentiles, rgb_max)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        stored = d.get(self.stored_max_key) if self.stored_max_key else None
        if stored is not None and not (isinstance(stored, float) and stored != stored):  # NaN: not given
            for key in self.key_iterator(d):
                d[key] = self.scaler(d[key], stored_max=stored)
            return d
        modality = self.scaler.modality or d.get(self.modality_key)
        if modality is None:
            raise KeyError(f"ScaleIntensityByModalityd: data has no {self.modality_key!r} key and no fixed modality")
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key], modality)
        return d


class ExtractSlicesd(MapTransform):
    """Cut every key's 3D volume into the same 2D slices; returns a list of dictionaries.

    Like MONAI's cropping transforms that return several samples, the output is a list
    (one dict per slice) that MONAI datasets and ``Compose`` flatten. Non-image entries are
    copied into each slice dict, which also gains ``slice_index``.

    Args:
        keys: image/label keys to slice together.
        axis: spatial axis to slice along.
        mask_key: when set, keep only slices where this mask is non-zero, widened by
            ``margin``; ``None`` keeps every slice.
        margin: slices kept on each side of the mask range.
        allow_empty_mask: with an empty mask, keep all slices instead of raising.
        step: take every ``step``-th slice.
        pass_2d: a 2D image is passed through as its only slice.
    """

    def __init__(
        self,
        keys: KeysCollection,
        axis: int = -1,
        mask_key: str | None = None,
        margin: int = 0,
        allow_empty_mask: bool = False,
        step: int = 1,
        pass_2d: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = ExtractSlices(axis=axis, step=step, pass_2d=pass_2d)
        self.axis, self.mask_key, self.margin, self.allow_empty_mask = axis, mask_key, margin, allow_empty_mask

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        start = stop = None
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        if self.mask_key is not None and mask is None and not self.allow_missing_keys:
            raise KeyError(f"ExtractSlicesd: mask key {self.mask_key!r} is not in the data")
        if mask is not None and getattr(mask, "ndim", 0) == 4:
            try:
                start, stop = slice_range_from_mask(mask, axis=self.axis, margin=self.margin)
            except ValueError:
                if not self.allow_empty_mask:
                    raise
        sliced = {key: self.slicer(d[key], start, stop) for key in self.key_iterator(d)}
        if not sliced:
            return [d]
        counts = {k: len(v) for k, v in sliced.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"ExtractSlicesd: keys have different slice counts {counts}; volumes must share a shape")
        out = []
        for i in range(next(iter(counts.values()))):
            item = dict(d)
            for key, slices in sliced.items():
                item[key] = slices[i]
            first = next(iter(sliced.values()))[i]
            item["slice_index"] = int(getattr(first, "meta", {}).get("slice_index", 0))
            out.append(item)
        return out


class EnsureRGBd(MapTransform):
    """Dictionary twin of :class:`~hicur_monai.transforms.array.EnsureRGB`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.to_rgb = EnsureRGB()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.to_rgb(d[key])
        return d


class RandColorJitterd(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`~hicur_monai.transforms.array.RandColorJitter`.

    Applied only to RGB modalities (``endoscopy`` by default); grey images made 3-channel
    are left as they are, so one augmentation pipeline serves mixed-modality batches.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        modality_key: str = "modality",
        rgb_modalities: Sequence[str] = (ENDOSCOPY,),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandColorJitter(1.0, brightness, contrast, saturation, hue)
        self.modality_key = modality_key
        self.rgb_modalities = {canonical_modality(m) for m in rgb_modalities}

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandColorJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        modality = d.get(self.modality_key)
        if not self._do_transform or modality is None or canonical_modality(modality) not in self.rgb_modalities:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=True)
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


class NormalizeModelInputd(NormalizeIntensityd):
    """Dictionary twin of :class:`~hicur_monai.transforms.array.NormalizeModelInput` (MONAI's
    ``NormalizeIntensityd`` with the toolkit's model-input statistics, channel-wise)."""

    def __init__(
        self,
        keys: KeysCollection,
        mean: Sequence[float] = MODEL_INPUT_MEAN,
        std: Sequence[float] = MODEL_INPUT_STD,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        # lists, as the bundle configs give them (NormalizeIntensityd's annotation names arrays only)
        sub: Any = list(mean)
        div: Any = list(std)
        super().__init__(keys, subtrahend=sub, divisor=div, channel_wise=True, dtype=dtype,
                         allow_missing_keys=allow_missing_keys)


LoadMedicalImageD = LoadMedicalImageDict = LoadMedicalImaged
ScaleIntensityByModalityD = ScaleIntensityByModalityDict = ScaleIntensityByModalityd
ExtractSlicesD = ExtractSlicesDict = ExtractSlicesd
EnsureRGBD = EnsureRGBDict = EnsureRGBd
RandColorJitterD = RandColorJitterDict = RandColorJitterd
NormalizeModelInputD = NormalizeModelInputDict = NormalizeModelInputd
