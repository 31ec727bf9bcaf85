"""Stage-I glue for HCMAE pretraining: the bundle's pipeline, figure and export handlers, and its evaluation.

The generic parts (engines, checkpoint handlers, optimiser helpers) are in
:mod:`hicur_monai.training.engine`, :mod:`~hicur_monai.training.handlers` and
:mod:`~hicur_monai.training.optim`; this module holds what only the ``hcmae_pretrain``
bundle uses:

* :func:`pretrain_transforms`: preprocessing (+ augmentation) + normalisation as one flat
  :class:`~monai.transforms.Compose` (flat, so ``CacheDataset`` caches up to the first
  random transform).
* :class:`ReconstructionFigure`: original / masked / reconstructed images per modality for
  both branches, into a PNG (and TensorBoard, when a writer is given).
* :class:`EncoderExport`: writes the ViT and ConvNeXt encoders when training completes.
* :class:`PretrainEvaluation`: ``evaluate.json``'s run: held-out reconstruction loss,
  features of the pretrained and a randomly initialised network, linear probes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.transforms import Compose

from hicur_monai.training.engine import unwrap
from hicur_monai.training.features import extract_features, probe_report
from hicur_monai.transforms.array import MODEL_INPUT_MEAN, MODEL_INPUT_STD
from hicur_monai.utils.io import atomic_write_json

if TYPE_CHECKING:
    from hicur_monai.networks.hcmae import HCMAE

__all__ = [
    "pretrain_transforms",
    "denormalize",
    "ReconstructionFigure",
    "EncoderExport",
    "PretrainEvaluation",
    "MEAN",
    "STD",
]

log = logging.getLogger(__name__)

MEAN = MODEL_INPUT_MEAN  # the shared model-input statistics (hicur_monai.transforms.array)
STD = MODEL_INPUT_STD


def pretrain_transforms(
    preprocessing: Any, normalize: Any, augmentation: Any = None, augment: bool = True
) -> Compose:
    """``preprocessing`` (+ ``augmentation`` when ``augment``) + ``normalize``, flattened into one Compose."""
    parts = [preprocessing] + ([augmentation] if augment and augmentation is not None else []) + [normalize]
    return Compose(parts).flatten()


def denormalize(img: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """Undo the model-input normalisation of a ``(C, H, W)`` image and clip to [0, 1]."""
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(-1, 1, 1)
    return (img * s + m).clamp(0, 1)


class ReconstructionFigure:
    """Write a reconstruction contact sheet.

    Per sample: original | ViT masked | ViT recon | ConvNeXt masked | ConvNeXt recon.

    Args:
        dataset: indexable dataset of transformed items (``"image"`` normalised, ``"modality"``).
        output_file: PNG path (overwritten atomically each time).
        network: the HCMAE network.
        per_modality: samples drawn per modality (the first ones of each modality).
        interval: epochs between figures (and one at the end of training).
        summary_writer: optional TensorBoard ``SummaryWriter``; the sheet goes there as an image.
        seed: mask seed (the same masks every time, so figures are comparable).
    """

    def __init__(
        self,
        dataset: Any,
        output_file: str | os.PathLike,
        network: torch.nn.Module,
        per_modality: int = 1,
        interval: int = 1,
        summary_writer: Any = None,
        seed: int = 4321,
    ) -> None:
        self.dataset, self.output_file, self.network = dataset, Path(output_file), network
        self.per_modality, self.interval, self.writer, self.seed = per_modality, max(1, interval), summary_writer, seed
        self._indices: list[int] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _pick(self) -> list[int]:
        if self._indices is None:
            counts: dict[str, int] = {}
            picked = []
            data = getattr(self.dataset, "data", None)
            for i in range(len(self.dataset)):
                mod = str(data[i].get("modality")) if data is not None else str(self.dataset[i].get("modality"))
                if counts.get(mod, 0) < self.per_modality:
                    counts[mod] = counts.get(mod, 0) + 1
                    picked.append(i)
            self._indices = picked
        return self._indices

    def __call__(self, engine: Engine | None = None) -> Path:
        from hicur_monai.utils.visualize import contact_sheet

        net = cast("HCMAE", unwrap(self.network))
        items = [self.dataset[i] for i in self._pick()]
        if not items:
            raise ValueError("ReconstructionFigure: the dataset is empty")
        imgs = torch.stack([torch.as_tensor(it["image"]).float() for it in items])
        dev = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            out = net.reconstruct(imgs.to(dev), generator=torch.Generator().manual_seed(self.seed))
        finally:
            net.train(was_training)
        tiles, titles = [], []
        names = ("vit_masked", "vit_recon", "convnext_masked", "convnext_recon")
        cols = (("original", imgs), *((k, out[k].cpu()) for k in names))
        for i, it in enumerate(items):
            fmt = it.get("format") or (getattr(it["image"], "meta", None) or {}).get("format")
            for name, batch in cols:
                # images stay in MONAI's (C, X, Y) layout; the loader's format tells how to show them
                tiles.append(MetaTensor(denormalize(batch[i]), meta={"format": fmt}))
                titles.append(f"{it.get('modality', '?')}: {name}")
        epoch = engine.state.epoch if engine is not None else 0
        path = contact_sheet(
            tiles, self.output_file, titles=titles, ncols=len(cols), suptitle=f"HCMAE reconstructions, epoch {epoch}"
        )
        if self.writer is not None:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            self.writer.add_image("reconstruction", arr, epoch, dataformats="HWC")
            self.writer.flush()
        log.info("reconstruction figure written to %s", path)
        return path


class EncoderExport:
    """Export the ViT and ConvNeXt encoders (``HCMAE.export_encoders``) to ``output_dir`` when training completes."""

    def __init__(self, network: torch.nn.Module, output_dir: str | os.PathLike) -> None:
        self.network, self.output_dir = network, Path(output_dir)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Path]:
        paths = cast("HCMAE", unwrap(self.network)).export_encoders(self.output_dir)
        log.info("encoders exported: %s", {k: str(v) for k, v in paths.items()})
        return paths


class PretrainEvaluation:
    """Evaluate a pretrained HCMAE: held-out losses, features (pretrained and random init), linear probes.

    Args:
        evaluator: the :class:`~hicur_monai.training.engine.MaskedImageEvaluator` of ``train.json``.
        network: the trained network (weights loaded).
        random_network: the same architecture freshly initialised (the probe's baseline).
        dataset: every image to probe (transformed as for validation).
        eval_dir: output folder: ``metrics.json``, ``features_pretrained.pt``,
            ``features_random_init.pt``, ``probe.json``.
        targets: probe targets (see :func:`~hicur_monai.training.features.probe_report`).
        batch_size, device: for the feature extraction.
    """

    def __init__(
        self,
        evaluator: Any,
        network: torch.nn.Module,
        random_network: torch.nn.Module,
        dataset: Any,
        eval_dir: str | os.PathLike,
        targets: Sequence[str] = ("tumour", "sequence"),
        batch_size: int = 8,
        device: str | torch.device = "cpu",
    ) -> None:
        self.evaluator, self.network, self.random_network = evaluator, network, random_network
        self.dataset, self.eval_dir, self.targets = dataset, Path(eval_dir), tuple(targets)
        self.batch_size, self.device = batch_size, device

    def run(self) -> dict[str, Any]:
        """Write the four files; returns the probe report."""
        self.evaluator.run()
        metrics = {k: float(v) for k, v in self.evaluator.state.metrics.items()}
        atomic_write_json(self.eval_dir / "metrics.json", metrics)
        files = []
        for name, net in (("pretrained", self.network), ("random_init", self.random_network)):
            out = self.eval_dir / f"features_{name}.pt"
            files.append(extract_features(net, self.dataset, out, batch_size=self.batch_size, device=self.device))
        return probe_report(files[0], files[1], output_file=self.eval_dir / "probe.json", targets=self.targets)
