"""Finding-F1 of generated reports: the scorer on hand-made grids, and ``hicur vlm findings-eval`` end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hicur_monai.data.nasopharynx import empty_grid
from hicur_monai.evaluation.findings_f1 import constant_grid, majority_grid, markdown_table, score_grids

sys.path.insert(0, str(Path(__file__).parent))


def _grid(*present: tuple[str, str]) -> dict:
    g = empty_grid()
    for r, f in present:
        g[r][f] = "present"
    return g


TRUTH = [_grid(("left_wall", "neoplasm"), ("roof", "neoplasm")), _grid(("left_wall", "neoplasm")),
         _grid(("right_wall", "congestion")), _grid()]


def test_perfect_predictions_score_one():
    s = score_grids(TRUTH, TRUTH)
    assert s["micro_f1"] == s["macro_f1"] == 1.0
    assert s["macro_cells"] == 3  # left_wall/neoplasm, roof/neoplasm, right_wall/congestion
    assert s["per_finding"]["left_wall/neoplasm"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 2, "fp": 0,
                                                      "fn": 0, "support": 2}


def test_majority_baseline_by_hand():
    train = [_grid(("left_wall", "neoplasm")), _grid(("left_wall", "neoplasm"), ("roof", "bleeding")), _grid()]
    maj = majority_grid(train)
    # left_wall/neoplasm is present in 2 of 3 training grids; every other cell is absent in most
    assert maj["left_wall"]["neoplasm"] == "present"
    assert sum(s == "present" for g in maj.values() for s in g.values()) == 1
    assert majority_grid([_grid(("roof", "swelling")), _grid()])["roof"]["swelling"] == "absent"  # tie -> absent
    s = score_grids([maj] * len(TRUTH), TRUTH)
    # left_wall/neoplasm: predicted on all 4, true on 2 -> tp 2, fp 2, fn 0 -> F1 = 4 / 6
    cell = s["per_finding"]["left_wall/neoplasm"]
    assert (cell["tp"], cell["fp"], cell["fn"]) == (2, 2, 0) and cell["f1"] == pytest.approx(2 / 3)
    # micro: tp 2, fp 2, fn 2 (roof/neoplasm, right_wall/congestion) -> F1 = 4 / 8
    assert s["micro_f1"] == pytest.approx(0.5)
    # macro over the 3 cells with ground-truth positives: (2/3 + 0 + 0) / 3
    assert s["macro_f1"] == pytest.approx(2 / 9)
    table = markdown_table({"model": score_grids(TRUTH, TRUTH), "majority": s})
    assert "| majority | 0.500 | 0.500 | 0.500 | 0.222 |" in table


def test_constant_report_baseline_by_hand():
    # no cell is present in more than half of the grids: the majority says "absent" everywhere (F1 0),
    # the best constant report asserts the commonest cells
    train = [_grid(("left_wall", "neoplasm"), ("roof", "neoplasm")), _grid(("left_wall", "neoplasm")),
             _grid(("roof", "neoplasm")), _grid(("right_wall", "bleeding")), _grid(), _grid()]
    assert score_grids([majority_grid(train)] * len(train), train)["micro_f1"] == 0.0
    const = constant_grid(train)
    asserted = {(r, f) for r, g in const.items() for f, st in g.items() if st == "present"}
    # prevalence 2/6 for both neoplasm cells, 1/6 for bleeding: threshold 2/6 gives tp 4, fp 8, fn 1 -> F1 8/17;
    # adding bleeding (threshold 1/6) gives tp 5, fp 13, fn 0 -> F1 10/23 = 0.435 < 0.471
    assert asserted == {("left_wall", "neoplasm"), ("roof", "neoplasm")}
    assert score_grids([const] * len(train), train)["micro_f1"] == pytest.approx(8 / 17)
    assert constant_grid([_grid(), _grid()]) == majority_grid([_grid(), _grid()])  # nothing present: absent


def test_uncertain_counts_as_asserted_and_lengths_must_match():
    hedged = _grid()
    hedged["left_wall"]["neoplasm"] = "uncertain"
    assert score_grids([hedged], [TRUTH[1]])["micro_f1"] == 1.0
    with pytest.raises(ValueError, match="1 predicted grids but 2"):
        score_grids([hedged], TRUTH[:2])


def test_findings_eval_with_the_tiny_vlm(demo_cohort, tmp_path, capsys, monkeypatch):
    from vlm_helpers import tiny_instructions, tiny_vlm

    from hicur_monai.cli import main

    instr = tiny_instructions(demo_cohort, tmp_path / "instr")
    model_dir = tmp_path / "model"
    tiny_vlm().save_pretrained(model_dir)
    out = tmp_path / "f1"
    monkeypatch.setattr(sys, "argv", ["hicur", "vlm", "findings-eval", "--limit", "2"])
    rc = main(["vlm", "findings-eval", "--model", str(model_dir), "--instructions", str(instr), "--data",
               str(demo_cohort), "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--limit", "2"])
    assert rc == 0
    result = json.loads((out / "findings_f1.json").read_text())
    assert set(result) >= {"n_images", "model", "majority", "constant", "constant_grid", "command"}
    assert result["n_images"] >= 1 and result["command"].startswith("hicur vlm findings-eval")
    for who in ("model", "majority", "constant"):
        assert {"micro_f1", "macro_f1", "per_finding"} <= set(result[who])
        assert 0.0 <= result[who]["micro_f1"] <= 1.0
    generated = [json.loads(x) for x in (out / "generated.jsonl").read_text().splitlines()]
    assert len(generated) == result["n_images"]
    printed = capsys.readouterr().out
    assert "| majority |" in printed and "| constant |" in printed
    (instr / "pairs.json").unlink()
    assert main(["vlm", "findings-eval", "--model", str(model_dir), "--instructions", str(instr), "--data",
                 str(demo_cohort), "--out", str(out)]) == 2
    assert "pairs.json: not found" in capsys.readouterr().err
