"""Judge: strict score parsing, retries, blinding, streaming and resume, LLaVA-Med protocol."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest

from hicur_monai.evaluation import judge as J
from hicur_monai.evaluation.records import Answer, Item, JsonlAppender, read_answers, read_items
from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig
from hicur_monai.registry import create, names


class Scripted(ChatModel):
    """A chat model whose replies come from a list (cycled) or a function of the prompt."""

    name = "scripted"

    def __init__(self, replies: Sequence[str | Exception] | Callable[[str], str], stop_after: int | None = None):
        self.replies = replies
        self.calls: list[list[dict]] = []
        self.configs: list[GenerationConfig | None] = []
        self.stop_after = stop_after

    def chat(self, messages, config=None):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(list(messages))
        self.configs.append(config)
        if callable(self.replies):
            return self.replies(messages[-1]["content"])
        reply = self.replies[(len(self.calls) - 1) % len(self.replies)]
        if isinstance(reply, Exception):
            raise reply
        return reply


ITEMS = [
    Item("i1", "What is shown?", "Axial T1C MRI.", "A left nasopharyngeal mass {with braces}.", "conversation"),
    Item("i2", "Describe the findings.", "Endoscopy.", "Smooth mucosa, no mass.", "detailed"),
]
ANSWERS = [Answer(i.item_id, s, f"answer {k} to {i.item_id}")
           for i in ITEMS for k, s in enumerate(("SYS_ALPHA_42", "SYS_BETA_77"))]


# -- parsing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reply,expected", [
    ("SCORE: 7", 7.0),
    ("The answer is mostly right.\nSCORE: 8", 8.0),
    ("Reasoning...\n\nScore: 6/10\n", 6.0),
    ("**SCORE:** 9", 9.0),
    ("SCORE = 0", 0.0),
    ("SCORE: 10", 10.0),
    ("SCORE: 7.5", 7.5),
    ("SCORE: 4\nThanks for asking.", 4.0),  # extra text after the score line
    ("score: 5\nSCORE: 5", 5.0),  # repeated, same value
])
def test_parse_score_good(reply, expected):
    assert J.parse_score(reply) == expected


@pytest.mark.parametrize("reply,reason", [
    ("", "empty"),
    ("I would give it a seven.", "no line"),
    ("SCORE: seven", "does not hold exactly one number"),
    ("SCORE: 7 or 8", "does not hold exactly one number"),
    ("SCORE: 7 because it is good", "does not hold exactly one number"),
    ("SCORE: 6\nSCORE: 8", "different values"),
    ("SCORE: 11", "outside"),
    ("SCORE: -1", "outside"),
    ("SCORE: 10.5", "outside"),
    ("The score is 7.", "no line"),
])
def test_parse_score_bad(reply, reason):
    with pytest.raises(J.ScoreParseError, match=reason):
        J.parse_score(reply)


def test_parse_score_pair():
    assert J.parse_score_pair("8 6\nAssistant 1 is more complete.") == (8.0, 6.0)
    assert J.parse_score_pair("\n 7, 9 \n") == (7.0, 9.0)
    for bad in ("Assistant 1: 8, Assistant 2: 6", "8", "8 6 5", "0 6", "8 11", ""):
        with pytest.raises(J.ScoreParseError):
            J.parse_score_pair(bad)


# -- prompts and blinding ------------------------------------------------------------------
def test_rubric_prompts_show_everything_and_keep_braces():
    for criterion in J.CRITERIA:
        msgs = J.rubric_messages(ITEMS[0], "my {answer} text", criterion)
        user = msgs[-1]["content"]
        for part in ("What is shown?", "Axial T1C MRI.", "A left nasopharyngeal mass {with braces}.",
                     "my {answer} text", "SCORE: N", criterion.upper()):
            assert part in user, (criterion, part)
    # prompts differ per criterion
    assert len({J.rubric_messages(ITEMS[0], "x", c)[-1]["content"] for c in J.CRITERIA}) == 4
    with pytest.raises(ValueError, match="unknown criterion"):
        J.rubric_messages(ITEMS[0], "x", "beauty")


def test_custom_prompts_dir_overrides_one_file(tmp_path):
    (tmp_path / "safety.txt").write_text("Criterion: SAFETY, local wording.")
    msgs = J.rubric_messages(ITEMS[0], "x", "safety", prompts_dir=tmp_path)
    assert "local wording" in msgs[-1]["content"]
    assert "[Reference answer]" in msgs[-1]["content"]  # header still the packaged one


def test_judge_never_sees_system_names(tmp_path):
    model = Scripted(["SCORE: 5"])
    J.run_judge(J.RubricJudge(model), ITEMS, ANSWERS, tmp_path / "j.jsonl", runs=1, progress=False)
    assert len(model.calls) == len(ANSWERS) * 4
    text = json.dumps(model.calls)
    assert "SYS_ALPHA" not in text and "SYS_BETA" not in text


# -- retries -------------------------------------------------------------------------------
def test_unparseable_reply_is_retried_then_kept_as_missing_not_zero(tmp_path):
    model = Scripted(["no score here", "SCORE: 6"])
    judge = J.RubricJudge(model, retries=2, criteria=["accuracy"])
    task = judge.tasks(ITEMS[:1], ANSWERS[:1], runs=1)[0]
    rec = judge.record(task)
    assert rec["score"] == 6.0 and rec["status"] == "ok" and rec["attempts"] == 2
    assert rec["replies"] == ["no score here", "SCORE: 6"] and "no line" in rec["errors"][0]

    bad = J.RubricJudge(Scripted(["SCORE: 12", "nope"]), retries=2, criteria=["accuracy"])
    rec = bad.record(task)
    assert rec["score"] is None and rec["status"] == "missing" and rec["attempts"] == 3
    assert rec["replies"] == ["SCORE: 12", "nope", "SCORE: 12"]


def test_model_errors_are_retried_and_seeds_differ_per_attempt_and_run():
    model = Scripted([ChatModelError("HTTP 503"), "SCORE: 3"])
    judge = J.RubricJudge(model, retries=1, criteria=["safety"])
    tasks = judge.tasks(ITEMS[:1], ANSWERS[:1], runs=2)
    rec = judge.record(tasks[0])
    assert rec["score"] == 3.0 and "HTTP 503" in rec["errors"][0] and rec["replies"][0] is None
    judge.record(tasks[1])
    seeds = [c.seed for c in model.configs]
    assert len(set(seeds)) == len(seeds) == 4


# -- streaming and resume ------------------------------------------------------------------
def test_run_judge_resumes_after_interruption(tmp_path):
    out = tmp_path / "judgments.jsonl"
    total = len(ANSWERS) * 4 * 3
    first = Scripted(["SCORE: 4"], stop_after=10)
    with pytest.raises(KeyboardInterrupt):
        J.run_judge(J.RubricJudge(first), ITEMS, ANSWERS, out, runs=3, progress=False)
    lines = out.read_text().splitlines()
    assert len(lines) == 10
    with out.open("a") as fh:  # a crash in the middle of a write
        fh.write('{"item_id": "i1", "sys')
    second = Scripted(["SCORE: 4"])
    records = J.run_judge(J.RubricJudge(second), ITEMS, ANSWERS, out, runs=3, progress=False)
    assert len(second.calls) == total - 10
    assert len(records) == total
    keys = {(r["item_id"], r["system"], r["criterion"], r["run"]) for r in records}
    assert len(keys) == total
    assert out.read_text().splitlines()[:10] == lines
    assert all(json.loads(line) for line in out.read_text().splitlines())
    # a finished run does nothing more
    third = Scripted(["SCORE: 4"])
    J.run_judge(J.RubricJudge(third), ITEMS, ANSWERS, out, runs=3, progress=False)
    assert third.calls == []


def test_resume_refuses_other_judge_and_no_resume_refuses_existing(tmp_path):
    out = tmp_path / "j.jsonl"
    J.run_judge(J.LexicalJudge(), ITEMS, ANSWERS, out, runs=1, progress=False)
    with pytest.raises(ValueError, match="written by judge 'lexical-overlap'"):
        J.run_judge(J.RubricJudge(Scripted(["SCORE: 1"])), ITEMS, ANSWERS, out, runs=1, progress=False)
    with pytest.raises(FileExistsError):
        J.run_judge(J.LexicalJudge(), ITEMS, ANSWERS, out, runs=1, resume=False, progress=False)


def test_damaged_middle_line_is_an_error(tmp_path):
    out = tmp_path / "j.jsonl"
    out.write_text('{"a": 1}\n{broken\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"j.jsonl:2: damaged record"):
        JsonlAppender(out)


def test_workers_write_every_record_once(tmp_path):
    out = tmp_path / "j.jsonl"
    records = J.run_judge(J.RubricJudge(Scripted(["SCORE: 2"])), ITEMS, ANSWERS, out, runs=2, workers=4,
                          progress=False)
    assert len(out.read_text().splitlines()) == len(records) == len(ANSWERS) * 4 * 2


# -- LLaVA-Med protocol --------------------------------------------------------------------
def test_llava_med_order_is_randomised_and_scores_are_mapped_back(tmp_path):
    items = [Item(f"q{i}", "Q?", "ctx", f"REFERENCE {i}", "conversation") for i in range(12)]
    answers = [Answer(it.item_id, "sysA", f"model answer {i}") for i, it in enumerate(items)]

    def reply(prompt: str) -> str:  # reference gets 8, the model 6, wherever they are shown
        first = prompt.split("[Assistant 1]")[1].split("[End of Assistant 1]")[0]
        return "8 6\nreasons" if "REFERENCE" in first else "6 8\nreasons"

    model = Scripted(reply)
    recs = J.run_judge(J.LlavaMedJudge(model), items, answers, tmp_path / "l.jsonl", runs=1, progress=False)
    assert {r["order"] for r in recs} == {"model_first", "reference_first"}
    assert all(r["score"] == 6 and r["reference_score"] == 8 and r["criterion"] == "overall" for r in recs)
    from hicur_monai.evaluation.aggregate import load_judgments, relative_scores

    rel = relative_scores(load_judgments(tmp_path / "l.jsonl"))
    assert rel.loc[rel["kind"] == "all", "relative_score"].item() == pytest.approx(75.0)


# -- registry, lexical baseline, input files -----------------------------------------------
def test_registry_and_lexical_judge():
    assert {"rubric", "llava_med", "lexical"} <= set(names("judges"))
    assert isinstance(create("judges", "rubric", model=Scripted(["SCORE: 1"])), J.RubricJudge)
    lex = J.LexicalJudge()
    same = lex.tasks([ITEMS[1]], [Answer("i2", "s", ITEMS[1].reference)], runs=1)
    assert [lex.record(t)["score"] for t in same] == [10.0] * 4
    none = lex.tasks([ITEMS[1]], [Answer("i2", "s", "")], runs=1)
    assert [lex.record(t)["score"] for t in none] == [0.0] * 4


def test_read_items_and_answers_name_file_line_and_field(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"item_id": "a", "question": "Q", "caption": "c", "reference": "R", "kind": "detailed"}\n'
                 '{"item_id": "b", "reference": "R"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:2: missing field 'question'"):
        read_items(p)
    p.write_text('{"item_id": "a", "question": "Q", "reference": "R", "kind": "chat"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: field 'kind' is 'chat'"):
        read_items(p)
    p.write_text('{"item_id": "a", "question": "Q", "caption": "cap", "reference": "R"}\n'
                 '{"item_id": "a", "question": "Q", "reference": "R"}\n')
    with pytest.raises(ValueError, match="duplicate item_id 'a'"):
        read_items(p)
    p.write_text('{"item_id": "a", "question": "Q", "caption": "cap", "reference": "R", "image": "a.png"}\n')
    items = read_items(p)
    assert items[0].context == "cap" and items[0].kind == "conversation"
    a = tmp_path / "answers.jsonl"
    a.write_text('{"item_id": "a", "system": "s", "answer": "x"}\n{"item_id": "zz", "system": "s", "answer": "y"}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:2: item_id 'zz' is not in the items file"):
        read_answers(a, items)
    a.write_text('{"item_id": "a", "system": "s", "answer": "x"}\n{"item_id": "a", "system": "s", "answer": "y"}\n')
    with pytest.raises(ValueError, match="second answer of system 's'"):
        read_answers(a, items)



def test_stage_ii_field_names_are_read_and_bad_records_named(tmp_path):
    # the held-out files of `hicur instructions build` as items; LLaVA model_vqa answers
    conv = tmp_path / "eval_conversation.jsonl"
    conv.write_text(json.dumps({"question_id": "p1_conv0", "pair_id": "p1", "image": "p1.png",
                                "category": "conversation", "text": "Is there a mass?",
                                "reference": "Yes, on the left wall.", "history": []}) + "\n")
    det = tmp_path / "eval_detailed.jsonl"
    det.write_text(json.dumps({"question_id": "p1_detail", "pair_id": "p1", "image": "p1.png", "category": "detailed",
                               "text": "Describe it.", "reference": "A mass on the left wall."}) + "\n")
    items = read_items([conv, det])
    assert [(it.item_id, it.question, it.kind) for it in items] == [
        ("p1_conv0", "Is there a mass?", "conversation"), ("p1_detail", "Describe it.", "detailed")]
    assert items[0].extra == {"pair_id": "p1", "history": []}
    a = tmp_path / "answers.jsonl"
    a.write_text(json.dumps({"question_id": "p1_detail", "model_id": "llava", "prompt": "Describe it.",
                             "text": "A left-sided mass."}) + "\n")
    (ans,) = read_answers(a, items)
    assert (ans.item_id, ans.system, ans.answer) == ("p1_detail", "llava", "A left-sided mass.")
    # bad records: a ValueError naming file, line and field
    det.write_text(det.read_text() + json.dumps({"pair_id": "p2", "text": "Describe it.", "reference": "R"}) + "\n")
    with pytest.raises(ValueError, match=r"eval_detailed.jsonl:2: missing field 'item_id' \(or 'question_id'\)"):
        read_items([conv, det])
    a.write_text(json.dumps({"question_id": "p1_detail", "system": "s", "text": 7}) + "\n")
    with pytest.raises(ValueError, match=r"answers.jsonl:1: field 'answer' must be a string, got int"):
        read_answers(a, items)
    a.write_text(json.dumps({"item_id": "p1_detail", "question_id": "p1_conv0", "system": "s", "answer": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"answers.jsonl:1: fields 'item_id' and 'question_id'.* differ"):
        read_answers(a, items)

# -- with the real OpenAI-compatible backend against a local server --------------------------
def test_rubric_judge_over_openai_backend_on_localhost(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if "openai" not in names("llm_backends"):
        pytest.skip("the 'openai' LLM backend is not available")
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            # every first request gets a malformed reply, so the judge must retry
            content = "I cannot decide." if len(seen) % 2 == 1 else "Mostly correct.\nSCORE: 7"
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        from hicur_monai.cli import main

        items, answers = tmp_path / "items.jsonl", tmp_path / "answers.jsonl"
        items.write_text("".join(json.dumps(i.to_dict()) + "\n" for i in ITEMS))
        answers.write_text("".join(json.dumps({"item_id": a.item_id, "system": a.system, "answer": a.answer}) + "\n"
                                   for a in ANSWERS))
        out = tmp_path / "j.jsonl"
        rc = main(["judge", "run", "--items", str(items), "--answers", str(answers), "--out", str(out),
                   "--model", "openai", "--model-arg", f"base_url=http://127.0.0.1:{httpd.server_address[1]}/v1",
                   "--model-arg", "model=judge-x", "--model-arg", "api_key_env=HICUR_NO_SUCH_KEY",
                   "--model-arg", "max_retries=0", "--runs", "1"])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert rc == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(ANSWERS) * 4 and all(r["score"] == 7.0 and r["attempts"] == 2 for r in records)
    assert records[0]["judge"] == "openai:judge-x"
    assert len(seen) == 2 * len(records) and "SYS_ALPHA" not in json.dumps(seen)


def test_reference_answers_written_by_a_model(tmp_path):
    from hicur_monai.evaluation.reference import write_references

    items = [Item("r1", "What is shown?", "Axial T2 MRI, clivus erosion.", "", "detailed"),
             Item("r2", "Q?", "ctx", "kept reference", "conversation")]
    model = Scripted(["", "The clivus is eroded; biopsy advised."])
    out = tmp_path / "items_ref.jsonl"
    done = write_references(model, items, out, progress=False)
    assert [d.reference for d in done] == ["The clivus is eroded; biopsy advised.", "kept reference"]
    assert len(model.calls) == 2 and "clivus erosion" in model.calls[0][-1]["content"]  # empty reply retried
    back = read_items(out)
    assert back[0].reference.startswith("The clivus") and back[0].extra["reference_by"] == "scripted"
    with pytest.raises(ChatModelError, match="item 'r1': no reference answer after 3 attempts"):
        write_references(Scripted([ChatModelError("down")]), items[:1], tmp_path / "x.jsonl", progress=False)
    assert not (tmp_path / "x.jsonl").exists()
