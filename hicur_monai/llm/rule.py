"""The offline rule-based teacher: writes the Q&A of a teacher prompt from parsed findings.

It answers only teacher prompts (:func:`hicur_monai.llm.teacher.teacher_messages`): it
reads the report or caption between the source markers, parses it with
:mod:`hicur_monai.data.reports` and writes 3-5 rounds whose answers restate only what
the report says (uncertain stays uncertain; unmentioned is "not described"), the last
one a formatted diagnostic report ending with a safety line. Deterministic: the same
report and round count give the same conversation. Wording: ``prompts/phrasing.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hicur_monai.data.findings_text import (
    diagnostic_report,
    finding_regions,
    phrasing,
    region_summary,
    short_neg,
)
from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS
from hicur_monai.data.reports import ParsedReport, ReportParser
from hicur_monai.llm.base import ChatModel, GenerationConfig, Message
from hicur_monai.llm.teacher import _default_checks, extract_source
from hicur_monai.registry import LLM_BACKENDS

__all__ = ["RuleChatModel", "rule_conversation"]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _labels(regions: list[str]) -> str:
    return _join([phrasing()["region_labels"][r] for r in regions])


def _overview(parsed: ParsedReport) -> str:
    ph, rt = phrasing(), phrasing()["rule_teacher"]
    parts = []
    for f in FINDINGS:
        label = ph["finding_labels"][f]
        present, unsure = finding_regions(parsed, f, "present"), finding_regions(parsed, f, "uncertain")
        if present:
            parts.append(f"{label} on the {_labels(present)}")
        if unsure:
            parts.append(f"possible {short_neg(f)} on the {_labels(unsure)} (not certain)")
        if parsed.unlocalised.get(f) in ("present", "uncertain") and not present and not unsure:
            parts.append(f"{label} (location not stated)")
    if not parts:
        smooth = [r for r in MAIN_REGIONS if r in parsed.smooth]
        extra = f" The {_labels(smooth)} {'has' if len(smooth) == 1 else 'have'} smooth mucosa." if smooth else ""
        return rt["overview_none"] + extra
    return rt["overview_some"].format(findings=_join(parts))


def _region_answer(parsed: ParsedReport, region: str) -> str:
    ph, rt = phrasing(), phrasing()["rule_teacher"]
    label = ph["region_labels"][region]
    s = region_summary(parsed, region)
    out = []
    if s["present"]:
        out.append(f"The {label} shows {_join([ph['finding_labels'][f] for f in s['present']])}.")
    if s["uncertain"]:
        out.append(f"On the {label}, {_join([short_neg(f) for f in s['uncertain']])} is suspected but not confirmed.")
    if s["smooth"] and not s["present"] and not s["uncertain"]:
        out.append(f"The {label} has smooth mucosa with no abnormality described.")
    if s["negated"]:
        out.append(f"No {_join([short_neg(f) for f in s['negated']]).replace(' and ', ' or ')} is described there.")
    return " ".join(out) if out else rt["region_not_described"].format(region=label)


def _finding_answer(parsed: ParsedReport, finding: str) -> str:
    rt = phrasing()["rule_teacher"]
    word = short_neg(finding)
    present, unsure = finding_regions(parsed, finding, "present"), finding_regions(parsed, finding, "uncertain")
    if present:
        ans = rt["finding_present"].format(finding=word, regions=_labels(present))
        if unsure:
            ans += " " + rt["finding_uncertain"].format(finding_cap=_cap(word), regions=_labels(unsure))
        return ans
    if unsure:
        return rt["finding_uncertain"].format(finding_cap=_cap(word), regions=_labels(unsure))
    if parsed.unlocalised.get(finding) in ("present", "uncertain"):
        return f"{_cap(word)} is described, but its location is not stated."
    if any(f == finding for _, f in parsed.negated):
        return rt["finding_negated"].format(finding=word)
    return rt["finding_not_mentioned"].format(finding_cap=_cap(word))


def _suspicion_answer(parsed: ParsedReport) -> str:
    rt = phrasing()["rule_teacher"]
    present, unsure = finding_regions(parsed, "neoplasm", "present"), finding_regions(parsed, "neoplasm", "uncertain")
    if present:
        return rt["suspicion_present"].format(regions=_labels(present))
    if unsure:
        return rt["suspicion_uncertain"].format(regions=_labels(unsure))
    if any(f == "neoplasm" for _, f in parsed.negated):
        return rt["suspicion_negated"]
    return rt["suspicion_not_mentioned"]


def rule_conversation(parsed: ParsedReport, n_rounds: int, seed: int) -> list[dict[str, str]]:
    """``n_rounds`` (3-5) question/answer rounds grounded in ``parsed``; the last is the report."""
    if not 3 <= n_rounds <= 5:
        raise ValueError(f"n_rounds must be 3-5, got {n_rounds}")
    rng = np.random.default_rng(seed)
    rt = phrasing()["rule_teacher"]

    def pick(key: str) -> str:
        options = rt[key]
        return str(options[int(rng.integers(len(options)))])

    rounds = [{"question": pick("overview_questions"), "answer": _overview(parsed)}]
    # a region with something to say (else any wall), a finding question, a neoplasm question
    interesting = [r for r in parsed.findings if any(s != "absent" for s in parsed.findings[r].values())]
    region = str(rng.choice(interesting or list(MAIN_REGIONS)))
    stated = [f for f in FINDINGS if f != "neoplasm" and (finding_regions(parsed, f, "present")
                                                           or any(x == f for _, x in parsed.negated))]
    finding = str(rng.choice(stated or [f for f in FINDINGS if f != "neoplasm"]))
    middle = [
        {"question": pick("region_questions").format(region=phrasing()["region_labels"][region]),
         "answer": _region_answer(parsed, region)},
        {"question": pick("finding_questions").format(finding=short_neg(finding)),
         "answer": _finding_answer(parsed, finding)},
        {"question": pick("suspicion_questions"), "answer": _suspicion_answer(parsed)},
    ]
    order = rng.permutation(len(middle))[: n_rounds - 2]
    rounds += [middle[i] for i in sorted(order)]
    rounds.append({"question": pick("report_questions"), "answer": diagnostic_report(parsed)})
    return rounds


@LLM_BACKENDS.add_def("rule", "offline rule-based teacher: Q&A from the parsed report in a teacher prompt")
class RuleChatModel(ChatModel):
    """A deterministic chat model that answers teacher prompts from parsed findings.

    Args:
        patterns: extra report-pattern YAML files for the parser.
        default_rounds: rounds to write when the prompt does not say.
    """

    def __init__(self, patterns: Sequence[str | Path] | None = None, default_rounds: int = 4):
        self.parser = ReportParser(patterns)
        self.default_rounds = default_rounds
        self.name = "rule"

    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        source, n = extract_source(messages)
        parsed = self.parser.parse(source)
        impression = parsed.impression.get("text") or ""
        checks = _default_checks()
        if any(p.search(impression) for p in checks.treatment + checks.overconfidence):
            # never repeat treatment advice or over-confident wording from a report: say the category instead
            parsed.impression = {**parsed.impression, "source": "findings"}
        seed = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:4], "little")
        rounds = rule_conversation(parsed, n or self.default_rounds, seed)
        return json.dumps({"rounds": rounds}, ensure_ascii=False)
