"""bundles/vl_alignment end to end with a tiny random Llama: step 1, step 2 (LoRA), answers, resume, metadata."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from vlm_helpers import TINY_LLM, tiny_instructions  # noqa: E402


@pytest.fixture(scope="module")
def instructions(demo_cohort, tmp_path_factory):
    out = tiny_instructions(demo_cohort, tmp_path_factory.mktemp("instructions"))
    return out


def _run(repo_root, config, **override):
    from monai.bundle import run

    configs = repo_root / "bundles" / "vl_alignment" / "configs"
    # step 1 is an overlay after train.json
    files = [configs / "train.json", configs / config] if config == "pretrain.json" else [configs / config]
    run(config_file=[str(f) for f in files], **override)


def test_metadata_is_valid(repo_root, meta_schema):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(repo_root / "bundles/vl_alignment/configs/metadata.json"), filepath=str(meta_schema))


@pytest.mark.slow
def test_pretrain_train_inference(repo_root, demo_cohort, instructions, tmp_path, monkeypatch):
    from hicur_monai.evaluation.records import read_answers
    from hicur_monai.networks.vlm import VisionLanguageModel

    monkeypatch.chdir(repo_root)
    common = {"dataset_dir": str(demo_cohort), "instructions_dir": str(instructions), "output_root": str(tmp_path),
              "llm": TINY_LLM, "vit_encoder": "", "image_size": 32, "max_length": 256, "batch_size": 2,
              "device": "cpu"}
    _run(repo_root, "pretrain.json", **common, max_steps=3, save_every=1)
    s1 = json.loads((tmp_path / "step1" / "summary.json").read_text())
    assert s1["steps"] == 3 and s1["mode"] == "projector"
    assert len((tmp_path / "step1/loss_history.jsonl").read_text().splitlines()) == 3
    step1 = VisionLanguageModel.from_pretrained(tmp_path / "step1" / "model")
    assert step1.mode == "projector" and not (tmp_path / "step1/model/adapter").exists()

    # a rerun resumes from the checkpoint: nothing left to do, the model is unchanged
    before = {k: v.clone() for k, v in step1.projector.state_dict().items()}
    _run(repo_root, "pretrain.json", **common, max_steps=3)
    again = VisionLanguageModel.from_pretrained(tmp_path / "step1" / "model")
    assert all(torch.equal(before[k], v) for k, v in again.projector.state_dict().items())
    assert len((tmp_path / "step1/loss_history.jsonl").read_text().splitlines()) == 3

    _run(repo_root, "train.json", **common, mode="lora", lr=1e-3, max_steps=2,
         lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    s2 = json.loads((tmp_path / "step2" / "summary.json").read_text())
    assert s2["steps"] == 2 and s2["mode"] == "lora" and (tmp_path / "step2/model/adapter").is_dir()

    answers = tmp_path / "answers.jsonl"
    _run(repo_root, "inference.json", dataset_dir=str(demo_cohort), instructions_dir=str(instructions),
         model_dir=str(tmp_path / "step2" / "model"), output_file=str(answers), max_new_tokens=4, device="cpu",
         system="tiny-vlm")
    lines = [json.loads(x) for x in answers.read_text().splitlines()]
    n_questions = sum(len(p.read_text().splitlines()) for p in instructions.glob("eval_*.jsonl"))
    assert len(lines) == n_questions > 0
    assert {x["kind"] for x in lines} <= {"conversation", "detailed"} and all(x["system"] == "tiny-vlm" for x in lines)
    assert len(read_answers(answers)) == n_questions  # the evaluation reads it
    _run(repo_root, "inference.json", dataset_dir=str(demo_cohort), instructions_dir=str(instructions),
         model_dir=str(tmp_path / "step2" / "model"), output_file=str(answers), max_new_tokens=4, device="cpu",
         system="tiny-vlm")
    assert len(answers.read_text().splitlines()) == n_questions  # resumed: nothing answered twice
