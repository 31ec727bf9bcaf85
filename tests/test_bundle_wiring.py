"""Bundle configs are wiring: no block repeated across bundles, no programs in ``$`` expressions.

A JSON block (a dict of 3 or more keys, or any dict/list of 100 or more characters serialised)
that appears identically in two bundles' configs, or in two configs of one bundle where neither
is an overlay of the other, belongs in one shared fragment (``transforms/*.json``, included with
``%transforms/<file>.json::<key>``) or a library component. A bundle block equal to a fragment
should include the fragment.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MIN_KEYS = 3
MIN_CHARS = 100
MAX_EXPRESSION = 120

#: overlay -> the config it is added to, per bundle: an overlay may restate a block of its base
#: while replacing a larger subtree (blocks shared with any other file still count)
OVERLAYS: dict[str, dict[str, set[str]]] = {
    "hcmae_pretrain": {"evaluate.json": {"train.json"}, "multi_gpu_train.json": {"train.json"},
                       "base.json": {"train.json"}, "cpu_lean.json": {"train.json"}},
    "npc_segmentation": {"evaluate.json": {"train.json"}, "multi_gpu_train.json": {"train.json"},
                         "demo.json": {"train.json"}, "baseline.json": {"train.json"}},
    "npc_prognosis": {"evaluate.json": {"train.json"}, "gpu.json": {"train.json"}},
    "vl_alignment": {"pretrain.json": {"train.json"}, "multi_gpu_train.json": {"train.json", "pretrain.json"},
                     "fsdp.json": {"train.json", "pretrain.json", "multi_gpu_train.json"},
                     "zero3.json": {"train.json", "pretrain.json", "multi_gpu_train.json"}},
    "report_evaluation": {},
}

#: repeated on purpose, with the reason
ALLOWED: dict[str, str] = {
    # DistributedSampler of one process: tests and users override its keys by id
    # (train#sampler#num_replicas, ...), which a %macro string cannot take
    "torch.utils.data.DistributedSampler": "sub-keys are overridden by id",
}


def _config_files() -> list[Path]:
    """Every bundle config except metadata.json (Model-Zoo metadata is per bundle by schema)."""
    files = sorted(p for p in REPO.glob("bundles/*/configs/*.json") if p.name != "metadata.json")
    assert files, "no bundle configs found"
    return files


def _blocks(value: Any, path: str = "") -> list[tuple[str, str]]:
    """``(serialised block, json path)`` of every dict/list in ``value`` at least the minimum size."""
    out: list[tuple[str, str]] = []
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
        if (isinstance(value, dict) and len(value) >= MIN_KEYS) or len(text) >= MIN_CHARS:
            out.append((text, path or "/"))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            out += _blocks(v, f"{path}/{k}")
    return out


def _owner(path: Path) -> str:
    """The bundle a config belongs to, or ``"transforms"`` for the shared fragments."""
    parts = path.parts
    return parts[parts.index("bundles") + 1] if "bundles" in parts else "transforms"


def _related(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` are one file, or one bundle's overlay and its base."""
    if a == b:
        return True
    if _owner(a) != _owner(b) or _owner(a) == "transforms":
        return False
    overlays = OVERLAYS.get(_owner(a), {})
    return a.name in overlays.get(b.name, set()) or b.name in overlays.get(a.name, set())


def _allowed(text: str) -> bool:
    return any(f'"_target_": "{target}"' in text for target in ALLOWED)


def find_repeated_blocks(files: list[Path], root: Path = REPO) -> list[str]:
    """Blocks that occur in two files that are neither the same file nor overlay and base."""
    where: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for f in files:
        for text, path in _blocks(json.loads(f.read_text())):
            where[text].append((f, path))
    found = []
    for text, locs in where.items():
        pairs = [(x, y) for i, x in enumerate(locs) for y in locs[i + 1:] if not _related(x[0], y[0])]
        if pairs and not _allowed(text):
            (fa, pa), (fb, pb) = pairs[0]
            found.append(f"{fa.relative_to(root)}:{pa} == {fb.relative_to(root)}:{pb} ({len(text)} chars)")
    return found


def test_every_bundle_is_listed_with_its_overlays():
    bundles = {p.parent.parent.name for p in _config_files()}
    assert bundles == set(OVERLAYS)
    for bundle, overlays in OVERLAYS.items():
        names = {p.name for p in (REPO / "bundles" / bundle / "configs").glob("*.json")}
        assert set(overlays) | {b for bases in overlays.values() for b in bases} <= names, bundle


def test_no_json_block_repeated_across_bundles():
    fragments = sorted((REPO / "transforms").glob("*.json"))
    found = [f for f in find_repeated_blocks(_config_files() + fragments)
             # the fragment files among themselves: each is self-contained by design (no nested macros)
             if not all(part.startswith("transforms/") for part in re.findall(r"(\S+\.json):", f))]
    assert not found, "repeated JSON blocks (move to a transforms/ fragment or a library component):\n" + \
        "\n".join(found)


def test_the_check_finds_a_repeated_block(tmp_path):
    """The detector itself: a handler block copied into a second bundle is found, an overlay's is not."""
    block = {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "epoch_level": True,
             "interval": "@val_interval"}
    for bundle in ("npc_segmentation", "npc_prognosis"):  # names with declared overlays
        (tmp_path / "bundles" / bundle / "configs").mkdir(parents=True)
    files = [tmp_path / f"bundles/{b}/configs/train.json" for b in ("npc_segmentation", "npc_prognosis")]
    for f in files:
        f.write_text(json.dumps({"handlers": [block]}))
    found = find_repeated_blocks(files, root=tmp_path)
    # the whole file, the list and the handler
    assert len(found) == 3 and "bundles/npc_segmentation/configs/train.json:/handlers/0 ==" in found[2]
    assert find_repeated_blocks(files[:1], root=tmp_path) == []
    overlay = tmp_path / "bundles/npc_segmentation/configs/multi_gpu_train.json"  # an overlay of its train.json
    overlay.write_text(json.dumps({"train#handlers": [block]}))
    assert find_repeated_blocks([files[0], overlay], root=tmp_path) == []


def _expressions(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [e for v in value.values() for e in _expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in _expressions(v)]
    return [value] if isinstance(value, str) and value.startswith("$") else []


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_expressions_are_wiring_not_programs(path: Path):
    for expr in _expressions(json.loads(path.read_text())):
        assert not re.search(r"\bif\b|\blambda\b", expr), f"{path.name}: conditional in {expr!r}"
        assert len(expr) <= MAX_EXPRESSION, f"{path.name}: {len(expr)}-character expression {expr[:60]!r}..."
