"""Answer a file of questions about images with a trained vision-language model -> answers JSONL.

Input questions (``.json`` list or ``.jsonl``) in either of the two formats the project uses:

* the evaluation items of ``docs/evaluation.md``: ``{"item_id", "question", "image", "kind", ...}``;
* the held-out files of ``hicur instructions build`` (``eval_conversation.jsonl`` /
  ``eval_detailed.jsonl``): ``{"question_id", "text", "image", "category", "history", ...}``
  (``history``: earlier ``{"question", "answer"}`` rounds of the conversation).

Output: one line per (item, system), the answers format of the evaluation:
``{"item_id", "system", "question", "answer", "kind", "image", "seconds", "new_tokens"}``, appended and
fsynced line by line (:class:`hicur_monai.evaluation.records.JsonlAppender`); a rerun skips
items already answered. Items that cannot be answered (missing image, unreadable file) go
to ``<output>.errors.jsonl`` with the reason, never into the answers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hicur_monai.llm.base import GenerationConfig
from hicur_monai.vlm.data import load_image, read_records, resolve_image

__all__ = ["normalise_question", "read_questions", "VLMAnswerer"]

logger = logging.getLogger(__name__)


def normalise_question(rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One question record in either input format -> ``{"item_id", "question", "image", "kind", "history", ...}``.

    Field names are mapped by the evaluation's one table (:data:`~hicur_monai.evaluation.records.ITEM_ALIASES`);
    ``modality`` and ``image_folder`` are kept when present.

    Raises:
        ValueError: naming ``where`` and the missing field.
    """
    from hicur_monai.evaluation.records import canonical_item

    rec = canonical_item(rec, where)
    item_id, question = rec.get("item_id"), rec.get("question")
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"{where}: missing 'item_id' (or 'question_id')")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: missing 'question' (or 'text')")
    kind = rec.get("kind") or "conversation"
    history = []
    for k, h in enumerate(rec.get("history") or []):
        if not isinstance(h, Mapping) or not isinstance(h.get("question"), str) or not isinstance(h.get("answer"), str):
            raise ValueError(f"{where}: history[{k}] needs 'question' and 'answer' strings")
        history.append((h["question"], h["answer"]))
    out = {"item_id": item_id, "question": question, "image": rec.get("image"), "kind": kind, "history": history}
    return out | {k: rec[k] for k in ("modality", "image_folder") if rec.get(k) is not None}


def read_questions(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Questions from one or more files (see the module docstring), item ids unique across them.

    Raises:
        ValueError: a malformed record or a duplicate id (naming the file and record).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path in paths:
        for i, rec in enumerate(read_records(path), 1):
            q = normalise_question(rec, f"{path} record {i}")
            if q["item_id"] in seen:
                raise ValueError(f"{path} record {i}: duplicate item id {q['item_id']!r} "
                                 f"(first in {seen[q['item_id']]})")
            seen[q["item_id"]] = str(path)
            q["source"] = str(path)
            out.append(q)
    return out


def _image_fields(q: Mapping[str, Any]) -> dict[str, Any]:
    return {k: q[k] for k in ("modality", "image_folder") if k in q}


class VLMAnswerer:
    """Answer questions with a saved model; the ``run`` of ``bundles/vl_alignment/configs/inference.json``.

    Args:
        model: the saved model folder (or a built model).
        questions: question files (see :func:`read_questions`).
        output: the answers ``.jsonl`` file.
        image_folder: folder relative ``image`` paths resolve against (default: each question file's folder).
        system: the system name written in each answer line (default: the model folder's name).
        max_new_tokens / temperature / top_p / seed: generation settings.
        device: torch device; None picks CUDA when available.
        modality: modality of the images (intensity scaling).
        limit: answer only the first ``limit`` questions.
        progress: show a tqdm bar.
    """

    def __init__(self, model: Any, questions: str | os.PathLike | Sequence[str | os.PathLike],
                 output: str | os.PathLike, image_folder: str | os.PathLike | None = None,
                 system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = 0, device: str | None = None, modality: str = "endoscopy",
                 limit: int | None = None, progress: bool = True):
        from hicur_monai.networks.vlm import VisionLanguageModel

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, (str, os.PathLike)):
            self.system = system or Path(model).resolve().name
            model = VisionLanguageModel.from_pretrained(model, device=dev).merge_adapter()
        else:
            self.system = system or "vlm"
        self.model = model.eval()
        self.questions = read_questions(questions)[: limit if limit else None]
        self.output = Path(output)
        self.image_folder = Path(image_folder) if image_folder else None
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        self.modality = modality
        self.progress = progress

    def _image(self, q: Mapping[str, Any]) -> torch.Tensor | None:
        if not q.get("image"):
            return None
        source_dir = Path(q["source"]).parent
        path = resolve_image(q, self.image_folder or source_dir, source_dir)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} not found")
        return load_image(path, self.model.image_size, q.get("modality", self.modality))

    def run(self) -> dict[str, Any]:
        """Answer every question not yet in the output; return counts."""
        from hicur_monai.evaluation.records import JsonlAppender

        done = errors = 0
        with JsonlAppender(self.output) as out, JsonlAppender(self.output.with_suffix(".errors.jsonl")) as err_log:
            answered = {(r.get("item_id"), r.get("system")) for r in out.records}
            todo = [q for q in self.questions if (q["item_id"], self.system) not in answered]
            for q in tqdm(todo, desc=f"answers {self.system}", unit="q", disable=not self.progress):
                t0 = time.time()
                try:
                    image = self._image(q)
                    answer = self.model.chat(image, q["question"], history=q["history"], config=self.config)
                except (FileNotFoundError, ValueError, RuntimeError) as e:
                    errors += 1
                    logger.warning("%s: item %s not answered: %s", q["source"], q["item_id"], e)
                    err_log.write({"item_id": q["item_id"], "system": self.system, "error": str(e)})
                    continue
                out.write({"item_id": q["item_id"], "system": self.system, "question": q["question"], "answer": answer,
                           "kind": q["kind"], "image": q["image"], **_image_fields(q),
                           "seconds": round(time.time() - t0, 3),
                           "new_tokens": len(self.model.tokenizer(answer, add_special_tokens=False)["input_ids"])})
                done += 1
        summary = {"questions": len(self.questions), "answered_now": done,
                   "already_answered": len(self.questions) - len(todo),
                   "errors": errors, "output": str(self.output), "system": self.system}
        logger.info("answers: %s", summary)
        return summary
