"""LLM-as-judge scoring of model answers against reference answers.

Two protocols:

* **rubric** (:class:`RubricJudge`, the HiCur-NPC protocol): four criteria — accuracy,
  completeness, reliability, safety — each scored 0-10 with its own rubric prompt (data files
  in ``hicur_monai/evaluation/prompts/``), each prompt showing the question, the image
  caption / context, the answer and the reference; every (item, system, criterion) is judged
  ``runs`` times (default 3).
* **llava-med** (:class:`LlavaMedJudge`): one prompt shows the answer and the reference in
  random order and asks for one 1-10 score each; the result is reported as a relative
  score, model / reference x 100, comparable with LLaVA-Med's published numbers.

The judge is any :class:`hicur_monai.llm.base.ChatModel` (an OpenAI-compatible endpoint, a
local model, ...). It never sees which system wrote an answer. Replies are parsed strictly
(:func:`parse_score`, :func:`parse_score_pair`); an unparseable reply is retried and, when
every attempt fails, recorded with ``"score": null`` and the raw replies — never as 0.
:func:`run_judge` streams one JSON line per judgment and resumes an interrupted run.

:class:`LexicalJudge` is an offline baseline (word overlap with the reference) for smoke
tests and demos; it is not a substitute for an LLM or a physician.
"""

from __future__ import annotations

import abc
import logging
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message, load_chat_model
from hicur_monai.registry import JUDGES

from .records import Answer, Item, JsonlAppender

__all__ = [
    "CRITERIA",
    "PROMPTS_DIR",
    "ScoreParseError",
    "parse_score",
    "parse_score_pair",
    "load_prompt",
    "fill_prompt",
    "rubric_messages",
    "llava_med_messages",
    "Task",
    "Judge",
    "RubricJudge",
    "LlavaMedJudge",
    "LexicalJudge",
    "run_judge",
]

logger = logging.getLogger(__name__)

#: the four criteria of the HiCur-NPC protocol, each scored 0-10
CRITERIA: tuple[str, ...] = ("accuracy", "completeness", "reliability", "safety")
#: folder of the packaged prompt files
PROMPTS_DIR = Path(__file__).with_name("prompts")


class ScoreParseError(ValueError):
    """A judge reply does not contain a score in the declared format."""


_NUM = r"[+-]?\d+(?:\.\d+)?"
# "SCORE: 7", "Score = 7/10", "**SCORE:** 7" — alone on its line
_SCORE_LINE = re.compile(
    rf"^[ \t>*_#]*score[ \t*_]*[:=][ \t*_]*(?P<num>{_NUM})[ \t]*(?:/[ \t]*10)?[ \t*_.]*$",
    re.IGNORECASE | re.MULTILINE,
)
_SCORE_WORD = re.compile(r"^[ \t>*_#]*score[ \t*_]*[:=]", re.IGNORECASE | re.MULTILINE)
_PAIR_LINE = re.compile(rf"^\s*(?P<a>{_NUM})\s*[,; \t]\s*(?P<b>{_NUM})\s*$")


def _in_range(value: float, low: float, high: float, text: str) -> float:
    if not low <= value <= high:
        raise ScoreParseError(f"score {value:g} is outside {low:g}-{high:g} in reply {_short(text)!r}")
    return value


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_score(text: str, low: float = 0, high: float = 10) -> float:
    """Read the score from a rubric-judge reply.

    The declared format is one line ``SCORE: N`` (``N`` a number from ``low`` to ``high``,
    optionally followed by ``/10``); any other text may surround it. Light markdown
    (``**SCORE:** 7``) is tolerated.

    Raises:
        ScoreParseError: if there is no such line, if there are several with different
            numbers, if a ``SCORE:`` line holds something other than one number, or if the
            number is out of range.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScoreParseError("empty reply")
    matches = list(_SCORE_LINE.finditer(text))
    if not matches:
        if _SCORE_WORD.search(text):
            raise ScoreParseError(f"a SCORE line is present but does not hold exactly one number: {_short(text)!r}")
        raise ScoreParseError(f"no line of the form 'SCORE: N' in reply {_short(text)!r}")
    values = {float(m.group("num")) for m in matches}
    if len(values) > 1:
        raise ScoreParseError(f"{len(matches)} SCORE lines with different values {sorted(values)} in reply")
    if len(matches) != len(_SCORE_WORD.findall(text)):
        raise ScoreParseError(f"a SCORE line does not hold exactly one number: {_short(text)!r}")
    return _in_range(values.pop(), low, high, text)


def parse_score_pair(text: str, low: float = 1, high: float = 10) -> tuple[float, float]:
    """Read the two scores of a LLaVA-Med style reply: the first non-blank line is ``A B``.

    Raises:
        ScoreParseError: if the first non-blank line is not exactly two numbers in range.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScoreParseError("empty reply")
    first = next(line for line in text.splitlines() if line.strip())
    m = _PAIR_LINE.match(first)
    if not m:
        raise ScoreParseError(f"first line {_short(first)!r} is not two scores 'A B'")
    return _in_range(float(m.group("a")), low, high, text), _in_range(float(m.group("b")), low, high, text)


@lru_cache(maxsize=64)
def _read_prompt(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def load_prompt(name: str, prompts_dir: str | os.PathLike | None = None) -> str:
    """Text of prompt file ``<name>.txt`` from ``prompts_dir`` (default: the packaged prompts).

    A custom folder needs only the files it changes; the others come from the package.
    """
    if prompts_dir is not None:
        custom = Path(prompts_dir) / f"{name}.txt"
        if custom.is_file():
            return _read_prompt(str(custom))
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file {name}.txt in {prompts_dir or PROMPTS_DIR}")
    return _read_prompt(str(path))


def fill_prompt(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders of ``template``; other braces (e.g. in answers) stay as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def rubric_messages(item: Item, answer: str, criterion: str,
                    prompts_dir: str | os.PathLike | None = None) -> list[Message]:
    """The chat messages that ask for one criterion's score of one answer."""
    if criterion not in CRITERIA and not (prompts_dir and (Path(prompts_dir) / f"{criterion}.txt").is_file()):
        raise ValueError(f"unknown criterion {criterion!r}; known: {CRITERIA} (or a {criterion}.txt in prompts_dir)")
    header = fill_prompt(load_prompt("_header", prompts_dir), question=item.question,
                   context=item.context or "(none given)", reference=item.reference, answer=answer)
    user = "\n\n".join([header, load_prompt(criterion, prompts_dir), load_prompt("_footer", prompts_dir)])
    return [{"role": "system", "content": load_prompt("system", prompts_dir)}, {"role": "user", "content": user}]


def llava_med_messages(item: Item, answer_1: str, answer_2: str,
                       prompts_dir: str | os.PathLike | None = None) -> list[Message]:
    """The chat messages of the LLaVA-Med protocol (two answers, one prompt)."""
    user = fill_prompt(load_prompt("llava_med", prompts_dir), question=item.question,
                 context=item.context or "(none given)", answer_1=answer_1, answer_2=answer_2)
    return [{"role": "system", "content": load_prompt("system", prompts_dir)}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Task:
    """One judgment to make: an answer, a criterion and a repetition index."""

    item: Item
    answer: Answer
    criterion: str
    run: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.item.item_id, self.answer.system, self.criterion, self.run)


def _resolve_model(model: ChatModel | str, model_kwargs: Mapping[str, Any] | None) -> ChatModel:
    if isinstance(model, ChatModel):
        return model
    if isinstance(model, str):
        return load_chat_model(model, **dict(model_kwargs or {}))
    raise TypeError(f"model must be a ChatModel or an LLM backend name, got {type(model).__name__}")


class Judge(abc.ABC):
    """Scores answers; subclasses define the tasks and how one task is judged."""

    #: protocol name written into every record
    protocol: str = "judge"
    #: criteria this judge scores
    criteria: tuple[str, ...] = CRITERIA

    @property
    def name(self) -> str:
        """Identifier of the judge recorded in outputs (e.g. the chat model's name)."""
        return type(self).__name__

    def tasks(self, items: Sequence[Item], answers: Sequence[Answer], runs: int) -> list[Task]:
        """Every judgment to make, in a stable order."""
        by_id = {it.item_id: it for it in items}
        out = []
        for ans in answers:
            if ans.item_id not in by_id:
                raise ValueError(f"answer of system {ans.system!r} refers to unknown item {ans.item_id!r}")
            for run in range(runs):
                for criterion in self.criteria:
                    out.append(Task(by_id[ans.item_id], ans, criterion, run))
        return out

    @abc.abstractmethod
    def judge(self, task: Task) -> dict[str, Any]:
        """Judge one task; return the fields ``score`` (float or ``None``), ``status`` and more."""

    def record(self, task: Task) -> dict[str, Any]:
        """The full output record of one task."""
        head = {
            "item_id": task.item.item_id,
            "system": task.answer.system,
            "kind": task.item.kind,
            "criterion": task.criterion,
            "run": task.run,
            "protocol": self.protocol,
            "judge": self.name,
        }
        return {**head, **self.judge(task)}


class _ChatJudge(Judge):
    """A judge backed by a chat model, with strict parsing and retries."""

    def __init__(
        self,
        model: ChatModel | str,
        model_kwargs: Mapping[str, Any] | None = None,
        retries: int = 2,
        generation: GenerationConfig | Mapping[str, Any] | None = None,
        prompts_dir: str | os.PathLike | None = None,
        seed: int = 0,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.model = _resolve_model(model, model_kwargs)
        self.retries = retries
        if generation is None:
            generation = GenerationConfig(temperature=0.7, max_new_tokens=512)
        elif isinstance(generation, Mapping):
            generation = GenerationConfig(**generation)
        self.generation = generation
        self.prompts_dir = prompts_dir
        self.seed = seed

    @property
    def name(self) -> str:
        return getattr(self.model, "name", type(self.model).__name__)

    def _ask(self, messages: list[Message], parse: Callable[[str], Any], task: Task) -> tuple[Any, dict[str, Any]]:
        """Ask until ``parse`` succeeds; return ``(parsed or None, log fields)``."""
        replies: list[str | None] = []
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            # every run and attempt its own, reproducible seed
            config = replace(self.generation, seed=(self.generation.seed or 0) + self.seed + 1000 * task.run + attempt)
            try:
                reply = self.model(messages, config)
            except ChatModelError as err:
                replies.append(None)
                errors.append(f"model error: {err}")
                continue
            replies.append(reply)
            try:
                return parse(reply), {"attempts": attempt + 1, "replies": replies, "errors": errors}
            except ScoreParseError as err:
                errors.append(str(err))
        logger.warning("item %s system %s %s run %d: no parseable score after %d attempts (%s)",
                       task.item.item_id, task.answer.system, task.criterion, task.run,
                       self.retries + 1, errors[-1])
        return None, {"attempts": self.retries + 1, "replies": replies, "errors": errors}


@JUDGES.add_def("rubric", "HiCur-NPC rubric judge: accuracy, completeness, reliability, safety, 0-10 each")
class RubricJudge(_ChatJudge):
    """The four-criterion 0-10 rubric judge of the HiCur-NPC protocol.

    Args:
        model: a chat model, or the LLM-registry name of one (built with ``model_kwargs``).
        model_kwargs: arguments of the backend when ``model`` is a name.
        retries: extra attempts after an unparseable reply or a model error.
        generation: sampling settings (default temperature 0.7 so that repeated runs are
            independent samples, as in the original; each run and attempt gets its own seed).
        prompts_dir: folder of replacement prompt files (``system.txt``, ``accuracy.txt``, ...).
        criteria: subset / order of criteria to score.
        seed: base seed.
    """

    protocol = "rubric"

    def __init__(self, model: ChatModel | str, model_kwargs: Mapping[str, Any] | None = None, retries: int = 2,
                 generation: GenerationConfig | Mapping[str, Any] | None = None,
                 prompts_dir: str | os.PathLike | None = None, criteria: Sequence[str] = CRITERIA,
                 seed: int = 0) -> None:
        super().__init__(model, model_kwargs, retries, generation, prompts_dir, seed)
        self.criteria = tuple(criteria)
        for c in self.criteria:  # fail now, not after hours of judging
            load_prompt(c, prompts_dir)

    def judge(self, task: Task) -> dict[str, Any]:
        messages = rubric_messages(task.item, task.answer.answer, task.criterion, self.prompts_dir)
        score, log = self._ask(messages, parse_score, task)
        return {"score": score, "status": "ok" if score is not None else "missing", **log}


@JUDGES.add_def("llava_med", "LLaVA-Med protocol: answer and reference scored 1-10 in one prompt; relative score")
class LlavaMedJudge(_ChatJudge):
    """The LLaVA-Med evaluation protocol.

    One prompt shows the model answer and the reference answer as "Assistant 1" and
    "Assistant 2" in an order drawn per (item, system, run); the judge gives each a 1-10
    score. Records hold ``score`` (the model's), ``reference_score`` and ``order``;
    :func:`hicur_monai.evaluation.aggregate.relative_scores` turns them into
    model / reference x 100.
    """

    protocol = "llava-med"
    criteria = ("overall",)

    def judge(self, task: Task) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:{task.item.item_id}:{task.answer.system}:{task.run}")
        model_first = rng.random() < 0.5
        pair = (task.answer.answer, task.item.reference) if model_first else (task.item.reference, task.answer.answer)
        messages = llava_med_messages(task.item, *pair, prompts_dir=self.prompts_dir)
        scores, log = self._ask(messages, parse_score_pair, task)
        if scores is None:
            model_score = ref_score = None
        else:
            model_score, ref_score = scores if model_first else scores[::-1]
        return {"score": model_score, "reference_score": ref_score,
                "order": "model_first" if model_first else "reference_first",
                "status": "ok" if scores is not None else "missing", **log}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _overlap(a: list, b: list) -> tuple[float, float, float]:
    """Precision of ``a`` against ``b``, recall, F1 (multiset overlap)."""
    if not a or not b:
        return 0.0, 0.0, 0.0
    common = sum((Counter(a) & Counter(b)).values())
    p, r = common / len(a), common / len(b)
    return p, r, (2 * p * r / (p + r) if common else 0.0)


@JUDGES.add_def("lexical", "offline baseline: word overlap with the reference (smoke tests and demos only)")
class LexicalJudge(Judge):
    """Deterministic offline judge from word overlap with the reference answer.

    Scores (0-10, one decimal): accuracy = 10 x word precision (how much of the answer is in
    the reference), completeness = 10 x word recall, reliability = 10 x word-bigram F1,
    safety = 10 x word F1. These are lexical proxies that make the pipeline runnable without
    a model; they say nothing about clinical safety. Repeated runs give identical scores.
    """

    protocol = "rubric"

    @property
    def name(self) -> str:
        return "lexical-overlap"

    def judge(self, task: Task) -> dict[str, Any]:
        a, r = _words(task.answer.answer), _words(task.item.reference)
        p, rec, f1 = _overlap(a, r)
        bigram_f1 = _overlap(list(zip(a, a[1:])), list(zip(r, r[1:])))[2]
        value = {"accuracy": p, "completeness": rec, "reliability": bigram_f1, "safety": f1}[task.criterion]
        return {"score": round(10 * value, 1), "status": "ok", "attempts": 1, "replies": [], "errors": []}


def run_judge(
    judge: Judge,
    items: Sequence[Item],
    answers: Sequence[Answer],
    out: str | os.PathLike,
    runs: int = 3,
    resume: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Judge every answer ``runs`` times and stream the records to the JSON-lines file ``out``.

    Judgments already in ``out`` (from an interrupted run) are kept and not repeated,
    including ones recorded as missing; a record from another judge or protocol in the
    file is an error. Records are written as they complete.

    Args:
        judge: the judge.
        items: the evaluation items (with reference answers).
        answers: the answers to judge.
        out: output JSON-lines path.
        runs: repetitions of every judgment.
        resume: continue an existing ``out``; with ``False`` an existing file is an error.
        workers: concurrent requests (useful for HTTP judges).
        progress: show a progress bar.

    Returns:
        All records of ``out`` (old and new), in file order.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    tasks = judge.tasks(items, answers, runs)
    with JsonlAppender(out, resume=resume) as sink:
        done = set()
        for i, rec in enumerate(sink.records, 1):
            if rec.get("protocol") != judge.protocol or rec.get("judge") != judge.name:
                raise ValueError(f"{out}: record {i} was written by judge {rec.get('judge')!r} "
                                 f"({rec.get('protocol')!r} protocol), not {judge.name!r} ({judge.protocol!r}); "
                                 "write to another file")
            done.add((rec["item_id"], rec["system"], rec["criterion"], int(rec["run"])))
        todo = [t for t in tasks if t.key not in done]
        if done:
            logger.info("%s: resuming, %d of %d judgments already done", out, len(tasks) - len(todo), len(tasks))
        bar = _progress(len(tasks), len(tasks) - len(todo), progress)
        lock = threading.Lock()

        def work(task: Task) -> None:
            rec = judge.record(task)
            with lock:
                sink.write(rec)
                bar.update(1)

        try:
            if workers <= 1:
                for task in todo:
                    work(task)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for fut in [pool.submit(work, t) for t in todo]:
                        fut.result()
        finally:
            bar.close()
        records = list(sink.records)
    missing = sum(r.get("status") != "ok" for r in records)
    if missing:
        logger.warning("%s: %d of %d judgments have no parseable score (kept as missing)", out, missing, len(records))
    return records


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="judging", unit="judgment", disable=not enabled)

