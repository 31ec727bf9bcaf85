"""A small, fully offline evaluation study for demos and tests.

:func:`make_demo_study` writes items, answers of three synthetic systems and small images;
:func:`run_demo` runs the whole Stage II evaluation on it: the offline lexical judge
(3 runs), a rating database with three *simulated* physicians who submit through the same
store the website uses, the CSV export, and the aggregated tables and HTML report.

The systems are built to differ in a known way — ``near-reference`` rewrites the reference
lightly, ``partial`` keeps only its first sentence, ``generic`` says nothing specific —
so the report should rank them in that order. Nothing here is clinical evidence.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from hicur_monai.utils.io import atomic_write_text

__all__ = ["DEMO_SYSTEMS", "make_demo_study", "run_demo", "study_inputs"]

DEMO_SYSTEMS = ("near-reference", "partial", "generic")

_CASES = [
    ("Axial T1C MRI of the nasopharynx.", "An enhancing mass fills the left fossa of Rosenmuller. "
     "It extends into the left parapharyngeal space. A 12 mm enlarged retropharyngeal lymph node is seen on the left. "
     "Findings are suspicious for nasopharyngeal carcinoma; endoscopic biopsy is advised."),
    ("Endoscopic view of the nasopharynx.", "The mucosa of the right lateral wall is irregular and friable. "
     "A raised lesion with contact bleeding obliterates the right fossa of Rosenmuller. "
     "The appearance is suspicious for malignancy and a targeted biopsy is recommended."),
    ("Axial T2 MRI at the level of the skull base.", "Intermediate T2 signal tissue involves the clivus. "
     "The lesion erodes the floor of the sphenoid sinus. Skull base invasion indicates at least T3 disease. "
     "Correlation with contrast imaging is needed."),
    ("Contrast CT of the neck.", "Bilateral enlarged level II lymph nodes are present, the largest 25 mm on the right. "
     "The right node shows central necrosis. A primary nasopharyngeal tumour should be excluded by endoscopy."),
    ("Endoscopic view of the nasopharynx.", "The nasopharyngeal mucosa is smooth and symmetric. "
     "Both fossae of Rosenmuller are clear and the torus tubarius is normal. No mass or ulceration is seen."),
    ("Axial T1C MRI after radiotherapy.", "Symmetric mucosal enhancement without a focal mass. "
     "Mild T2 hyperintensity fits post-radiation change. No evidence of residual tumour; follow-up MRI is advised."),
]
_QUESTIONS = {
    "conversation": "What is the main abnormality in this image and what should be done next?",
    "detailed": "Describe the findings of this image in detail.",
}
_GENERIC = ("The image shows the nasopharynx. Some findings may be present. "
            "Clinical correlation is recommended.")
_SYNONYMS = {"mass": "lesion", "suspicious": "concerning", "enlarged": "prominent", "advised": "suggested",
             "recommended": "advised", "involves": "affects", "present": "seen"}


def study_inputs(dataset_dir: str | os.PathLike | None, output_dir: str | os.PathLike,
                 answers_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The items and answers files of an evaluation (:class:`~hicur_monai.evaluation.workflow.ReportEvaluation`).

    Args:
        dataset_dir: ``None`` for the demo study (written to ``output_dir/demo_study``); else
            a folder with ``items.jsonl`` (or, as ``hicur instructions build`` writes them,
            ``eval_conversation.jsonl`` / ``eval_detailed.jsonl``) and ``answers/*.jsonl``.
        output_dir: the bundle's output folder.
        answers_dir: the answers folder when it is not ``dataset_dir/answers``. The
            ``*.errors.jsonl`` files the VLM answerer writes beside its answers are not answers
            and are left out.

    Returns:
        ``{"items": path or list of paths, "answers": list of paths}``.

    Raises:
        FileNotFoundError: naming the folder and the files looked for.
    """
    if dataset_dir is None:
        return make_demo_study(Path(output_dir) / "demo_study")
    root = Path(dataset_dir)
    items: Any = root / "items.jsonl"
    if not items.is_file():
        items = sorted(root.glob("eval_*.jsonl"))
    answers = sorted(p for p in Path(answers_dir or root / "answers").glob("*.jsonl")
                     if not p.name.endswith(".errors.jsonl"))
    if not items:
        raise FileNotFoundError(f"{root}: no items.jsonl (nor eval_*.jsonl from 'hicur instructions build')")
    return {"items": items, "answers": answers}


def _demo_image(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = 0.35 + 0.1 * rng.standard_normal((size, size))
    img += 0.4 * (((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    cx, cy = rng.uniform(0.35, 0.65, 2)
    img += 0.35 * (((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.06) ** 2 < 1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def make_demo_study(out_dir: str | os.PathLike, n_items: int = 12, seed: int = 0) -> dict[str, Any]:
    """Write ``items.jsonl``, ``answers/<system>.jsonl`` and ``images/*.png`` under ``out_dir``.

    Returns:
        ``{"items": path, "answers": [paths], "images": folder}``.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items: list[Any] = []
    answers: dict[str, list[Any]] = {s: [] for s in DEMO_SYSTEMS}
    for i in range(n_items):
        caption, reference = _CASES[i % len(_CASES)]
        kind = "conversation" if i % 2 == 0 else "detailed"
        item_id = f"demo-{i:03d}"
        image = f"{item_id}.png"
        Image.fromarray(_demo_image(seed * 1000 + i)).save(out / "images" / image)
        items.append({"item_id": item_id, "question": _QUESTIONS[kind], "caption": caption, "reference": reference,
                      "image": image, "kind": kind})
        words = reference.split()
        near = " ".join(_SYNONYMS.get(w, w) if rng.random() < 0.7 else w for w in words)
        first = reference.split(". ")[0].rstrip(".") + "."
        for system, text in zip(DEMO_SYSTEMS, (near, first, _GENERIC)):
            answers[system].append({"item_id": item_id, "system": system, "question": _QUESTIONS[kind],
                                    "answer": text, "kind": kind})
    items_path = _jsonl(out / "items.jsonl", items)
    answer_paths = [_jsonl(out / "answers" / f"{s}.jsonl", rows) for s, rows in answers.items()]
    return {"items": items_path, "answers": answer_paths, "images": out / "images"}


def run_demo(out_dir: str | os.PathLike, n_items: int = 12, raters: int = 3, runs: int = 3, seed: int = 0,
             progress: bool = True) -> dict[str, Path]:
    """Run the whole offline evaluation: judge, simulated rating study, export, aggregation.

    Simulated physicians score each answer as the lexical judge's score plus rater noise
    (they stand in for people only to exercise the pipeline). Returns the written paths.
    """
    from hicur_monai.evaluation.aggregate import aggregate
    from hicur_monai.evaluation.judge import CRITERIA, LexicalJudge, run_judge
    from hicur_monai.evaluation.rating.store import RatingStore
    from hicur_monai.evaluation.records import read_answers, read_items

    out = Path(out_dir)
    study = make_demo_study(out / "study", n_items=n_items, seed=seed)
    items = read_items(study["items"])
    answers = read_answers(study["answers"], items)
    judgments = out / "judgments.jsonl"
    records = run_judge(LexicalJudge(), items, answers, judgments, runs=runs, progress=progress)
    judge_mean: dict[tuple[str, str, str], float] = {}
    for r in records:
        judge_mean[(r["item_id"], r["system"], r["criterion"])] = r["score"]

    db = out / "ratings.sqlite"
    if db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = RatingStore(db)
    store.add_study(items, answers, images_dir=study["images"])
    rng = np.random.default_rng(seed)
    for k in range(raters):
        rater = f"physician{k + 1}"
        store.add_rater(rater, f"demo-password-{k + 1}")
        bias = rng.normal(0, 0.5)
        for unit in store.units(rater):
            system = store.reveal(rater, unit.item_id, unit.label)  # only to simulate a rater
            scores = {c: float(np.clip(np.rint(judge_mean[(unit.item_id, system, c)] + bias + rng.normal(0, 1.0)),
                                       0, 10))
                      for c in CRITERIA}
            store.submit(rater, unit.item_id, unit.label, scores)
    physicians = store.export_csv(out / "physician_scores.csv")
    paths = aggregate(out / "report", judgments=judgments, physicians=physicians, items=study["items"],
                      title="Stage II evaluation — offline demo (lexical judge, simulated physicians)")
    return {"judgments": judgments, "ratings_db": db, "physician_scores": physicians, **paths}
