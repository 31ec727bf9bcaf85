"""Instruction data: prompt pools, captions, LLaVA format, held-out split, resume, failures, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hicur_monai.cli import main
from hicur_monai.data.demo.endoscopy import generate_endoscopy
from hicur_monai.data.findings_text import brief_caption, detailed_description, diagnostic_report
from hicur_monai.data.instructions import (
    JsonlLog,
    build_instruction_data,
    collect_pairs,
    llava_record,
    load_prompt_pool,
    split_holdout,
    validate_llava,
    validate_llava_file,
)
from hicur_monai.data.reports import parse_report
from hicur_monai.llm.teacher import ChatTeacher, TeacherResult, make_teacher


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instr")
    generate_endoscopy(root, 24, seed=11, image_size=32)
    return root


def test_prompt_pools_are_ours_and_large_enough(tmp_path):
    brief, detailed = load_prompt_pool("brief"), load_prompt_pool("detailed")
    assert len(brief) >= 20 and len(detailed) >= 20 and not set(brief) & set(detailed)
    short = tmp_path / "pool.txt"
    short.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match="pool.txt: 2 distinct"):
        load_prompt_pool("brief", short)


def test_caption_description_and_report_follow_the_findings():
    p = parse_report("Both lateral walls congested. Suspicious mass on the roof. Posterior wall smooth. No bleeding.\n"
                     "Impression: ? NPC.")
    cap = brief_caption(p)
    assert cap.startswith("Nasopharyngoscopy:") and "left wall congested" in cap and "right wall congested" in cap
    assert "roof mass (suspected" in cap and "posterior wall smooth" in cap
    det = detailed_description(p)
    assert "suspected but not confirmed" in det and "no bleeding" in det.lower() and "? NPC." in det
    rep = diagnostic_report(p).splitlines()
    assert rep[1] == "Findings:" and rep[-2] == "Impression: ? NPC." and "clinician" in rep[-1]
    assert any(line.startswith("- Roof:") and "suspected" in line for line in rep)


def test_llava_validator_catches_problems(tmp_path):
    good = llava_record("a", "x.png", [("What is seen?", "A roof."), ("More?", "No.")])
    assert validate_llava([good]) == []
    assert good["conversations"][0]["value"].startswith("<image>\n")
    bad = [
        good,
        good,  # duplicate id
        {"id": "b", "image": "", "conversations": []},
        {"id": "c", "image": "y.png", "conversations": [{"from": "gpt", "value": "<image>\nhi"},
                                                         {"from": "human", "value": "x"}]},
        {"id": "d", "image": "y.png", "conversations": [{"from": "human", "value": "no token"},
                                                         {"from": "gpt", "value": ""},
                                                         {"from": "human", "value": "z"}]},
    ]
    errors = validate_llava(bad)
    for needle in ("duplicate id", "'image' must be", "at least 2 turns", "expected 'human'", "odd number",
                   "empty or non-string", "no <image>"):
        assert any(needle in e for e in errors), needle
    assert validate_llava({"not": "a list"})
    assert any("not found under" in e for e in validate_llava([good], image_root=tmp_path))
    f = tmp_path / "broken.json"
    f.write_text("[{", encoding="utf-8")
    assert "not JSON" in validate_llava_file(f)[0]


def test_collect_pairs_reports_what_it_skips(cohort, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for p in sorted((cohort / "endoscopy").glob("*.png"))[:5]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "orphan.png").write_bytes(b"x")
    pairs, skipped = collect_pairs(cohort / "reports", images)
    assert len(pairs) == 5 and pairs[0].patient.startswith("endo_p")
    reasons = [s["reason"] for s in skipped]
    assert sum(r.startswith("no image named") for r in reasons) == 19
    assert "no report for this image" in reasons
    with pytest.raises(FileNotFoundError, match="reports folder"):
        collect_pairs(tmp_path / "missing", images)


def test_holdout_is_by_patient_and_deterministic(cohort):
    pairs, _ = collect_pairs(cohort / "reports", cohort / "endoscopy")
    train, held = split_holdout(pairs, eval_fraction=0.25, seed=1)
    assert len(held) == 6 and not {p.patient for p in train} & {p.patient for p in held}
    assert [p.id for p in split_holdout(pairs, 0.25, seed=1)[1]] == [p.id for p in held]
    with pytest.raises(ValueError, match="nothing to train"):
        split_holdout(pairs, n_eval=len(pairs))


def test_build_resume_and_heldout(cohort, tmp_path):
    pairs, _ = collect_pairs(cohort / "reports", cohort / "endoscopy")
    out = tmp_path / "out"
    s = build_instruction_data(pairs, make_teacher("rule"), out, eval_fraction=0.25, seed=0, progress=False)
    assert s["pairs"] == 24 and s["qa_pairs"] == 24 and s["failures"] == 0
    assert s["alignment_brief"] == s["alignment_detailed"] == s["train_pairs"] == 18
    assert s["qa_rounds"] == sum(int(k) * v for k, v in s["qa_rounds_histogram"].items())
    assert set(s["qa_rounds_histogram"]) <= {"3", "4", "5"}
    for name in ("instruct_train.json", "alignment_brief.json", "alignment_detailed.json"):
        assert validate_llava_file(out / name, image_root=cohort / "endoscopy") == [], name
    # held-out reports are never in the training files
    train_images = {r["image"] for name in ("instruct_train.json", "alignment_brief.json")
                    for r in json.loads((out / name).read_text())}
    conv = [json.loads(x) for x in (out / "eval_conversation.jsonl").read_text().splitlines()]
    det = [json.loads(x) for x in (out / "eval_detailed.jsonl").read_text().splitlines()]
    assert len(det) == 6 and {d["category"] for d in det} == {"detailed"}
    assert {c["category"] for c in conv} == {"conversation"} and len(conv) >= 3 * 6
    assert not train_images & {d["image"] for d in det + conv}

    # resume: a rerun sends nothing to the teacher; a cut-off last line is repaired
    qa = out / "qa.jsonl"
    lines = qa.read_bytes().splitlines(keepends=True)
    qa.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])

    class Counting:
        name = "counting"

        def __init__(self):
            self.inner, self.calls = make_teacher("rule"), 0

        def generate(self, *a, **k):
            self.calls += 1
            return self.inner.generate(*a, **k)

    counting = Counting()
    s2 = build_instruction_data(pairs, counting, out, eval_fraction=0.25, seed=0, progress=False)
    assert counting.calls == 1 and s2["qa_resumed"] == 23 and s2["qa_pairs"] == 24
    assert s2["eval_pairs"] == s["eval_pairs"]


def test_failures_are_recorded_never_dropped(cohort, tmp_path):
    pairs, _ = collect_pairs(cohort / "reports", cohort / "endoscopy")

    class Flaky:
        name = "flaky"

        def __init__(self):
            self.n = 0

        def generate(self, text, n, kind):
            self.n += 1
            if self.n % 4 == 0:
                return TeacherResult(False, [], "json", "not JSON", [{"raw": "garbage", "reason": "json",
                                                                      "detail": "not JSON"}], "flaky")
            return make_teacher("rule").generate(text, n, kind)

    out = tmp_path / "f"
    s = build_instruction_data(pairs, Flaky(), out, eval_fraction=0.0, progress=False)
    assert s["failures"] == 6 and s["failures_by_reason"] == {"json": 6} and s["qa_pairs"] == 18
    fails = [json.loads(x) for x in (out / "qa_failures.jsonl").read_text().splitlines()]
    assert len(fails) == 6 and all(f["attempts"][0]["raw"] == "garbage" for f in fails)
    train = json.loads((out / "instruct_train.json").read_text())
    qa_ids = {r["id"][:-3] for r in train if r["id"].endswith("_qa")}
    assert len(qa_ids) == 18 and not qa_ids & {f["id"] for f in fails}
    # a rerun retries the failures; once they succeed they no longer count
    s2 = build_instruction_data(pairs, ChatTeacher("rule"), out, eval_fraction=0.0, progress=False)
    assert s2["failures"] == 0 and s2["qa_pairs"] == 24


def test_jsonl_log_rejects_corruption_in_the_middle(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"id": 1}\nnot json\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="x.jsonl:2"):
        JsonlLog(f)


def test_cli_build_and_validate(cohort, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["instructions", "build", "--reports", str(cohort / "reports"), "--images", str(cohort / "endoscopy"),
               "--teacher", "rule", "--out", str(out), "--no-progress", "--n-eval", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and "pairs: 24 (train 21, held-out 3" in text and "failures: 0" in text
    assert main(["instructions", "validate", str(out / "instruct_train.json")]) == 0
    (tmp_path / "bad.json").write_text("[{}]", encoding="utf-8")
    assert main(["instructions", "validate", str(tmp_path / "bad.json")]) == 1


def test_concurrent_teacher_gives_the_same_data(cohort, tmp_path):
    pairs, _ = collect_pairs(cohort / "reports", cohort / "endoscopy")
    one = build_instruction_data(pairs, make_teacher("rule"), tmp_path / "w1", seed=2, progress=False)
    three = build_instruction_data(pairs, make_teacher("rule"), tmp_path / "w3", seed=2, progress=False, workers=3)
    assert {k: v for k, v in one.items() if k != "image_folder"} == {k: v for k, v in three.items()
                                                                       if k != "image_folder"}

    def rows(d):
        return sorted((json.loads(x)["id"], x) for x in (d / "qa.jsonl").read_text().splitlines())

    assert rows(tmp_path / "w1") == rows(tmp_path / "w3")
    for name in ("instruct_train.json", "eval_conversation.jsonl"):
        a, b = (tmp_path / "w1" / name).read_text(), (tmp_path / "w3" / name).read_text()
        assert a == b, name


def test_dead_teacher_stops_early_and_keeps_work(cohort, tmp_path):
    pairs, _ = collect_pairs(cohort / "reports", cohort / "endoscopy")

    class Dead:
        name = "dead"
        calls = 0

        def generate(self, text, n, kind):
            Dead.calls += 1
            return TeacherResult(False, [], "model_error", "connection refused",
                                 [{"raw": "", "reason": "model_error", "detail": "connection refused"}], "dead")

    s = build_instruction_data(pairs, Dead(), tmp_path / "d", eval_fraction=0.0, progress=False,
                               max_consecutive_failures=5)
    assert Dead.calls == 5 and s["failures"] == 5 and "5 failures in a row" in s["aborted"]
    assert (tmp_path / "d" / "alignment_brief.json").is_file()
    s2 = build_instruction_data(pairs, make_teacher("rule"), tmp_path / "d", eval_fraction=0.0, progress=False)
    assert s2["aborted"] is None and s2["qa_pairs"] == 24 and s2["failures"] == 0
