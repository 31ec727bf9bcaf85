"""Stage II evaluation: LLM-judge scoring, aggregation, agreement and the physician rating site.

Importing this package registers the judges in :data:`hicur_monai.registry.JUDGES`
(``"rubric"``, ``"llava_med"``, ``"lexical"``). The rating web app
(:mod:`hicur_monai.evaluation.rating`) is imported only when used, so Gradio is needed only
for it.
"""

from __future__ import annotations

from hicur_monai.evaluation.judge import (
    CRITERIA,
    Judge,
    LexicalJudge,
    LlavaMedJudge,
    RubricJudge,
    ScoreParseError,
    parse_score,
    parse_score_pair,
    run_judge,
)
from hicur_monai.evaluation.records import Answer, Item, read_answers, read_items

__all__ = [
    "CRITERIA",
    "Answer",
    "Item",
    "Judge",
    "LexicalJudge",
    "LlavaMedJudge",
    "RubricJudge",
    "ScoreParseError",
    "parse_score",
    "parse_score_pair",
    "read_answers",
    "read_items",
    "run_judge",
]
