"""Stage II on transformers' Trainer: loss goes down, resume is exact, a mismatched resume is refused,
and a changed HCMAE encoder file is reported."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("timm")

from vlm_helpers import TINY_LLM, TINY_VIT, tiny_records  # noqa: E402

from hicur_monai.vlm.train import VLMTraining  # noqa: E402


def _train(tmp_path, out, records, **kw):
    args = {"vision": TINY_VIT, "llm": TINY_LLM, "image_folder": tmp_path / "img", "max_length": 128,
            "batch_size": 2, "lr": 1e-2, "warmup_ratio": 0.0, "device": "cpu", "progress": False, "seed": 0} | kw
    return VLMTraining(records, out, **args)


def _projector(path):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if k.startswith("projector.")}


def test_tiny_trainer_run_loss_decreases(tmp_path):
    records = tiny_records(tmp_path / "img", 4)
    run = _train(tmp_path, tmp_path / "run", records, mode="full", lr=3e-3, max_steps=12, epochs=20)
    summary = run.run()
    hist = [json.loads(x) for x in (tmp_path / "run" / "loss_history.jsonl").read_text().splitlines()]
    assert summary["steps"] == 12 == len(hist) and [h["step"] for h in hist] == list(range(1, 13))
    assert hist[-1]["loss"] < 0.9 * hist[0]["loss"], [h["loss"] for h in hist]
    assert (tmp_path / "run" / "model" / "vlm_config.json").is_file()
    ckpt = tmp_path / "run" / "checkpoint-12"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file() and (ckpt / "vlm_run.json").is_file()
    # the checkpoint holds what trains (projector + LLM here), not the frozen vision tower
    from safetensors.torch import load_file

    keys = set(load_file(str(ckpt / "model.safetensors")))
    assert any(k.startswith("projector.") for k in keys) and any(k.startswith("llm.") for k in keys)
    assert not any(k.startswith("vision.") for k in keys)


def test_resume_restores_step_and_matches_uninterrupted_run(tmp_path):
    import shutil

    records = tiny_records(tmp_path / "img", 6)
    _train(tmp_path, tmp_path / "full", records, max_steps=4, epochs=3, save_every=2).run()
    # a run stopped after step 2: its last checkpoint is checkpoint-2, its log has later lines
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(tmp_path / "split" / "checkpoint-4")
    shutil.rmtree(tmp_path / "split" / "model")
    resumed = _train(tmp_path, tmp_path / "split", records, max_steps=4, epochs=3, save_every=2)
    assert resumed.resume_from.endswith("checkpoint-2")
    summary = resumed.run()
    assert summary["steps"] == 4
    hist = [json.loads(x) for x in (tmp_path / "split" / "loss_history.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "full" / "loss_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    # optimizer, scheduler, data order and RNG restored: the same losses and weights as without the stop
    for a, b in zip(hist, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"], rel=1e-6)
    pa, pb = (_projector(tmp_path / d / "checkpoint-4" / "model.safetensors") for d in ("split", "full"))
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-5, atol=1e-6)
    # the rerun's steps 3-4 were trained again (the weights of checkpoint-2 differ from the final ones)
    p2 = _projector(tmp_path / "split" / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(p2[k], pa[k]) for k in pa)


def test_resume_refuses_other_configuration_and_names_keys(tmp_path):
    records = tiny_records(tmp_path / "img", 2)
    _train(tmp_path, tmp_path / "run", records, max_steps=1).run()
    other_llm = TINY_LLM | {"hidden_size": 48}
    with pytest.raises(ValueError, match=r"keys that differ: llm, lr\b") as err:
        _train(tmp_path, tmp_path / "run", records, max_steps=2, llm=other_llm, lr=5e-3)
    assert "hidden_size" in str(err.value) and "checkpoint-1" in str(err.value)
    # the settings that may change (more steps, another per-process batch with the same global batch) resume
    assert _train(tmp_path, tmp_path / "run", records, max_steps=3).resume_from.endswith("checkpoint-1")
    # resume=False starts over and removes the old checkpoints ("false" as the command line gives it)
    fresh = _train(tmp_path, tmp_path / "run", records, max_steps=1, llm=other_llm, resume="false")
    assert fresh.resume_from is None and not list((tmp_path / "run").glob("checkpoint-*"))


def test_changed_encoder_file_warns(tmp_path):
    from hicur_monai.networks.vlm import VisionLanguageModel
    from hicur_monai.utils.checksum import sha256_file

    # a ViT encoder file in the HCMAE export format (weights + JSON), outside any model folder
    exported = VisionLanguageModel.build(TINY_VIT, TINY_LLM, max_length=64).save_pretrained(tmp_path / "vit_src")
    enc_dir = tmp_path / "stage1"
    enc_dir.mkdir()
    for name in ("vit_encoder.pt", "vit_encoder.json"):
        (enc_dir / name).write_bytes((exported / "vision" / name).read_bytes())
    enc = enc_dir / "vit_encoder.pt"
    model = VisionLanguageModel.build({"kind": "encoder_file", "path": str(enc)}, TINY_LLM, max_length=64)
    saved = model.save_pretrained(tmp_path / "vlm")
    cfg = json.loads((saved / "vlm_config.json").read_text())
    assert cfg["vision"]["sha256"] == sha256_file(enc) and cfg["vision"]["path"] == str(enc.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # unchanged: no warning
        VisionLanguageModel.from_pretrained(saved)
    state = torch.load(enc, weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, enc)  # Stage I re-trained
    with pytest.warns(UserWarning, match="has changed since"):
        VisionLanguageModel.from_pretrained(saved)


@pytest.mark.parametrize("sharding", [{"fsdp": True,
                                       "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}},
                                      {"deepspeed": {"zero_optimization": {"stage": 3}}}])
def test_sharding_on_cpu_is_refused_not_silently_dropped(tmp_path, sharding):
    # accelerate enables FSDP / DeepSpeed only on GPUs; on the CPU it would train plain DDP without a word
    with pytest.raises(ValueError, match="need GPUs"):
        _train(tmp_path, tmp_path / "run", tiny_records(tmp_path / "img", 2), max_steps=1, **sharding)
