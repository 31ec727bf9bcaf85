"""The curriculum runner (steps, skip-if-done, dry run) and the ablation table + chart on hand-made result files."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from hicur_monai.curriculum import (
    BUDGETS,
    PROGNOSIS_SETS,
    SEGMENTATION_VARIANTS,
    Step,
    curriculum_steps,
    get_budget,
    load_results,
    run_curriculum,
    run_steps,
    write_ablation,
)
from hicur_monai.curriculum.table import MANIFEST

REPO = Path(__file__).resolve().parents[1]


def _seg_row(dice: float, states: str) -> dict:
    return {"val_mean_dice_3d": dice, "dice_3d_T1": dice - 0.2, "dice_3d_T2": dice, "dice_3d_T1C": dice + 0.1,
            "val_hd95": 12.5 - 10 * dice, "coarse_states": states}


def _metrics(c: float, n_image: int) -> dict:
    # metrics.json counts the image feature columns; a list of their names is read too
    cols = n_image if n_image % 16 == 0 else [f"img_{i}" for i in range(n_image)]
    ep = {"data": {"image_feature_columns": cols},
          "models": {m: {"metrics": {"harrell_c": {"estimate": c + d, "lo": c + d - 0.05, "hi": c + d + 0.04}}}
                     for m, d in (("cox", 0.0), ("deepsurv", -0.01))}}
    return {"endpoints": {"ffs": ep, "os": ep}}


def make_results(out: Path, skip: tuple[str, ...] = ()) -> Path:
    """Result files as the stage commands write them (contracts of #15), without the skipped variants."""
    seg = {v: _seg_row(0.6 + 0.05 * i, "hashed_bow stand-in" if v == "fusion_standin" else f"states of {v}")
           for i, v in enumerate(SEGMENTATION_VARIANTS) if v not in skip}
    (out / "segmentation").mkdir(parents=True)
    (out / "segmentation" / "comparison.json").write_text(json.dumps(seg))
    for i, s in enumerate(PROGNOSIS_SETS):
        if s not in skip:
            (out / "prognosis" / s).mkdir(parents=True)
            (out / "prognosis" / s / "metrics.json").write_text(json.dumps(_metrics(0.70 + 0.02 * i, 8 * i)))
    (out / "findings").mkdir()
    (out / "findings" / "findings_f1.json").write_text(json.dumps(
        {"n_images": 7, "model": {"micro_f1": 0.61, "macro_f1": 0.52, "per_finding": {}},
         "majority": {"micro_f1": 0.40, "macro_f1": 0.21, "per_finding": {}},
         "constant": {"micro_f1": 0.45, "macro_f1": 0.25, "per_finding": {}}, "command": "hicur vlm findings-eval"}))
    return out


def test_table_and_chart_from_result_files(tmp_path):
    out = make_results(tmp_path)
    md, png = write_ablation(out, "demo", "hicur curriculum run --budget demo", budget_line="seg_epochs=13")
    text = md.read_text()
    assert "budget: `demo`" in text and "Made by: `hicur curriculum run --budget demo`" in text
    assert "seg_epochs=13" in text
    assert "| variant | coarse states | mean 3D Dice | 3D Dice T1 | 3D Dice T2 | 3D Dice T1C | HD95 |" in text
    assert "| MONAI UNet | states of unet | 0.600 | 0.400 | 0.600 | 0.700 | 6.50 |" in text
    assert "| fusion + stand-in states | hashed_bow stand-in | 0.650 |" in text
    assert "| features | image features | model | FFS | OS |" in text
    assert "| clinical only | 0 | cox | 0.700 (0.650-0.740) | 0.700 (0.650-0.740) |" in text
    assert "| + HCMAE + coarse states | 16 | deepsurv | 0.730 (0.680-0.770) |" in text
    assert "7 held-out images" in text
    assert "| VLM (stage II model) | 0.610 | 0.520 |" in text and "| majority-class baseline | 0.400 | 0.210 |" in text
    assert "| best constant report (image-blind) | 0.450 | 0.250 |" in text
    assert "not run" not in text
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 800


def test_skipped_variants_are_not_run_cells(tmp_path):
    out = make_results(tmp_path, skip=("fusion_vlm_report", "hcmae_vlm"))
    md, png = write_ablation(out, "demo", "cmd", skipped=("fusion_vlm_report", "hcmae_vlm"))
    text = md.read_text()
    assert "| fusion + VLM + report states | not run | not run | not run | not run | not run | not run |" in text
    assert "| + HCMAE + coarse states | not run | - | not run | not run |" in text
    assert "| fusion + VLM states | states of fusion_vlm |" in text
    assert png.stat().st_size > 0


@pytest.mark.parametrize("missing", ["findings/findings_f1.json", "prognosis/hcmae/metrics.json",
                                     "segmentation/comparison.json"])
def test_a_missing_result_names_its_file(tmp_path, missing):
    out = make_results(tmp_path)
    (out / missing).unlink()
    with pytest.raises(FileNotFoundError, match=str(out / missing).replace(".", r"\.")):
        load_results(out)


def test_a_variant_missing_from_the_comparison_is_an_error_unless_skipped(tmp_path):
    out = make_results(tmp_path, skip=("fusion_vlm",))
    with pytest.raises(ValueError, match="comparison.json: no results for segmentation variant 'fusion_vlm'"):
        load_results(out)
    assert load_results(out, skipped=("fusion_vlm",)).segmentation["fusion_vlm"] is None


def test_bad_fields_are_named(tmp_path):
    out = make_results(tmp_path)
    p = out / "prognosis" / "clinical" / "metrics.json"
    m = json.loads(p.read_text())
    del m["endpoints"]["os"]["models"]["cox"]["metrics"]["harrell_c"]
    p.write_text(json.dumps(m))
    msg = r"clinical/metrics.json: endpoints.os.models.cox.metrics.harrell_c is missing"
    with pytest.raises(ValueError, match=msg):
        load_results(out)
    out2 = make_results(tmp_path / "b")
    f = out2 / "findings" / "findings_f1.json"
    f.write_text(json.dumps({"model": {"micro_f1": "high", "macro_f1": 0.1}, "majority": {}}))
    with pytest.raises(ValueError, match=r"findings_f1.json: model.micro_f1 should be a number"):
        load_results(out2)


def test_old_variant_names_are_read(tmp_path):
    out = make_results(tmp_path)
    p = out / "segmentation" / "comparison.json"
    seg = json.loads(p.read_text())
    seg["baseline"], seg["fusion"] = seg.pop("unet"), seg.pop("fusion_standin")
    p.write_text(json.dumps(seg))
    assert load_results(out).segmentation["unet"]["val_mean_dice_3d"] == pytest.approx(0.6)


def test_demo_budget_is_smaller_than_benchmark():
    demo, bench = get_budget("demo"), get_budget("benchmark")
    sizes = [f.name for f in fields(demo) if isinstance(getattr(demo, f.name), int) and getattr(demo, f.name)]
    assert sizes and all(getattr(demo, k) <= getattr(bench, k) for k in sizes if getattr(bench, k) is not None)
    assert demo.seg_epochs < bench.seg_epochs and demo.vlm_steps2 < bench.vlm_steps2
    with pytest.raises(ValueError, match="unknown curriculum budget 'huge'.*tiny, demo, benchmark"):
        get_budget("huge")


def _cmd(step: Step) -> str:
    return step.display().replace(f"{sys.executable} -m hicur_monai.cli", "hicur").replace(sys.executable, "python")


def test_steps_hand_each_stage_its_predecessor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steps = curriculum_steps("d", "o", BUDGETS["demo"], skip=("hcmae",))
    cmds = {s.name: _cmd(s) for s in steps}
    assert list(cmds) == ["stage1_hcmae", "stage2_vl_alignment", "stage2_findings", "stage3_segmentation",
                          "stage3_prognosis_clinical", "stage3_prognosis_hcmae_vlm", "ablation_table"]
    vit, vlm = "o/hcmae_pretrain/models/vit_encoder.pt", "o/vl_alignment/step2/model"
    assert Path(vit) in steps[0].outputs and f"--vit-encoder {vit}" in cmds["stage2_vl_alignment"]
    assert f"findings-eval --model {vlm} --instructions o/vl_alignment/instructions" in cmds["stage2_findings"]
    assert "--models unet fusion_standin fusion_vlm fusion_vlm_report" in cmds["stage3_segmentation"]
    assert f"--vlm-checkpoint {vlm}" in cmds["stage3_segmentation"]
    assert "hcmae_encoder" not in cmds["stage3_prognosis_clinical"]
    assert f"--hcmae_encoder {vit} --vlm_checkpoint {vlm}" in cmds["stage3_prognosis_hcmae_vlm"]
    with pytest.raises(ValueError, match=r"cannot skip \['T1'\]"):
        curriculum_steps("d", "o", BUDGETS["demo"], skip=("T1",))


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundles" / "hcmae_pretrain" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "hcmae_pretrain" / "configs" / "train.json").write_text("{}")
    from hicur_monai.cli import main

    assert main(["curriculum", "run", "--data", "nodata", "--out", "o", "--budget", "tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("[curriculum ") == 8 and "[curriculum 8/8]" in printed
    assert "--llm tiny --steps1 2 --steps2 2" in printed and "--epochs 1 --max-patients 2" in printed
    assert printed.count("--endpoints ffs") == 3
    assert not (tmp_path / "o").exists()


def test_run_from_elsewhere_or_without_cohort_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="repository root"):
        run_curriculum("d", "o", BUDGETS["tiny"])
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match=r"nodata/datalist.json: not a demo cohort"):
        run_curriculum(tmp_path / "nodata", tmp_path / "o", BUDGETS["tiny"])


def _writer(name: str, src: Path, dst: Path, text: str = "x") -> Step:
    code = f"import pathlib; pathlib.Path({str(dst)!r}).write_text(pathlib.Path({str(src)!r}).read_text() + {text!r})"
    return Step(name, name, (sys.executable, "-c", code), (src,), (dst,))


def test_done_steps_are_skipped_until_their_inputs_or_command_change(tmp_path):
    src, mid, end = tmp_path / "src.txt", tmp_path / "mid.txt", tmp_path / "end.txt"
    src.write_text("a")
    steps = [_writer("one", src, mid), _writer("two", mid, end)]
    lines: list[str] = []
    assert [o.status for o in run_steps(steps, tmp_path, log=lines.append)] == ["ran", "ran"]
    assert end.read_text() == "axx" and any("done in" in ln and "(wall)" in ln for ln in lines)
    assert [o.status for o in run_steps(steps, tmp_path, log=lines.append)] == ["skipped", "skipped"]
    assert "skipped (outputs exist, inputs and command unchanged)" in lines[-1]
    src.write_text("bb")  # new input: both steps again
    assert [o.status for o in run_steps(steps, tmp_path, log=lines.append)] == ["ran", "ran"]
    assert end.read_text() == "bbxx"
    steps[1] = _writer("two", mid, end, "y")  # same input, other command
    assert [o.status for o in run_steps(steps, tmp_path, log=lines.append)] == ["skipped", "ran"]
    end.unlink()  # an output gone: that step again, the others kept
    assert [o.status for o in run_steps(steps, tmp_path, log=lines.append)] == ["skipped", "ran"]


def test_a_failed_step_stops_the_run_and_keeps_what_was_done(tmp_path):
    src, mid = tmp_path / "src.txt", tmp_path / "mid.txt"
    src.write_text("a")
    bad = Step("bad", "bad", (sys.executable, "-c", "raise SystemExit(3)"), (mid,), (tmp_path / "never",))
    after = _writer("after", mid, tmp_path / "after.txt")
    with pytest.raises(RuntimeError, match=r"step 'bad' \(bad\) failed with exit code 3"):
        run_steps([_writer("one", src, mid), bad, after], tmp_path, log=lambda _: None)
    assert mid.read_text() == "ax" and not (tmp_path / "after.txt").exists()
    assert not (tmp_path / ".curriculum" / "bad.json").exists()
    assert [o.status for o in run_steps([_writer("one", src, mid)], tmp_path, log=lambda _: None)] == ["skipped"]
    lost = Step("lost", "lost", (sys.executable, "-c", "pass"), (), (tmp_path / "out.txt",))
    with pytest.raises(RuntimeError, match=r"step 'lost' ran but did not write .*out.txt"):
        run_steps([lost], tmp_path, log=lambda _: None)
    gone = _writer("gone", tmp_path / "nothing.txt", tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match=r"missing input\(s\) .*nothing.txt"):
        run_steps([gone], tmp_path, log=lambda _: None)


def test_table_command_reads_the_run_manifest(tmp_path, capsys):
    from hicur_monai.cli import main

    out = make_results(tmp_path / "o", skip=("unet",))
    with pytest.raises(FileNotFoundError, match=f"{MANIFEST}: no curriculum run here"):
        main(["curriculum", "table", "--out", str(out)])
    (out / MANIFEST).write_text(json.dumps({"budget": asdict(BUDGETS["tiny"]), "command": "hicur curriculum run X",
                                            "skipped": ["unet"]}))
    assert main(["curriculum", "table", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "budget: `tiny`" in printed and "Made by: `hicur curriculum run X`" in printed
    assert "| MONAI UNet | not run |" in printed and (out / "curriculum.png").is_file()


def test_table_command_without_a_run_takes_the_budget_from_its_options(tmp_path, capsys):
    from hicur_monai.cli import main

    out = make_results(tmp_path / "o")
    assert main(["curriculum", "table", "--out", str(out), "--budget", "demo", "--command", "docs/curriculum.md"]) == 0
    printed = capsys.readouterr().out
    assert "budget: `demo`" in printed and "Made by: `docs/curriculum.md`" in printed
    assert f"hcmae_epochs={BUDGETS['demo'].hcmae_epochs}" in printed


def test_the_docs_page_shows_the_commands_the_runner_runs(tmp_path, monkeypatch):
    """docs/curriculum.md's stage-by-stage commands are those of ``hicur curriculum run --budget demo``."""
    import shlex

    from test_docs_commands import parse_page

    blocks, problems = parse_page(REPO / "docs" / "curriculum.md")
    assert not problems
    documented = [shlex.split(c) for b in blocks for c in b.commands]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_data" / "clinical").mkdir(parents=True)
    (tmp_path / "demo_data" / "clinical" / "truth.json").write_text("{}")
    for step in curriculum_steps("demo_data", "demo_output", BUDGETS["demo"]):
        assert shlex.split(_cmd(step)) in documented, f"docs/curriculum.md lacks the {step.name} command: {_cmd(step)}"


def test_cli_reports_a_failed_run_without_a_traceback(tmp_path, monkeypatch, capsys):
    from hicur_monai.cli import main

    monkeypatch.chdir(REPO)
    assert main(["curriculum", "run", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "hicur curriculum run:" in err and "nodata/datalist.json: not a demo cohort" in err


def _stand_in(step: Step, ref: Path, out: Path) -> Step:
    """``step`` with a command that writes its outputs: the result files copied from ``ref``, the rest made empty."""
    from dataclasses import replace

    code = ("import pathlib, shutil, sys\n"
            "ref, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
            "for p in map(pathlib.Path, sys.argv[3:]):\n"
            "    p.parent.mkdir(parents=True, exist_ok=True)\n"
            "    if p.suffix == '.json': shutil.copyfile(ref / p.relative_to(out), p)\n"
            "    elif p.suffix: p.write_text('x')\n"
            "    else: p.mkdir(exist_ok=True)\n")
    return replace(step, command=(sys.executable, "-c", code, str(ref), str(out), *map(str, step.outputs)))


def test_a_run_with_stand_in_stages_ends_with_the_table_and_resumes(tmp_path, monkeypatch, capsys):
    from hicur_monai.curriculum import runner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundles" / "hcmae_pretrain" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "hcmae_pretrain" / "configs" / "train.json").write_text("{}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "datalist.json").write_text("{}")
    ref, out = make_results(tmp_path / "ref"), tmp_path / "o"
    real = runner.curriculum_steps
    monkeypatch.setattr(runner, "curriculum_steps", lambda *a, **k: [
        s if s.action else _stand_in(s, ref, out) for s in real(*a, **k)])
    first = run_curriculum("d", out, BUDGETS["tiny"], command="hicur curriculum run X")
    assert [o.status for o in first] == ["ran"] * 8
    assert "Made by: `hicur curriculum run X`" in (out / "curriculum.md").read_text()
    assert (out / "curriculum.png").stat().st_size > 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["budget"]["name"] == "tiny" and len(manifest["steps"]) == 8
    again = run_curriculum("d", out, BUDGETS["tiny"], command="hicur curriculum run X")
    assert [o.status for o in again] == ["skipped"] * 7 + ["ran"]
    (tmp_path / "d" / "datalist.json").write_text('{"new": 1}')  # new data: everything again
    assert [o.status for o in run_curriculum("d", out, BUDGETS["tiny"])] == ["ran"] * 8
    assert "| MONAI UNet |" in capsys.readouterr().out
