"""The ``report_evaluation`` bundle's one workflow component: judge, then (optionally) aggregate.

``bundles/report_evaluation/configs/inference.json`` builds :class:`ReportEvaluation` and calls
:meth:`ReportEvaluation.run`; ``evaluate.json`` only sets ``aggregate`` to true. The inputs are
read as Stage II writes them (:func:`hicur_monai.evaluation.demo.study_inputs`): the held-out
question files of ``hicur instructions build`` as items and the answers files of
:class:`hicur_monai.vlm.generate.VLMAnswerer` as answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ReportEvaluation"]

PathLike = str | os.PathLike


class ReportEvaluation:
    """Judge every answer and write the aggregated report.

    Args:
        judge: a judge from the ``judges`` registry.
        output_dir: receives ``judgments.jsonl`` and (with ``aggregate``) ``report/``.
        dataset_dir: folder of items and ``answers/*.jsonl`` (see :func:`~hicur_monai.evaluation.demo.study_inputs`);
            ``None``: the offline demo study.
        items_file / answers_files: name the files directly instead (override ``dataset_dir``).
        answers_dir: folder of answers files when they are not ``dataset_dir/answers``.
        runs / workers: judge runs per answer and concurrent requests.
        aggregate: also aggregate judge (and physician) scores into ``report_dir``.
        physicians / combine / criteria / n_resamples / seed: passed to
            :func:`hicur_monai.evaluation.aggregate.aggregate`.
        report_dir: default ``output_dir/report``.
    """

    def __init__(self, judge: Any, output_dir: PathLike, dataset_dir: PathLike | None = None,
                 items_file: PathLike | Sequence[PathLike] | None = None,
                 answers_files: Sequence[PathLike] | None = None, answers_dir: PathLike | None = None,
                 runs: int = 3, workers: int = 1, aggregate: bool = False, physicians: PathLike | None = None,
                 combine: str = "pooled", criteria: Sequence[str] | None = None, n_resamples: int = 2000,
                 seed: int = 0, report_dir: PathLike | None = None) -> None:
        self.judge = judge
        self.output_dir = Path(output_dir)
        self.dataset_dir, self.answers_dir = dataset_dir, answers_dir
        self.items_file, self.answers_files = items_file, answers_files
        self.runs, self.workers = int(runs), int(workers)
        self.aggregate, self.physicians, self.combine = bool(aggregate), physicians, combine
        self.criteria, self.n_resamples, self.seed = criteria, int(n_resamples), int(seed)
        self.report_dir = Path(report_dir) if report_dir else self.output_dir / "report"

    def inputs(self) -> dict[str, Any]:
        """``{"items": path(s), "answers": [paths]}``: the named files, else those of ``dataset_dir``."""
        from hicur_monai.evaluation.demo import study_inputs

        study: dict[str, Any] = {}
        if self.items_file is None or self.answers_files is None:
            study = study_inputs(self.dataset_dir, self.output_dir, answers_dir=self.answers_dir)
        items = self.items_file if self.items_file is not None else study["items"]
        answers = list(self.answers_files) if self.answers_files is not None else study["answers"]
        if not answers:
            raise FileNotFoundError(f"{self.answers_dir or Path(str(self.dataset_dir)) / 'answers'}: no answers "
                                    "files (*.jsonl); write them with bundles/vl_alignment inference.json")
        return {"items": items, "answers": answers}

    def run(self) -> dict[str, Any]:
        """Judge (resumable), then aggregate when asked; return the written paths and counts."""
        from hicur_monai.evaluation.aggregate import aggregate
        from hicur_monai.evaluation.judge import CRITERIA, run_judge
        from hicur_monai.evaluation.records import read_answers, read_items

        study = self.inputs()
        items = read_items(study["items"])
        answers = read_answers(study["answers"], items)
        judgments = self.output_dir / "judgments.jsonl"
        records = run_judge(self.judge, items, answers, judgments, runs=self.runs, workers=self.workers)
        out: dict[str, Any] = {"items": len(items), "answers": len(answers), "judgments": str(judgments),
                               "records": len(records)}
        if self.aggregate:
            paths = aggregate(self.report_dir, judgments=judgments, physicians=self.physicians, items=study["items"],
                              combine=self.combine, n_resamples=self.n_resamples, seed=self.seed,
                              criteria=tuple(self.criteria or CRITERIA))
            out["report"] = {k: str(v) for k, v in paths.items()}
        return out
