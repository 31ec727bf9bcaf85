"""Input and output records of the Stage II evaluation: items, answers and judgment streams.

Two JSON-lines inputs describe an evaluation (see ``docs/evaluation.md``):

* **items** — one line per question: ``{"item_id", "question", "caption" | "context",
  "reference", "image", "kind"}`` where ``kind`` is ``"conversation"`` or ``"detailed"``;
* **answers** — one line per (item, system): ``{"item_id", "system", "answer", ...}``
  (``question`` and ``kind`` may be repeated there; the item's own values are used).

The stage II files are read as they come out (:data:`ITEM_ALIASES`, :data:`ANSWER_ALIASES`,
the one place where other field names are mapped): the held-out question files of
``hicur instructions build`` (``eval_conversation.jsonl``, ``eval_detailed.jsonl``:
``question_id`` -> ``item_id``, ``text`` -> ``question``, ``category`` -> ``kind``) serve as
items, and answers in the LLaVA ``model_vqa`` layout (``question_id`` -> ``item_id``,
``text`` -> ``answer``, ``model_id`` -> ``system``) as answers; the answers
:class:`hicur_monai.vlm.generate.VLMAnswerer` writes already use the names above. A line
giving both a name and its alias with different values is an error.

Every reader error names the file, the line and the field. Judgments are streamed to a
JSON-lines file by :class:`JsonlAppender`, which flushes and fsyncs each line and, on resume,
drops a half-written last line left by a crash (and nothing else).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "ITEM_ALIASES",
    "ANSWER_ALIASES",
    "canonical_item",
    "canonical_answer",
    "Item",
    "Answer",
    "iter_jsonl",
    "read_items",
    "read_answers",
    "JsonlAppender",
]

logger = logging.getLogger(__name__)

#: question kinds of the original protocol
KINDS = ("conversation", "detailed")

#: other names of item fields -> ours: the held-out files of ``hicur instructions build``
ITEM_ALIASES: dict[str, str] = {"question_id": "item_id", "text": "question", "category": "kind"}
#: other names of answer fields -> ours: LLaVA's ``model_vqa`` answers layout
ANSWER_ALIASES: dict[str, str] = {"question_id": "item_id", "text": "answer", "model_id": "system"}


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    Attributes:
        item_id: unique identifier.
        question: the question put to every system.
        context: the image caption / report excerpt the judge sees in place of the image.
        reference: the reference ("upper bound") answer; may be empty until generated.
        kind: ``"conversation"`` or ``"detailed"``.
        image: path of the image shown to physicians (relative paths resolve against the
            folder given to the rating site), or ``""``.
        extra: any other fields of the line, kept verbatim.
    """

    item_id: str
    question: str
    context: str = ""
    reference: str = ""
    kind: str = "conversation"
    image: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**extra, **d}


@dataclass(frozen=True)
class Answer:
    """One system's answer to one item."""

    item_id: str
    system: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSON-lines file.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file and line of a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _canonical(obj: dict[str, Any], aliases: dict[str, str], where: str) -> dict[str, Any]:
    """``obj`` with aliased field names renamed to ours (see :data:`ITEM_ALIASES`).

    Raises:
        ValueError: naming ``where`` and both fields when a line gives a field under both
            names with different values.
    """
    out = dict(obj)
    for alias, name in aliases.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if name in out and out[name] != value:
            raise ValueError(f"{where}: fields {name!r} and {alias!r} (another name for it) differ: "
                             f"{out[name]!r} vs {value!r}")
        out[name] = value
    return out


def canonical_item(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An item / question record with our field names (:data:`ITEM_ALIASES`); the one mapping for every reader."""
    return _canonical(dict(obj), ITEM_ALIASES, where)


def canonical_answer(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An answer record with our field names (:data:`ANSWER_ALIASES`)."""
    return _canonical(dict(obj), ANSWER_ALIASES, where)


def _paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _text_field(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            other = [a for a, name in {**ITEM_ALIASES, **ANSWER_ALIASES}.items() if name == key]
            raise ValueError(f"{where}: missing field {key!r}" + (f" (or {other[0]!r})" if other else ""))
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("_id"):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{where}: field {key!r} is empty")
    return value


def read_items(path: str | os.PathLike | Sequence[str | os.PathLike], require_reference: bool = True) -> list[Item]:
    """Read and validate items JSON-lines files (ours, or the held-out files of ``hicur instructions build``).

    Args:
        path: a file or a list of files (e.g. ``eval_conversation.jsonl`` and ``eval_detailed.jsonl``).
        require_reference: fail on items without a ``reference`` answer.

    Raises:
        ValueError: naming file, line and field for a missing/ill-typed field, an unknown
            ``kind`` or a duplicate ``item_id`` (across all the files).
    """
    items: list[Item] = []
    seen: dict[str, str] = {}
    known = {"item_id", "question", "caption", "context", "reference", "kind", "image"}
    for obj, where in _lines(path, ITEM_ALIASES):
        item_id = _text_field(obj, "item_id", where)
        if item_id in seen:
            raise ValueError(f"{where}: duplicate item_id {item_id!r} (first at {seen[item_id]})")
        seen[item_id] = where
        kind = _text_field(obj, "kind", where, required=False) or "conversation"
        if kind not in KINDS:
            raise ValueError(f"{where}: field 'kind' is {kind!r}, expected one of {KINDS}")
        context = _text_field(obj, "context", where, required=False) or _text_field(
            obj, "caption", where, required=False
        )
        items.append(
            Item(
                item_id=item_id,
                question=_text_field(obj, "question", where),
                context=context,
                reference=_text_field(obj, "reference", where, required=require_reference),
                kind=kind,
                image=_text_field(obj, "image", where, required=False),
                extra={k: v for k, v in obj.items() if k not in known},
            )
        )
    if not items:
        raise ValueError(f"{', '.join(map(str, _paths(path)))}: no items")
    return items


def _lines(paths: str | os.PathLike | Sequence[str | os.PathLike],
           aliases: dict[str, str]) -> Iterator[tuple[dict[str, Any], str]]:
    """``(record with our field names, "file:line")`` for every line of ``paths``."""
    for path in _paths(paths):
        for lineno, obj in iter_jsonl(path):
            where = f"{path}:{lineno}"
            yield _canonical(obj, aliases, where), where


def read_answers(
    paths: str | os.PathLike | Sequence[str | os.PathLike], items: Iterable[Item] | None = None
) -> list[Answer]:
    """Read answers from one or more JSON-lines files.

    Args:
        paths: a file or a list of files (e.g. one per system).
        items: when given, every answer must refer to one of these items.

    Raises:
        ValueError: naming file, line and field for a bad line, an unknown ``item_id`` or a
            second answer of the same system to the same item.
    """
    paths = _paths(paths)
    known_items = {it.item_id for it in items} if items is not None else None
    answers: list[Answer] = []
    seen: dict[tuple[str, str], str] = {}
    for obj, where in _lines(paths, ANSWER_ALIASES):
        item_id = _text_field(obj, "item_id", where)
        system = _text_field(obj, "system", where)
        answer = _text_field(obj, "answer", where, required=False)
        if "answer" not in obj:
            raise ValueError(f"{where}: missing field 'answer'")
        if known_items is not None and item_id not in known_items:
            raise ValueError(f"{where}: item_id {item_id!r} is not in the items file")
        key = (item_id, system)
        if key in seen:
            raise ValueError(f"{where}: second answer of system {system!r} to item {item_id!r} (first at {seen[key]})")
        seen[key] = where
        answers.append(Answer(item_id, system, answer, {k: v for k, v in obj.items()
                                                         if k not in ("item_id", "system", "answer")}))
    if not answers:
        raise ValueError(f"no answers in {', '.join(map(str, paths))}")
    return answers


def _parse_record(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class JsonlAppender:
    """Append-only JSON-lines stream that survives interruption.

    Opening an existing file reads its records (:attr:`records`); a last line cut short by a
    crash (no newline, or not JSON) is removed with a warning, while a damaged line *before*
    the end is an error, since that is not what an interruption leaves. Each :meth:`write`
    appends one line, flushes and fsyncs it.

    Args:
        path: the output file (created with its folder if absent).
        resume: keep existing records; with ``False`` an existing file is an error, so that
            finished work is never overwritten by accident.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = True) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            if not resume:
                raise FileExistsError(f"{self.path} exists; resume it, or choose another output file")
            self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1  # everything before ``cut`` ends with a newline
        body, tail = data[:cut], data[cut:]
        for lineno, raw in enumerate(body.split(b"\n")[:-1], 1):
            if not raw.strip():
                continue
            obj = _parse_record(raw)
            if obj is None:
                raise ValueError(f"{self.path}:{lineno}: damaged record before the end of the file; "
                                 "fix or remove that line before resuming")
            self.records.append(obj)
        if tail.strip():
            obj = _parse_record(tail)
            if obj is None:  # a write cut short by an interruption
                logger.warning("%s: dropping a half-written last line left by an interruption", self.path)
                with self.path.open("r+b") as fh:
                    fh.truncate(cut)
            else:  # complete except for its newline
                self.records.append(obj)
                with self.path.open("ab") as fh:
                    fh.write(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and make it durable."""
        self._fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
