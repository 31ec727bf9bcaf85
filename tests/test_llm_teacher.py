"""The teacher: rule-based backend, prompt, output checks, retries and recorded failures."""

from __future__ import annotations

import json
import re

import pytest

from hicur_monai.data.reports import parse_report
from hicur_monai.llm import ChatModel, ChatModelError, load_chat_model
from hicur_monai.llm.teacher import ChatTeacher, make_teacher, parse_teacher_output, teacher_messages
from hicur_monai.registry import names

REPORT = ("Findings: The left wall is congested and swollen. A mass on the roof cannot be excluded. "
          "No bleeding.\nImpression: nasopharyngitis; roof lesion to be confirmed.")


def _valid_reply(n: int = 3) -> dict:
    rounds = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(n - 1)]
    rounds.append({"question": "report please", "answer": "Findings:\n- Left wall: congestion.\nImpression: "
                   "inflammation.\nNote: must be confirmed by a qualified clinician."})
    return {"rounds": rounds}


def test_registries_list_the_backends_and_teachers():
    assert {"openai", "transformers", "rule"} <= set(names("llm_backends"))
    assert {"openai", "transformers", "rule"} <= set(names("teachers"))


def test_prompt_gives_text_only():
    msgs = teacher_messages(REPORT, 4)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert REPORT.strip() in msgs[1]["content"] and "4 rounds" in msgs[1]["content"]
    assert all("<image>" not in m["content"] for m in msgs)  # the teacher never gets the image
    with pytest.raises(ValueError):
        teacher_messages("   ", 3)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_rule_teacher_is_deterministic_grounded_and_safe(n):
    teacher = make_teacher("rule")
    a, b = teacher.generate(REPORT, n), teacher.generate(REPORT, n)
    assert a.ok and a.rounds == b.rounds and len(a.rounds) == n
    report = a.rounds[-1]["answer"]
    assert "Findings:" in report and "Impression:" in report
    assert re.search(r"confirmed by a qualified clinician", report)
    text = " ".join(r["answer"] for r in a.rounds).lower()
    # grounded: the roof mass stays uncertain, nothing the report does not state appears as present
    assert not re.search(r"ulceration (?:is seen|on the)", text)  # the report says nothing of ulceration
    assert "bleeding is seen" not in text  # "No bleeding." must not turn into a finding
    assert "suspected" in report.lower() and "definitely" not in text
    assert not re.search(r"\bwithin\s+\d+|\bradiotherapy|\bchemotherapy", text)


def test_rule_answers_only_from_the_report():
    teacher = make_teacher("rule")
    normal = teacher.generate("Nasopharynx: all walls smooth, no mass, no secretion.\nImpression: normal.", 5)
    assert normal.ok
    answers = " ".join(r["answer"] for r in normal.rounds[:-1]).lower()
    for word in ("congestion on", "swelling on", "mass lesion is seen", "bleeding is seen"):
        assert word not in answers
    parsed = parse_report("Nasopharynx: all walls smooth, no mass, no secretion.\nImpression: normal.")
    assert parsed.impression["category"] == "normal"
    assert "Impression: normal." in normal.rounds[-1]["answer"]


def test_rule_backend_refuses_other_prompts():
    with pytest.raises(ChatModelError, match="teacher prompt"):
        load_chat_model("rule")([{"role": "user", "content": "hello"}])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json at all", "json"),
        ('{"rounds": [1, 2, 3]}', "schema"),
        (json.dumps({"rounds": [{"question": "q", "answer": "Findings: x Impression: y. confirmed by a "
                                 "clinician"}] * 2}), "rounds"),
        (json.dumps({"rounds": [{"question": "q", "answer": "a"}] * 3}), "report"),
        (json.dumps({"rounds": [{"question": "q", "answer": "a"}] * 2
                     + [{"question": "q", "answer": "Findings: x\nImpression: y"}]}), "safety"),
        (json.dumps(_valid_reply()).replace("a0", "start radiotherapy within 2 weeks"), "treatment"),
        (json.dumps(_valid_reply()).replace("a0", "this is definitely cancer"), "overconfidence"),
    ],
)
def test_output_checks(raw, reason):
    rounds, got, detail = parse_teacher_output(raw)
    assert rounds is None and got == reason and detail


def test_output_checks_accept_fenced_json():
    rounds, reason, _ = parse_teacher_output("Here you go:\n```json\n" + json.dumps(_valid_reply(4)) + "\n```")
    assert reason == "ok" and len(rounds) == 4


class _Scripted(ChatModel):
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0

    def chat(self, messages, config=None):
        self.calls += 1
        item = self.replies.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_retry_then_success():
    model = _Scripted(["oops", json.dumps(_valid_reply(3))])
    result = ChatTeacher(model, max_attempts=3).generate(REPORT, 3)
    assert result.ok and model.calls == 2 and [a["reason"] for a in result.attempts] == ["json", "ok"]


def test_failure_keeps_every_raw_reply():
    model = _Scripted([ChatModelError("HTTP 500"), json.dumps(_valid_reply(4)), "{broken"])
    result = ChatTeacher(model, max_attempts=3).generate(REPORT, 3)
    assert not result.ok and result.rounds == [] and result.reason == "json"
    assert [a["reason"] for a in result.attempts] == ["model_error", "rounds", "json"]
    assert result.attempts[2]["raw"] == "{broken"


def test_unknown_teacher():
    with pytest.raises(KeyError, match="nope"):
        make_teacher("nope")


def test_rule_teacher_does_not_repeat_treatment_advice():
    text = ("Exophytic mass on the roof.\nImpression: nasopharyngeal carcinoma, start radiotherapy within 2 weeks.")
    result = make_teacher("rule").generate(text, 3)
    assert result.ok, result.detail
    final = result.rounds[-1]["answer"]
    assert "radiotherapy" not in final and "histological confirmation" in final
