"""Curated images through the HCMAE data path: ``pretrain_items(manifest=...)`` + ``transforms/common.json::load_any``
give back the curation-time normalised image (to within one quantisation step), for CT, MRI and endoscopy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from curation_helpers import SALT, real_dicoms, small_corpus, write_rules
from monai.transforms import Orientation

from hicur_monai.data.curation import curate
from hicur_monai.training.data import pretrain_items
from hicur_monai.transforms import LoadMedicalImage, ScaleIntensityByModality, ScaleIntensityByModalityd
from hicur_monai.transforms.array import STORED_GREY_MAX, STORED_MAX_KEY, STORED_RGB_MAX
from hicur_monai.transforms.fragments import build_fragment


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("curated-items")
    src = small_corpus(root, n_frames=3, n_volumes=1)
    real_dicoms(src / "dicom")  # CT_small.dcm (CT) and MR_small.dcm (MR), among others
    rules = write_rules(root / "rules.yaml")
    out = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        curate([src], out, salt=SALT, rules=rules, workers=1, progress=False)
    return src, out


def _reference(src_path: Path, modality: str, slice_index: int | None) -> np.ndarray:
    """The curation-time normalised image of a source file, recomputed with the shared transforms."""
    img = LoadMedicalImage()(str(src_path))
    if img.ndim == 4 and slice_index is not None:  # a volume: LPS, normalised as a whole, then the slice
        img = Orientation(axcodes="LPS")(img)
        norm = ScaleIntensityByModality(modality)(img)
        return np.asarray(norm[..., slice_index])
    if img.ndim == 4:
        img = img[..., 0]
    return np.asarray(ScaleIntensityByModality(modality)(img))


def test_load_any_gives_back_the_curated_normalisation(curated: tuple[Path, Path]) -> None:
    src, out = curated
    items = pretrain_items(manifest=out)
    import pandas as pd

    df = pd.read_parquet(out / "manifest.parquet")
    df = df[df["row_type"] == "image"]
    rows = {str(out.absolute() / r["output_path"]): r for r in df.to_dict("records")}
    assert items and all(it[STORED_MAX_KEY] in (STORED_GREY_MAX, STORED_RGB_MAX) for it in items)
    assert {it["modality"] for it in items} >= {"ct", "mri", "endoscopy"}
    load_any = build_fragment("common.json::load_any")
    seen = set()
    for it in items:
        row = rows[it["image"]]
        k = row["slice_index"]
        k = None if k is None or k != k else int(k)
        source = next(p for p in (src / row["source_path"], src.parent / row["source_path"]) if p.is_file())
        ref = _reference(source, it["modality"], k)
        got = load_any(dict(it))["image"]
        got = np.asarray(got.as_tensor() if hasattr(got, "as_tensor") else got)
        assert got.shape == ref.shape, (it["modality"], got.shape, ref.shape)
        step = 1.0 / it[STORED_MAX_KEY]
        err = float(np.abs(got - ref).max())
        assert err <= step * 0.5 + 1e-6, f"{it['modality']} {row['source_path']}: max error {err} > half a step"
        assert 0.0 <= got.min() and got.max() <= 1.0
        seen.add(it["modality"])
    assert seen >= {"ct", "mri", "endoscopy"}


def test_without_the_stored_scale_ct_would_be_windowed_twice(curated: tuple[Path, Path]) -> None:
    """The bug this guards against: a curated CT re-windowed at 40/400 HU is almost all 1."""
    _, out = curated
    ct = next(it for it in pretrain_items(manifest=out) if it["modality"] == "ct")
    loaded = {"image": LoadMedicalImage()(ct["image"]), "modality": "ct", STORED_MAX_KEY: ct[STORED_MAX_KEY]}
    right = ScaleIntensityByModalityd(["image"])(dict(loaded))["image"]
    wrong = ScaleIntensityByModalityd(["image"], stored_max_key=None)(dict(loaded))["image"]
    assert float((torch.as_tensor(wrong) >= 1.0).float().mean()) > 0.5
    assert float((torch.as_tensor(right) >= 1.0).float().mean()) < 0.5


def test_manifest_items_without_a_stored_scale_are_refused(curated: tuple[Path, Path], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    _, out = curated
    t = pq.read_table(out / "manifest.parquet").to_pandas()
    t.loc[t["row_type"] == "image", STORED_MAX_KEY] = None
    bad = tmp_path / "manifest.parquet"
    t.to_parquet(bad)
    with pytest.raises(ValueError, match=STORED_MAX_KEY):
        pretrain_items(manifest=bad)


def test_stored_max_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stored_max"):
        ScaleIntensityByModality("ct")(torch.ones(1, 4, 4), stored_max=0)
    out = ScaleIntensityByModality()(torch.full((1, 2, 2), 65535.0), stored_max=STORED_GREY_MAX)
    assert torch.allclose(torch.as_tensor(out), torch.ones(1, 2, 2))
