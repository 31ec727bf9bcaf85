"""Shared tiny models for the vision-language tests (no files, no network)."""

from __future__ import annotations

TINY_VIT = {"kind": "timm_vit", "seed": 0,
            "kwargs": {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2,
                       "num_classes": 0}}
TINY_LLM = {"backend": "tiny_random", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 400, "seed": 0}


def tiny_instructions(demo_cohort, out):
    """Instruction data of the demo cohort's endoscopy reports (rule teacher, one held-out pair) in ``out``."""
    from hicur_monai.data.instructions import build_instruction_data, collect_pairs
    from hicur_monai.llm.teacher import make_teacher

    pairs, _ = collect_pairs(demo_cohort / "reports", demo_cohort / "endoscopy")
    build_instruction_data(pairs, make_teacher("rule"), out, n_eval=1, progress=False)
    return out


def tiny_vlm(**kw):
    from hicur_monai.networks.vlm import VisionLanguageModel

    return VisionLanguageModel.build(TINY_VIT, TINY_LLM, max_length=kw.pop("max_length", 256), **kw)


def conversation(n_rounds: int = 2) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "you are a careful endoscopist"}]
    for i in range(n_rounds):
        q = ("<image>\n" if i == 0 else "") + f"question {i}: is there a mass on the left wall?"
        msgs += [{"role": "user", "content": q},
                 {"role": "assistant", "content": f"answer {i}: a mass with ulceration"}]
    return msgs


def tiny_records(folder, n: int = 4) -> list[dict]:
    """``n`` LLaVA records with small random PNG images written to ``folder`` (the same images for a seed)."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        name = f"img_{i}.png"
        if not (folder / name).is_file():
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
        out.append({"id": f"r{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nis there a mass on the left wall?"},
            {"from": "gpt", "value": f"finding {i % 2}: a mass with ulceration"}]})
    return out
