"""Stage II measured objectively: finding-F1 of generated reports on held-out endoscopy images.

For each held-out endoscopy pair of an instruction folder (``pairs.json`` of
``hicur instructions build``) the model writes a report (the pair's held-out detailed-description
question), the region parser reads it, and :mod:`hicur_monai.evaluation.findings_f1` scores it
per (region, finding) against the ``.json`` sidecar, beside two image-blind baselines of the
training split (majority class per cell; the best constant report). Writes ``findings_f1.json``
(the schema of ``docs/evaluation.md``), ``findings_f1.md`` and ``generated.jsonl`` (every report with its parsed grid).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_QUESTION", "held_out_pairs", "read_truth", "findings_eval"]

#: used when a held-out pair has no question in ``eval_detailed.jsonl``
DEFAULT_QUESTION = "Describe this nasopharyngoscopy image in detail, wall by wall."


def held_out_pairs(instructions_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, eval)`` endoscopy pairs of an instruction folder.

    Raises:
        FileNotFoundError / ValueError: no ``pairs.json`` (an older build), or no held-out endoscopy pair.
    """
    path = Path(instructions_dir) / "pairs.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; rebuild the folder with 'hicur instructions build'")
    pairs = [p for p in json.loads(path.read_text(encoding="utf-8")) if p.get("modality", "endoscopy") == "endoscopy"]
    train = [p for p in pairs if p["split"] == "train"]
    held = [p for p in pairs if p["split"] == "eval"]
    if not held:
        raise ValueError(f"{path}: no held-out endoscopy pair to evaluate")
    return train, held


def read_truth(data_dir: str | os.PathLike, pair: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The ground-truth findings grid of a pair (``<data>/reports/<report stem>.json``).

    Raises:
        FileNotFoundError / ValueError: naming the sidecar that is missing or has no ``findings``.
    """
    path = Path(data_dir) / "reports" / Path(pair["report"]).with_suffix(".json").name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth findings of {pair['id']} not found")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("findings"), dict):
        raise ValueError(f"{path}: no 'findings' object")
    return doc["findings"]


def _questions(instructions_dir: Path) -> dict[str, str]:
    path = instructions_dir / "eval_detailed.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return {r["pair_id"]: r["text"] for r in rows if "pair_id" in r}


def _generate(model: Any, data: Path, held: list[dict[str, Any]], questions: dict[str, str],
              max_new_tokens: int) -> list[dict[str, Any]]:
    from hicur_monai.data.reports import ReportParser
    from hicur_monai.llm.base import GenerationConfig
    from hicur_monai.vlm.data import load_image

    parser, config = ReportParser(), GenerationConfig(max_new_tokens=max_new_tokens)
    rows = []
    for p in held:
        path = data / "endoscopy" / p["image"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image of held-out pair {p['id']} not found")
        question = questions.get(p["id"], DEFAULT_QUESTION)
        answer = model.chat(load_image(path, model.image_size, "endoscopy"), question, config=config)
        rows.append({"id": p["id"], "image": p["image"], "question": question, "answer": answer,
                     "parsed": parser.parse(answer).findings if answer.strip() else {}})
    return rows


def findings_eval(model: Any, instructions_dir: str | os.PathLike, data_dir: str | os.PathLike,
                  out_dir: str | os.PathLike, limit: int | None = None, max_new_tokens: int = 160,
                  device: str | None = None, command: str = "") -> dict[str, Any]:
    """Generate, parse and score; write ``out_dir/findings_f1.json`` and return its content.

    Args:
        model: a saved model folder or a built :class:`~hicur_monai.networks.vlm.VisionLanguageModel`.
        instructions_dir: the folder of ``hicur instructions build`` (``pairs.json``).
        data_dir: the cohort (``endoscopy/`` images, ``reports/<id>.json`` ground truth).
        limit: score only the first ``limit`` held-out images.
        command: the command line recorded in the result.
    """
    from hicur_monai.evaluation.findings_f1 import PREDICTORS, constant_grid, majority_grid, markdown_table, score_grids
    from hicur_monai.utils.io import atomic_write_json, atomic_write_text

    instructions_dir, data, out = Path(instructions_dir), Path(data_dir), Path(out_dir)
    train, held = held_out_pairs(instructions_dir)
    held = held[: limit if limit else None]
    truth = [read_truth(data, p) for p in held]
    train_truth = [read_truth(data, p) for p in train]
    majority, constant = majority_grid(train_truth), constant_grid(train_truth)
    if isinstance(model, (str, os.PathLike)):
        from hicur_monai.networks.vlm import VisionLanguageModel

        model = VisionLanguageModel.from_pretrained(model, device=device).merge_adapter()
    rows = _generate(model.eval(), data, held, _questions(instructions_dir), max_new_tokens)
    predicted = {"model": [r["parsed"] for r in rows], "majority": [majority] * len(held),
                 "constant": [constant] * len(held)}
    scores = {who: score_grids(predicted[who], truth) for who in PREDICTORS}
    result = {"n_images": len(held), "n_train_images": len(train), **scores, "majority_grid": majority,
              "constant_grid": constant, "command": command}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "generated.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(out / "findings_f1.json", result)
    atomic_write_text(out / "findings_f1.md", markdown_table(scores) + "\n")
    return result
