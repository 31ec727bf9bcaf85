"""Per-study MRI features for prognosis, extracted from the Stage I / Stage II checkpoints a user names.

The I/II -> III hand-off of the curriculum: the prognosis bundle is given ``hcmae_encoder``
(the ViT exported by ``bundles/hcmae_pretrain``, ``models/vit_encoder.pt``) and/or
``vlm_checkpoint`` (a folder saved by ``bundles/vl_alignment``) and turns every study of the
clinical table into one feature vector:

* **HCMAE**: each MRI sequence of the study goes through the training pipeline (the shared
  ``transforms/common.json::load_any`` fragment, i.e. MRI percentile scaling per volume, then
  the 2D steps of pretraining: 3 channels, longest-side resize and square pad to the encoder's
  size, ``common.json::normalize``); the slices where the tumour mask is non-empty go through
  the ViT; its patch tokens are mean-pooled per slice, then over slices; the sequences
  (sorted by name) are concatenated: ``n_sequences x embed_dim`` values.
* **VLM coarse states** (optional): the ``vlm_coarse`` text encoder on the tumour's largest
  slice (most mask voxels) of ``vlm_sequence`` (T1C) with the fixed instruction; the states are
  averaged over the real (unpadded) positions: ``d_llm`` values.

Each study's vector is cached under ``<output_dir>/image_features/<kind>/`` as one ``.npy``
written atomically, named by the study and a key over the checkpoint's SHA-256 and the
SHA-256 of the study's image and mask files: a re-run reuses it, a new checkpoint or changed
images recompute it. :func:`study_features` returns the joined frame (index ``study_id``)
and a description that ``metrics.json`` records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hicur_monai.utils.checksum import sha256_file, sha256_tree
from hicur_monai.utils.io import atomic_open

__all__ = [
    "FEATURES_VERSION",
    "ImageFeatureError",
    "MRIStudy",
    "read_mri_studies",
    "load_hcmae_vit",
    "load_vlm_encoder",
    "folder_checksum",
    "StudyFeatureExtractor",
    "study_features",
]

logger = logging.getLogger(__name__)

#: bump when the pipeline changes what a cached vector means
FEATURES_VERSION = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VIT_CLASS = "timm.models.vision_transformer.VisionTransformer"


class ImageFeatureError(ValueError):
    """A checkpoint or an MRI study that cannot give prognosis image features (names the file and the problem)."""


@dataclass
class MRIStudy:
    """The MRI of one study: ``{sequence: (image path, mask path or None)}`` and where it was listed."""

    study: str
    sequences: dict[str, tuple[Path, Path | None]] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)


def read_mri_studies(datalist: str | os.PathLike, key: str = "mri") -> dict[str, MRIStudy]:
    """Group the ``key`` list of a datalist (``image``, ``label``, ``sequence``, ``study``) by study.

    Paths are relative to the datalist's folder.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ImageFeatureError: naming the entry, for a missing field or a sequence listed twice.
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MRI datalist not found (set mri_datalist to the cohort's datalist.json)")
    data = json.loads(path.read_text())
    if key not in data:
        raise ImageFeatureError(f"{path}: no {key!r} list; available: {sorted(data)}")
    studies: dict[str, MRIStudy] = {}
    for i, e in enumerate(data[key]):
        where = f"{path}: {key}[{i}]"
        for f in ("image", "study", "sequence"):
            if not e.get(f):
                raise ImageFeatureError(f"{where} has no {f!r}")
        st = studies.setdefault(str(e["study"]), MRIStudy(str(e["study"])))
        seq = str(e["sequence"])
        if seq in st.sequences:
            raise ImageFeatureError(f"{where}: study {st.study!r} lists sequence {seq!r} twice")
        label = path.parent / e["label"] if e.get("label") else None
        st.sequences[seq] = (path.parent / e["image"], label)
        st.where[seq] = where
    return studies


def _resolve(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: {p} does not exist")
    return p


def load_hcmae_vit(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The HCMAE ViT export (``vit_encoder.pt`` + ``vit_encoder.json``) and its JSON config.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageFeatureError: naming the file, when it is a VLM folder, a ConvNeXt export, not an HCMAE
            export at all, or weights that do not fit the ViT its JSON describes (another size).
    """
    from hicur_monai.networks.hcmae import load_encoder

    p = _resolve(path, "hcmae_encoder")
    hint = "hcmae_encoder needs the Stage I export models/vit_encoder.pt written by bundles/hcmae_pretrain"
    if p.is_dir():
        kind = "a Stage II vision-language model folder (give it as vlm_checkpoint)" \
            if (p / "vlm_config.json").is_file() else "a folder"
        raise ImageFeatureError(f"hcmae_encoder: {p} is {kind}; {hint}")
    meta_path = p.with_suffix(".json")
    if not meta_path.is_file():
        raise ImageFeatureError(f"hcmae_encoder: {p} has no {meta_path.name} beside it: not an HCMAE encoder export; "
                                f"{hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ImageFeatureError(f"hcmae_encoder: {meta_path} is not valid JSON ({err.msg})") from None
    if meta.get("class") != _VIT_CLASS:
        raise ImageFeatureError(f"hcmae_encoder: {meta_path} describes a {meta.get('class')!r}, not the HCMAE ViT; "
                                f"{hint}")
    try:
        vit = load_encoder(p)
    except RuntimeError as err:  # load_state_dict: missing/unexpected keys or shape mismatches
        raise ImageFeatureError(f"hcmae_encoder: the weights in {p} do not fit the ViT {meta_path.name} describes "
                                f"({meta.get('kwargs')}): a ViT of another size or another file? "
                                f"{str(err).splitlines()[0]}") from None
    except Exception as err:  # torch.load of something that is not a state dict
        raise ImageFeatureError(f"hcmae_encoder: {p} cannot be read as encoder weights: "
                                f"{type(err).__name__}: {err}") from None
    return vit.eval(), meta


def load_vlm_encoder(path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """The ``vlm_coarse`` text encoder of a folder saved by ``bundles/vl_alignment``.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageFeatureError: naming the path, for a file (e.g. an HCMAE export) or a folder that is not a VLM.
    """
    import hicur_monai.vlm  # noqa: F401 - registers "vlm_coarse"
    from hicur_monai.registry import create

    p = _resolve(path, "vlm_checkpoint")
    if not (p / "vlm_config.json").is_file():
        kind = "a file" if p.is_file() else "a folder without vlm_config.json"
        extra = " (an HCMAE encoder export? give it as hcmae_encoder)" if p.suffix == ".pt" else ""
        raise ImageFeatureError(f"vlm_checkpoint: {p} is {kind}{extra}; vlm_checkpoint needs the folder "
                                "bundles/vl_alignment saves (<output_root>/step2/model)")
    try:
        return create("text_encoders", "vlm_coarse", model=str(p), device=device or "cpu")
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        raise ImageFeatureError(f"vlm_checkpoint: {p} cannot be loaded as a vision-language model: {err}") from None


def folder_checksum(path: str | os.PathLike) -> str:
    """SHA-256 over a file, or over the relative names and SHA-256 of every file in a folder."""
    return sha256_tree(path)


def _slice_transform(size: int) -> Any:
    """2D part of the pretraining pipeline: 3 channels, longest-side resize, square pad, normalise."""
    from monai.transforms import Compose, EnsureTyped, Resized, SpatialPadd

    from hicur_monai.transforms import EnsureRGBd
    from hicur_monai.transforms.fragments import build_fragment

    return Compose([
        EnsureRGBd(keys=["image"]),
        Resized(keys=["image"], spatial_size=int(size), size_mode="longest", mode="bilinear"),
        SpatialPadd(keys=["image"], spatial_size=[int(size), int(size)]),
        EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
        build_fragment("common.json::normalize"),
    ])


class StudyFeatureExtractor:
    """Turn the MRI of studies into HCMAE (and VLM coarse-state) vectors, with a per-study cache.

    Args:
        hcmae_encoder: path to ``vit_encoder.pt`` (or None).
        vlm_checkpoint: a folder saved by ``bundles/vl_alignment`` (or None).
        cache_dir: where the per-study vectors go (``<output_dir>/image_features``).
        sequences: sequences to use (default: every sequence of the studies, sorted).
        vlm_sequence: the sequence whose largest tumour slice the VLM sees.
        device: where to run the encoders (default: CUDA when available).
        batch_size: slices per ViT call.
    """

    def __init__(self, hcmae_encoder: str | os.PathLike | None = None,
                 vlm_checkpoint: str | os.PathLike | None = None, cache_dir: str | os.PathLike = "image_features",
                 sequences: Sequence[str] | None = None, vlm_sequence: str = "T1C",
                 device: str | torch.device | None = None, batch_size: int = 32):
        if hcmae_encoder is None and vlm_checkpoint is None:
            raise ValueError("StudyFeatureExtractor needs hcmae_encoder and/or vlm_checkpoint")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_dir = Path(cache_dir)
        self.sequences = list(sequences) if sequences else None
        self.vlm_sequence = vlm_sequence
        self.batch_size = int(batch_size)
        self.sources: dict[str, dict[str, Any]] = {}
        self.vit: Any = None  # the HCMAE ViT (timm), when hcmae_encoder is given
        self.vlm: Any = None  # the VLM encoder, when vlm_checkpoint is given
        if hcmae_encoder is not None:
            self.vit, meta = load_hcmae_vit(hcmae_encoder)
            self.vit.to(self.device)
            self.vit_size = int(meta.get("img_size") or meta["kwargs"]["img_size"])
            self.sources["hcmae"] = {"path": str(Path(hcmae_encoder).resolve()), "sha256": sha256_file(hcmae_encoder),
                                     "img_size": self.vit_size, "embed_dim": int(self.vit.num_features)}
        if vlm_checkpoint is not None:
            self.vlm = load_vlm_encoder(vlm_checkpoint, self.device)
            model = getattr(self.vlm, "model", None)
            self.vlm_size = int(getattr(model, "image_size", 0) or 64)
            self.sources["vlm"] = {"path": str(Path(vlm_checkpoint).resolve()),
                                   "sha256": folder_checksum(vlm_checkpoint), "dim": int(self.vlm.dim),
                                   "sequence": vlm_sequence}
        self.stats = {"computed": 0, "cached": 0}
        self._load: Any = None
        self._tf: dict[int, Any] = {}

    # ------------------------------------------------------------------ one study
    @staticmethod
    def _paths(st: MRIStudy, seq: str) -> tuple[Path, Path]:
        """The image and tumour-mask files of one sequence; raises naming the file that is missing."""
        img_path, mask_path = st.sequences[seq]
        where = st.where[seq]
        if mask_path is None:
            raise ImageFeatureError(f"{where}: study {st.study!r} sequence {seq} has no 'label' (tumour mask): "
                                    "the features are taken over the tumour slices")
        for f, what in ((img_path, "image"), (mask_path, "tumour mask")):
            if not f.is_file():
                raise ImageFeatureError(f"{where}: the {what} {f} of study {st.study!r} does not exist")
        return img_path, mask_path

    def _volumes(self, st: MRIStudy, seq: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled image ``(C, X, Y, Z)`` and the mask of one sequence, checked."""
        from hicur_monai.transforms.fragments import build_fragment

        img_path, mask_path = self._paths(st, seq)
        where = st.where[seq]
        if self._load is None:
            self._load = build_fragment("common.json::load_any")
        d = self._load({"image": str(img_path), "label": str(mask_path), "modality": "mri"})
        img, mask = torch.as_tensor(d["image"]), torch.as_tensor(d["label"])
        if img.ndim != 4 or tuple(img.shape[1:]) != tuple(mask.shape[1:]):
            raise ImageFeatureError(f"{where}: image {img_path} {tuple(img.shape[1:])} and mask {mask_path} "
                                    f"{tuple(mask.shape[1:])} must be 3D volumes of the same shape")
        return img, mask

    @staticmethod
    def _tumour_slices(mask: torch.Tensor, mask_path: Path) -> np.ndarray:
        area = (mask > 0).reshape(-1, mask.shape[-1]).sum(0).numpy()
        if not area.any():
            raise ImageFeatureError(f"{mask_path}: the tumour mask is empty (no slice to take features from)")
        return area

    def _slices(self, img: torch.Tensor, idx: Iterable[int], size: int) -> torch.Tensor:
        if size not in self._tf:
            self._tf[size] = _slice_transform(size)
        tf = self._tf[size]
        out = [tf({"image": img[..., int(z)]})["image"] for z in idx]
        return torch.stack([x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x) for x in out])

    @torch.no_grad()
    def _hcmae(self, st: MRIStudy, volumes: Mapping[str, tuple[torch.Tensor, np.ndarray]]) -> np.ndarray:
        parts = []
        n_prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        for seq in sorted(volumes):
            img, area = volumes[seq]
            x = self._slices(img, np.flatnonzero(area), self.vit_size)
            pooled = [self.vit.forward_features(b.to(self.device))[:, n_prefix:].mean(dim=1).float().cpu()
                      for b in x.split(self.batch_size)]
            parts.append(torch.cat(pooled).mean(dim=0))
        return torch.cat(parts).numpy()

    def _vlm(self, st: MRIStudy, volumes: Mapping[str, tuple[torch.Tensor, np.ndarray]]) -> np.ndarray:
        seq = self.vlm_sequence if self.vlm_sequence in volumes else sorted(volumes)[0]
        img, area = volumes[seq]
        x = self._slices(img, [int(np.argmax(area))], self.vlm_size)
        states, mask = self.vlm.encode([x[0]])
        return states[0][mask[0]].mean(dim=0).float().numpy()

    def _cache_path(self, kind: str, st: MRIStudy, files: Sequence[tuple[str, str, str]]) -> Path:
        source = {k: v for k, v in self.sources[kind].items() if k != "path"}  # the checksum, not where it lies
        key = hashlib.sha256(json.dumps({"version": FEATURES_VERSION, "kind": kind, "source": source,
                                         "files": files}, sort_keys=True).encode()).hexdigest()
        name = st.study if _SAFE_ID.fullmatch(st.study) else "study-" + hashlib.sha256(st.study.encode()).hexdigest()
        return self.cache_dir / kind / f"{name}-{key[:24]}.npy"

    def study_vector(self, st: MRIStudy) -> dict[str, np.ndarray]:
        """``{kind: vector}`` of one study (from the cache when its key matches)."""
        seqs = self.sequences or sorted(st.sequences)
        missing = [s for s in seqs if s not in st.sequences]
        if missing:
            raise ImageFeatureError(f"study {st.study!r} has no MRI sequence {missing} in the datalist "
                                    f"(has {sorted(st.sequences)})")
        files, mask_paths = [], {}
        for s in seqs:
            img_path, mask_paths[s] = self._paths(st, s)
            files.append((s, sha256_file(img_path), sha256_file(mask_paths[s])))
        out: dict[str, np.ndarray] = {}
        todo: dict[str, Path] = {}
        for kind in self.sources:
            path = self._cache_path(kind, st, files)
            if path.is_file():
                out[kind] = np.load(path, allow_pickle=False)
                self.stats["cached"] += 1
            else:
                todo[kind] = path
        if todo:
            volumes: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
            for s in seqs:
                img, mask = self._volumes(st, s)
                volumes[s] = (img, self._tumour_slices(mask, mask_paths[s]))
            for kind, path in todo.items():
                vec = np.asarray(self._hcmae(st, volumes) if kind == "hcmae" else self._vlm(st, volumes), np.float32)
                with atomic_open(path, "wb") as fh:
                    np.save(fh, vec, allow_pickle=False)
                out[kind] = vec
                self.stats["computed"] += 1
        return out

    def sequences_of(self, studies: Iterable[MRIStudy]) -> list[str]:
        """The sequences used: the configured ones, else every sequence the studies have."""
        return self.sequences or sorted({s for st in studies for s in st.sequences})


def _missing_studies(wanted: Sequence[str], studies: Mapping[str, MRIStudy], datalist: Path,
                     mode: str) -> list[str]:
    """Table studies without MRI: an error in ``strict`` mode, else listed (loud) and left out."""
    missing = [s for s in wanted if s not in studies]
    if missing and mode == "strict":
        raise ImageFeatureError(f"{len(missing)} studies of the clinical table have no MRI in {datalist}: "
                                f"{missing[:10]} (mode 'strict'; 'drop' or 'flag' leave them out of the models)")
    if missing:
        logger.warning("%d studies of the clinical table have no MRI in %s and are LEFT OUT of the image-feature "
                       "models: %s", len(missing), datalist, missing[:10])
    return missing


def study_features(study_ids: Sequence[str], mri_datalist: str | os.PathLike, cache_dir: str | os.PathLike,
                   hcmae_encoder: str | os.PathLike | None = None, vlm_checkpoint: str | os.PathLike | None = None,
                   mode: str = "drop", sequences: Sequence[str] | None = None, vlm_sequence: str = "T1C",
                   device: str | torch.device | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Image features of ``study_ids`` (index ``study_id``; columns ``img_hcmae_<seq>_<i>``, ``img_vlm_<i>``).

    Studies of the table without any MRI in the datalist are an error with ``mode="strict"``;
    otherwise they are logged and listed in the description (``missing_studies``), and the
    survival workflow counts them as ``excluded_no_image_features``. A listed study whose
    mask is missing, unreadable or empty, or that lacks a sequence, is always an error.

    Returns:
        ``(features, description)``; the description names the checkpoints and their SHA-256,
        the sequences, the numbers of studies and dimensions, and the cache hits.
    """
    datalist = Path(mri_datalist)
    studies = read_mri_studies(datalist)
    wanted = list(dict.fromkeys(str(s) for s in study_ids))
    missing = _missing_studies(wanted, studies, datalist, mode)
    ex = StudyFeatureExtractor(hcmae_encoder, vlm_checkpoint, cache_dir, sequences, vlm_sequence, device)
    present = [studies[s] for s in wanted if s in studies]
    seqs = ex.sequences_of(present)
    ex.sequences = seqs
    from tqdm.auto import tqdm

    rows = {st.study: ex.study_vector(st) for st in tqdm(present, desc="study image features", leave=False)}
    frames = []
    for kind in ex.sources:
        mat = np.stack([rows[s][kind] for s in rows]) if rows else np.zeros((0, 0), np.float32)
        if kind == "hcmae":
            d = ex.sources["hcmae"]["embed_dim"]
            cols = [f"img_hcmae_{seq}_{i}" for seq in seqs for i in range(d)]
        else:
            cols = [f"img_vlm_{i}" for i in range(mat.shape[1])]
        frames.append(pd.DataFrame(mat, index=pd.Index(list(rows), name="study_id"), columns=cols))
    feats = pd.concat(frames, axis=1)
    desc = {"source": "extracted", "checkpoints": ex.sources, "sequences": seqs, "mri_datalist": str(datalist),
            "n_studies": int(len(feats)), "missing_studies": missing,
            "dims": {kind: int(sum(c.startswith(f"img_{kind}_") for c in feats.columns)) for kind in ex.sources},
            "cache": {"dir": str(cache_dir), **ex.stats}}
    logger.info("image features: %d studies x %d (%s); cache: %d reused, %d computed", len(feats), feats.shape[1],
                ", ".join(ex.sources), ex.stats["cached"], ex.stats["computed"])
    return feats, desc
