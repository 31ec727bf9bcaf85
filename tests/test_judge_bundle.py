"""The report_evaluation bundle and the ``hicur judge`` commands, end to end on the demo study."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hicur_monai.cli import main

BUNDLE = "bundles/report_evaluation/configs"


@pytest.fixture(autouse=True)
def _at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def test_metadata_is_valid(meta_schema, repo_root):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(repo_root / BUNDLE / "metadata.json"), filepath=str(meta_schema))


def test_bundle_judges_and_aggregates_the_demo_study(tmp_path):
    from monai.bundle import run

    run(config_file=[f"{BUNDLE}/inference.json", f"{BUNDLE}/evaluate.json"], output_dir=str(tmp_path), runs=2,
        n_resamples=200)
    records = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == 12 * 3 * 4 * 2  # items x systems x criteria x runs
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    final = summary[(summary.kind == "all")].groupby("system")["final_mean"].mean()
    # the demo systems are built to rank this way
    assert final["near-reference"] > final["partial"] > final["generic"]
    assert (tmp_path / "report" / "report.html").stat().st_size > 1000


def test_cli_judge_run_resume_and_aggregate(tmp_path, capsys):
    from hicur_monai.evaluation.demo import make_demo_study

    study = make_demo_study(tmp_path / "study", n_items=4)
    out = tmp_path / "j.jsonl"
    args = ["judge", "run", "--items", str(study["items"]), "--answers", *map(str, study["answers"]),
            "--judge", "lexical", "--runs", "1", "--out", str(out)]
    assert main(args) == 0
    assert "48 judgments (0 missing)" in capsys.readouterr().out
    assert main(args) == 0  # resumes: nothing to add
    assert len(out.read_text().splitlines()) == 48
    assert main(args[:-2] + ["--judge", "rubric", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--model NAME is required" in capsys.readouterr().err
    assert main(["judge", "aggregate", "--judgments", str(out), "--items", str(study["items"]),
                 "--out", str(tmp_path / "rep"), "--n-resamples", "100"]) == 0
    assert (tmp_path / "rep" / "summary.csv").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "x"}\n')
    assert main(["judge", "run", "--items", str(bad), "--answers", str(bad), "--judge", "lexical",
                 "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "bad.jsonl:1: missing field 'question'" in capsys.readouterr().err


def test_stage_ii_answers_go_into_the_bundle_as_they_come_out(demo_cohort, tmp_path):
    """instructions build -> VLM answers (tiny model) -> report_evaluation, files untouched."""
    import sys
    from pathlib import Path

    from monai.bundle import run

    from hicur_monai.data.instructions import build_instruction_data, collect_pairs
    from hicur_monai.llm.teacher import make_teacher
    from hicur_monai.vlm.generate import VLMAnswerer

    sys.path.insert(0, str(Path(__file__).parent))
    from vlm_helpers import tiny_vlm

    held_out = tmp_path / "instructions"
    pairs, _ = collect_pairs(demo_cohort / "reports", demo_cohort / "endoscopy")
    build_instruction_data(pairs, make_teacher("rule"), held_out, n_eval=1, progress=False)
    questions = sorted(held_out.glob("eval_*.jsonl"))
    assert '"question_id"' in questions[0].read_text()  # the VLM's own field names
    answers = tmp_path / "answers" / "tiny-vlm.jsonl"
    done = VLMAnswerer(tiny_vlm(), questions, answers, image_folder=demo_cohort / "endoscopy", system="tiny-vlm",
                       max_new_tokens=3, device="cpu", progress=False).run()
    assert done["answered_now"] == done["questions"] > 0 and done["errors"] == 0
    out = tmp_path / "eval"
    run(config_file=[f"{BUNDLE}/inference.json", f"{BUNDLE}/evaluate.json"], output_dir=str(out), runs=1,
        n_resamples=50, items_file=[str(q) for q in questions], answers_files=[str(answers)])
    records = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == done["questions"] * 4 and {r["system"] for r in records} == {"tiny-vlm"}
    assert set(pd.read_csv(out / "report" / "summary.csv")["kind"]) == {"all", "conversation", "detailed"}
    # a bad record fails with a message naming the file, line and field
    bad = tmp_path / "bad.jsonl"
    bad.write_text(answers.read_text().replace('"item_id"', '"id"', 1))
    with pytest.raises(Exception) as err:
        run(config_file=f"{BUNDLE}/inference.json", output_dir=str(out / "bad"), runs=1,
            items_file=[str(q) for q in questions], answers_files=[str(bad)])
    chain = []
    e = err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(x, ValueError) and f"{bad}:1: missing field 'item_id' (or 'question_id')" in str(x)
               for x in chain)


def test_linked_stage_ii_folder_is_evaluated_as_written(demo_cohort, tmp_path):
    """Endoscopy + MRI held-out questions -> VLM answers beside them -> the bundle given only the folder."""
    import sys
    from pathlib import Path

    from monai.bundle import run

    from hicur_monai.vlm.generate import VLMAnswerer

    sys.path.insert(0, str(Path(__file__).parent))
    from vlm_helpers import tiny_vlm

    instr = tmp_path / "instructions"
    assert main(["instructions", "build", "--reports", str(demo_cohort / "reports"), "--images",
                 str(demo_cohort / "endoscopy"), "--reports", str(demo_cohort / "reports" / "mri"), "--images",
                 str(demo_cohort / "mri"), "--out", str(instr), "--n-eval", "1", "--no-progress"]) == 0
    questions = sorted(instr.glob("eval_*.jsonl"))
    answers = instr / "answers" / "tiny-vlm.jsonl"
    done = VLMAnswerer(tiny_vlm(), questions, answers, image_folder=demo_cohort / "endoscopy", system="tiny-vlm",
                       max_new_tokens=2, device="cpu", progress=False).run()
    assert done["errors"] == 0 and done["answered_now"] == done["questions"]
    written = [json.loads(x) for x in answers.read_text().splitlines()]
    assert any(a.get("modality") == "mri" for a in written)  # MRI slices answered from the instruction folder
    errors = instr / "answers" / "tiny-vlm.errors.jsonl"  # written beside the answers; must not be read as answers
    errors.write_text(json.dumps({"item_id": written[0]["item_id"], "system": "tiny-vlm", "error": "x"}) + "\n")
    out = tmp_path / "eval"
    run(config_file=[f"{BUNDLE}/inference.json", f"{BUNDLE}/evaluate.json"], dataset_dir=str(instr),
        output_dir=str(out), runs=1, n_resamples=20)
    records = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(records) == done["questions"] * 4
    assert (out / "report" / "summary.csv").is_file()


def test_question_fields_are_mapped_in_one_place():
    from hicur_monai.evaluation.records import ITEM_ALIASES
    from hicur_monai.vlm.generate import normalise_question

    q = normalise_question({"question_id": "a", "text": "why?", "category": "detailed"}, "f:1")
    assert (q["item_id"], q["question"], q["kind"]) == ("a", "why?", "detailed")
    assert set(ITEM_ALIASES) == {"question_id", "text", "category"}
    with pytest.raises(ValueError, match="f:2: fields 'item_id' and 'question_id'"):
        normalise_question({"item_id": "a", "question_id": "b", "text": "why?"}, "f:2")
