"""Shared test fixtures: the tiny demo cohort, generated once per test session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "hicur_monai" / "bundle_schema" / "meta_schema_20240725.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (bundles and transforms/ are resolved from here)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def meta_schema() -> Path:
    """The MONAI bundle metadata schema the package ships (``hicur_monai/bundle_schema``)."""
    assert SCHEMA_PATH.is_file(), f"MONAI metadata schema missing from the package: {SCHEMA_PATH}"
    return SCHEMA_PATH


@pytest.fixture(scope="session")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo cohort (preset ``tiny``, seed 0), generated once per session."""
    from hicur_monai.data.demo import generate_demo_cohort

    out = tmp_path_factory.mktemp("demo_cohort")
    return generate_demo_cohort(out, seed=0, preset="tiny", workers=1, progress=False)
