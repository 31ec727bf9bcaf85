"""The Q&A teacher: a chat model that turns a report (or caption) into a multi-turn conversation.

The teacher sees text only, never the image. :class:`ChatTeacher` wraps any registered
chat model (``openai``, ``transformers``, ``rule``): it writes the prompt (ours, in
``hicur_monai/data/prompts/teacher_*.txt``), checks the reply (JSON that parses, 3-5
rounds, a final diagnostic report with findings, impression and a safety line, no
treatment timing, no over-confidence; rules in ``prompts/output_checks.yaml``), retries a
malformed reply, and otherwise returns a failure carrying the reason and every raw reply:
a bad output is never dropped silently and never kept as half a conversation.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message, load_chat_model
from hicur_monai.registry import TEACHERS

__all__ = [
    "SOURCE_OPEN",
    "SOURCE_CLOSE",
    "TeacherResult",
    "ChatTeacher",
    "OutputChecks",
    "teacher_messages",
    "extract_source",
    "parse_teacher_output",
    "make_teacher",
]

PROMPT_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
#: markers around the report / caption inside the teacher prompt
SOURCE_OPEN, SOURCE_CLOSE = "<<<SOURCE", "SOURCE>>>"


@functools.lru_cache(maxsize=2)
def _prompt_files(folder: str) -> tuple[str, str]:
    d = Path(folder)
    return (d / "teacher_system.txt").read_text(encoding="utf-8").strip(), \
        (d / "teacher_user.txt").read_text(encoding="utf-8").strip()


def teacher_messages(source_text: str, n_rounds: int, source_kind: str = "report",
                     prompt_dir: str | Path = PROMPT_DIR) -> list[Message]:
    """The teacher prompt for one report or caption (no image, ever)."""
    if not source_text or not source_text.strip():
        raise ValueError("the teacher needs a non-empty report or caption")
    system, user = _prompt_files(str(prompt_dir))
    content = user.format(n_rounds=n_rounds, source_kind=source_kind, source_text=source_text.strip())
    if SOURCE_OPEN not in content or SOURCE_CLOSE not in content:
        raise ValueError(f"{prompt_dir}/teacher_user.txt must wrap {{source_text}} in {SOURCE_OPEN} ... {SOURCE_CLOSE}")
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def extract_source(messages: Sequence[Message]) -> tuple[str, int | None]:
    """The report/caption and the requested number of rounds from a teacher prompt.

    Raises:
        ChatModelError: the messages hold no teacher prompt.
    """
    for msg in reversed(messages):
        if msg["role"] != "user":
            continue
        m = re.search(re.escape(SOURCE_OPEN) + r"\n?(.*?)\n?" + re.escape(SOURCE_CLOSE), msg["content"], re.S)
        if m:
            n = re.search(r"\b(\d+)\s+rounds\b", msg["content"])
            return m.group(1).strip(), int(n.group(1)) if n else None
    raise ChatModelError(f"no teacher prompt found: the last user message has no {SOURCE_OPEN} ... {SOURCE_CLOSE} "
                         "block (the rule backend only writes Q&A from a report or caption)")


@dataclass
class OutputChecks:
    """Compiled checks for teacher outputs (see ``prompts/output_checks.yaml``)."""

    min_rounds: int
    max_rounds: int
    sections: dict[str, re.Pattern]
    safety: list[re.Pattern]
    treatment: list[re.Pattern]
    overconfidence: list[re.Pattern]

    @classmethod
    def load(cls, path: str | Path | None = None) -> OutputChecks:
        p = Path(path) if path else PROMPT_DIR / "output_checks.yaml"
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
        try:
            def comp(items: Sequence[str]) -> list[re.Pattern[str]]:
                return [re.compile(x, re.I) for x in items]

            return cls(int(doc["rounds"]["min"]), int(doc["rounds"]["max"]),
                       {k: re.compile(v, re.I) for k, v in doc["report_sections"].items()},
                       comp(doc["safety"]), comp(doc.get("treatment", [])), comp(doc.get("overconfidence", [])))
        except (KeyError, TypeError, re.error) as err:
            raise ValueError(f"{p}: bad output-check file ({type(err).__name__}: {err})") from None


def _json_block(raw: str) -> Any:
    text = raw.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    if not text.startswith(("{", "[")):
        start = text.find("{")
        end = text.rfind("}")
        if start < 0 or end <= start:
            raise ValueError("no JSON object in the reply")
        text = text[start:end + 1]
    return json.loads(text)


def parse_teacher_output(raw: str, checks: OutputChecks | None = None,
                         expected_rounds: int | None = None) -> tuple[list[dict[str, str]] | None, str, str]:
    """Check one teacher reply.

    Returns:
        ``(rounds, reason, detail)``: ``rounds`` is a list of ``{"question", "answer"}`` when the
        reply passes every check (reason ``"ok"``); otherwise ``None`` and the reason
        (``json``, ``schema``, ``rounds``, ``report``, ``safety``, ``treatment``,
        ``overconfidence``) with a detail message.
    """
    checks = checks or _default_checks()
    try:
        doc = _json_block(raw)
    except (ValueError, json.JSONDecodeError) as err:
        return None, "json", f"reply is not parseable JSON: {err}"
    rounds = doc.get("rounds") if isinstance(doc, dict) else doc
    if not isinstance(rounds, list) or not rounds:
        return None, "schema", "expected {'rounds': [{'question': ..., 'answer': ...}, ...]}"
    clean = []
    for i, r in enumerate(rounds):
        if not isinstance(r, dict):
            return None, "schema", f"rounds[{i}] is a {type(r).__name__}, expected an object"
        q, a = r.get("question"), r.get("answer")
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            return None, "schema", f"rounds[{i}] needs non-empty string 'question' and 'answer'"
        clean.append({"question": q.strip(), "answer": a.strip()})
    lo, hi = checks.min_rounds, checks.max_rounds
    if not lo <= len(clean) <= hi:
        return None, "rounds", f"{len(clean)} rounds, expected {lo}-{hi}"
    if expected_rounds is not None and len(clean) != expected_rounds:
        return None, "rounds", f"{len(clean)} rounds, {expected_rounds} were requested"
    last = clean[-1]["answer"]
    missing = [k for k, p in checks.sections.items() if not p.search(last)]
    if missing:
        return None, "report", f"the last answer is not a diagnostic report (missing: {', '.join(missing)})"
    if not any(p.search(last) for p in checks.safety):
        return None, "safety", "the diagnostic report has no line recommending clinical confirmation"
    everything = "\n".join(r["question"] + "\n" + r["answer"] for r in clean)
    for p in checks.treatment:
        m = p.search(everything)
        if m:
            return None, "treatment", f"treatment advice or timing: {m.group(0)!r}"
    for p in checks.overconfidence:
        m = p.search(everything)
        if m:
            return None, "overconfidence", f"over-confident wording: {m.group(0)!r}"
    return clean, "ok", ""


@functools.lru_cache(maxsize=1)
def _default_checks() -> OutputChecks:
    return OutputChecks.load()


@dataclass
class TeacherResult:
    """The outcome for one report: either ``rounds`` or a failure with every raw reply."""

    ok: bool
    rounds: list[dict[str, str]] = field(default_factory=list)
    reason: str = "ok"
    detail: str = ""
    attempts: list[dict[str, str]] = field(default_factory=list)  # {"raw", "reason", "detail"} per attempt
    model: str = ""


class ChatTeacher:
    """Write Q&A rounds from a report with any chat model, checking and retrying its output.

    Args:
        backend: the chat model (a :class:`ChatModel`) or its registry name to build one.
        max_attempts: tries per report before recording a failure.
        config: sampling settings; the seed is bumped on each retry.
        checks: output checks (default: the packaged ones).
        model_kwargs: arguments for building ``backend`` by name (e.g. ``model=`` for the
            endpoint's model name, ``path=`` for a local folder).
    """

    def __init__(self, backend: ChatModel | str = "rule", max_attempts: int = 3,
                 config: GenerationConfig | None = None, checks: OutputChecks | None = None,
                 prompt_dir: str | Path = PROMPT_DIR, **model_kwargs: Any):
        self.model = load_chat_model(backend, **model_kwargs) if isinstance(backend, str) else backend
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.config = config or GenerationConfig(max_new_tokens=1500, temperature=0.0, seed=0)
        self.checks = checks or _default_checks()
        self.prompt_dir = prompt_dir

    @property
    def name(self) -> str:
        return getattr(self.model, "name", type(self.model).__name__)

    def generate(self, source_text: str, n_rounds: int, source_kind: str = "report") -> TeacherResult:
        """Ask for ``n_rounds`` rounds about ``source_text``; retry bad replies."""
        if not self.checks.min_rounds <= n_rounds <= self.checks.max_rounds:
            raise ValueError(f"n_rounds={n_rounds} outside {self.checks.min_rounds}-{self.checks.max_rounds}")
        messages = teacher_messages(source_text, n_rounds, source_kind, self.prompt_dir)
        attempts: list[dict[str, str]] = []
        for k in range(self.max_attempts):
            cfg = GenerationConfig(**{**self.config.__dict__,
                                      "seed": None if self.config.seed is None else self.config.seed + k})
            try:
                raw = self.model(messages, cfg)
            except ChatModelError as err:
                attempts.append({"raw": "", "reason": "model_error", "detail": str(err)})
                continue
            rounds, reason, detail = parse_teacher_output(raw, self.checks, expected_rounds=n_rounds)
            attempts.append({"raw": raw, "reason": reason, "detail": detail})
            if rounds is not None:
                return TeacherResult(True, rounds, "ok", "", attempts, self.name)
        last = attempts[-1]
        return TeacherResult(False, [], last["reason"], last["detail"], attempts, self.name)


def make_teacher(spec: str, **kwargs: Any) -> ChatTeacher:
    """Build a teacher from a command-line spec: ``rule``, ``openai`` or ``local:PATH``.

    ``kwargs`` go to :class:`ChatTeacher` (``max_attempts``, ``config``) and to the backend.
    """
    teacher_keys = {"max_attempts", "config", "checks", "prompt_dir"}
    tk = {k: v for k, v in kwargs.items() if k in teacher_keys}
    mk = {k: v for k, v in kwargs.items() if k not in teacher_keys and v is not None}
    if spec.startswith("local:"):
        return ChatTeacher("transformers", path=spec.split(":", 1)[1], **tk, **mk)
    name = "transformers" if spec == "local" else spec
    from hicur_monai.registry import get

    return get("teachers", name)(**tk, **mk)


def _teacher_factory(backend: str) -> Callable[..., ChatTeacher]:
    def build(**kwargs: Any) -> ChatTeacher:
        return ChatTeacher(backend, **kwargs)

    build.__doc__ = f"A :class:`ChatTeacher` on the {backend!r} chat backend."
    return build


TEACHERS.add("rule", "offline rule-based teacher from parsed findings (default; deterministic)",
             _teacher_factory("rule"))
TEACHERS.add("openai", "teacher on an OpenAI-compatible HTTP endpoint", _teacher_factory("openai"))
TEACHERS.add("transformers", "teacher on a local transformers causal-LM folder", _teacher_factory("transformers"))
