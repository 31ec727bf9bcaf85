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
