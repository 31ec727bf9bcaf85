"""Synthetic nasopharyngoscopy frames, reports and sidecars (hicur_monai.data.demo.endoscopy)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hicur_monai.data.demo.endoscopy import generate_endoscopy, region_masks
from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS, STATUSES

N, SIZE = 40, 160


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("endo")
    return root, generate_endoscopy(root, N, seed=7, image_size=SIZE)


def _truth(root: Path, entry: dict) -> dict:
    return json.loads((root / entry["findings"]).read_text())


def test_files_and_entries(cohort):
    root, entries = cohort
    assert len(entries) == N
    assert len({e["patient"] for e in entries}) == N
    for e in entries:
        assert e["modality"] == "endoscopy"
        img = Image.open(root / e["image"])
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        assert (root / e["report"]).read_text().strip()
        truth = _truth(root, e)
        assert set(truth["findings"]) == set(MAIN_REGIONS)
        for region, grid in truth["findings"].items():
            assert set(grid) == set(FINDINGS), region
            assert set(grid.values()) <= set(STATUSES)


def test_deterministic_by_seed(tmp_path, cohort):
    root, entries = cohort
    again = generate_endoscopy(tmp_path / "a", 3, seed=7, image_size=SIZE)
    other = generate_endoscopy(tmp_path / "b", 3, seed=8, image_size=SIZE)
    assert again == entries[:3]
    for e in again:
        assert (tmp_path / "a" / e["image"]).read_bytes() == (root / e["image"]).read_bytes()
        assert (tmp_path / "a" / e["report"]).read_text() == (root / e["report"]).read_text()
    assert any((tmp_path / "b" / e["report"]).read_text() != (root / e["report"]).read_text() for e in other)


def test_cohort_is_varied(cohort):
    root, entries = cohort
    cats = {_truth(root, e)["impression"]["category"] for e in entries}
    assert {"normal", "inflammation", "neoplasm"} <= cats
    texts = [(root / e["report"]).read_text() for e in entries]
    assert len(set(texts)) == N
    assert any(re.search(r"\b(no|without|neither|negative)\b", t, re.I) for t in texts)


# The test's own wording checks (deliberately not the generator's lists, nor the parser's).
_POSITIVE = {
    "congestion": r"congest|hyper(a)?emi",
    "secretion": r"secretion|discharge|\bpus\b",
    "neoplasm": r"mass|growth|neoplas",
}


def test_sidecar_agrees_with_text(cohort):
    root, entries = cohort
    for e in entries:
        text = (root / e["report"]).read_text()
        truth = _truth(root, e)
        grid = truth["findings"]
        assert truth["impression"]["text"] in text
        last = text.strip().splitlines()[-1]
        assert re.match(r"(impression|diagnosis|conclusion|endoscopic diagnosis)\s*:", last, re.I), last
        for finding, pattern in _POSITIVE.items():
            anywhere = any(grid[r][finding] != "absent" for r in MAIN_REGIONS)
            if anywhere:
                assert re.search(pattern, text, re.I), (e["report"], finding)
        for region, finding in truth["negated"]:
            assert grid[region][finding] == "absent", (e["report"], region, finding)
        if truth["impression"]["category"] == "normal":
            assert all(s == "absent" for g in grid.values() for s in g.values())
            body = text.rsplit("\n", 2)[0]
            for finding in ("congestion", "secretion"):
                assert not re.search(_POSITIVE[finding], body, re.I) or re.search(r"\bno\b|neither|without|negative",
                                                                                  body, re.I), e["report"]


def _redness(img: np.ndarray, mask: np.ndarray) -> float:
    px = img[mask].astype(np.float64)
    return float(np.mean(px[:, 0] - (px[:, 1] + px[:, 2]) / 2))


def _yellowness(img: np.ndarray, mask: np.ndarray) -> float:
    px = img[mask].astype(np.float64)
    return float(np.mean(np.clip((px[:, 1] - px[:, 2]) - 40, 0, None)))


def test_findings_drawn_in_their_region(cohort):
    """Congested walls are redder than the same wall elsewhere; secretion shows as yellow where reported."""
    root, entries = cohort
    masks = region_masks(SIZE)
    red_with, red_without, yel_with, yel_without = [], [], [], []
    for e in entries:
        img = np.asarray(Image.open(root / e["image"]))
        grid = _truth(root, e)["findings"]
        for r in MAIN_REGIONS:
            (red_with if grid[r]["congestion"] == "present" else red_without).append(_redness(img, masks[r]))
            (yel_with if grid[r]["secretion"] == "present" else yel_without).append(_yellowness(img, masks[r]))
    assert red_with and yel_with, "cohort too small to hold congestion and secretion"
    assert np.mean(red_with) > np.mean(red_without) + 15
    assert min(red_with) > np.median(red_without)
    assert np.mean(yel_with) > 3 * np.mean(yel_without) + 0.1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_frames"):
        generate_endoscopy(tmp_path, -1, seed=0)
    with pytest.raises(ValueError, match="image_size"):
        generate_endoscopy(tmp_path, 1, seed=0, image_size=8)
