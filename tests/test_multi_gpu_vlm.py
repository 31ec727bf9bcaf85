"""bundles/vl_alignment under torchrun: transformers' Trainer with 2 gloo processes on the CPU (DDP),
and the DeepSpeed ZeRO-3 / FSDP overlays of the original's 8-GPU setting checked by the libraries.

2 processes with 1 record each equal 1 process with 2 (the same global batch) on 6 records: the loss
of every step agrees to rel 1e-5 and the projector to atol 1e-4 (float32 sums in another order; AdamW
divides each gradient element by its running RMS, so an element whose gradient is ~0 can move by a
fraction of one step, lr = 1e-2, differently: 1e-4 is 1% of a step; 0.2% of the elements differ by
more than 1e-7). As the step losses are means over the global batch, equal losses also say that the two
processes' shards together are the 1-process batch (a rank seeing the other's shard would change them).
(With a record count that the global batch does not divide, accelerate's ``even_batches`` repeats
records in the last step of an epoch, where one process has a short batch instead.)
"""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from multi_gpu_helpers import PER_RANK, launch, written_files  # noqa: E402
from vlm_helpers import TINY_LLM, tiny_instructions  # noqa: E402

pytestmark = pytest.mark.slow

C = "bundles/vl_alignment/configs"
TRAIN, PRETRAIN, DDP = f"{C}/train.json", f"{C}/pretrain.json", f"{C}/multi_gpu_train.json"


@pytest.fixture(scope="module")
def common(demo_cohort, tmp_path_factory):
    out = tiny_instructions(demo_cohort, tmp_path_factory.mktemp("instructions"))
    return {"dataset_dir": str(demo_cohort), "instructions_dir": str(out), "llm": TINY_LLM, "vit_encoder": "",
            "image_size": 32, "max_length": 256, "device": "cpu", "lr": 0.01, "warmup_ratio": 0.0, "threads": 1,
            "limit": 6}


@pytest.fixture(scope="module")
def runs(common, tmp_path_factory):
    base = tmp_path_factory.mktemp("vl_ddp")
    launch(2, [TRAIN, PRETRAIN, DDP], output_dir=PER_RANK.format(base=base / "ddp"), batch_size=1, max_steps=3,
           save_every=2, **common)
    launch(1, [TRAIN, PRETRAIN], output_dir=str(base / "single"), batch_size=2, max_steps=3, save_every=2, **common)
    return base


def _history(folder):
    return [json.loads(x) for x in (folder / "loss_history.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    from safetensors.torch import load_file

    rank0, rank1 = runs / "ddp" / "rank0", runs / "ddp" / "rank1"
    assert {"model/vlm_config.json", "summary.json", "loss_history.jsonl", "checkpoint-3/model.safetensors",
            "checkpoint-3/optimizer.pt"} <= written_files(rank0)
    # only rank 0 writes; every rank adds its own RNG state to the checkpoint (the Trainer's resume restores it)
    import re

    assert not rank1.exists() or all(re.fullmatch(r"checkpoint-\d+/rng_state_1\.pth", f) for f in written_files(rank1))
    summary = json.loads((rank0 / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 2 and summary["steps"] == 3
    ddp, one = _history(rank0), _history(runs / "single")
    assert [h["step"] for h in ddp] == [h["step"] for h in one] == [1, 2, 3]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (ddp, one)
    pa, pb = (load_file(str(d / "checkpoint-3" / "model.safetensors")) for d in (rank0, runs / "single"))
    assert set(pa) == set(pb) and all(k.startswith("projector.") for k in pa)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-3, atol=1e-4)


def test_resume_two_to_one_and_one_to_two(runs, common, tmp_path):
    # 2 -> 1: the DDP run's checkpoint-3 continues in one process with the same global batch
    shutil.copytree(runs / "ddp" / "rank0", tmp_path / "a")
    launch(1, [TRAIN, PRETRAIN], output_dir=str(tmp_path / "a"), batch_size=2, max_steps=4, save_every=2, **common)
    assert [h["step"] for h in _history(tmp_path / "a")] == [1, 2, 3, 4]
    # 1 -> 2: the one-process checkpoint-4 continues under DDP
    launch(2, [TRAIN, PRETRAIN, DDP], output_dir=str(tmp_path / "a"), batch_size=1, max_steps=5, save_every=2, **common)
    assert [h["step"] for h in _history(tmp_path / "a")] == [1, 2, 3, 4, 5]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["processes"] == 2
    # another global batch is another configuration: refused (before any model is built), naming the key
    from hicur_monai.vlm.train import VLMTraining

    with pytest.raises(ValueError, match="keys that differ: global_batch_size"):
        VLMTraining(common["instructions_dir"] + "/alignment_brief.json", tmp_path / "a",
                    vision=summary_vision(tmp_path),
                    llm=TINY_LLM, batch_size=1, max_steps=6, lr=0.01, warmup_ratio=0.0, device="cpu", limit=6,
                    max_length=256, image_folder=common["dataset_dir"] + "/endoscopy")


def summary_vision(tmp_path):
    """The vision spec the bundle recorded (the random tower of ``vit_encoder: ''``)."""
    return json.loads((tmp_path / "a" / "checkpoint-4" / "vlm_run.json").read_text())["vision"]


def test_zero3_and_fsdp_overlays_are_valid_for_the_libraries(repo_root, tmp_path):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from monai.bundle import ConfigParser
    from transformers import TrainingArguments

    for overlay in ("zero3.json", "fsdp.json"):
        parser = ConfigParser()
        parser.read_config([str(repo_root / C / "train.json"), str(repo_root / C / overlay)])
        assert parser["mode"] == "full" and parser["bf16"] is True and parser["gradient_checkpointing"] is True
        assert parser["batch_size"] * 8 * parser["grad_accum"] == 128  # the original's global batch on 8 GPUs
    ds = ConfigParser.load_config_file(str(repo_root / C / "zero3.json"))["deepspeed"]
    ds_cfg = HfDeepSpeedConfig(ds)
    assert ds_cfg.is_zero3() and not ds_cfg.is_offload()
    assert ds_cfg.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pass
    else:  # the Trainer fills the "auto" values and validates the rest
        args = TrainingArguments(output_dir=str(tmp_path / "ds"), deepspeed=ds, bf16=True)
        assert args.hf_deepspeed_config.is_zero3()
    fs = ConfigParser.load_config_file(str(repo_root / C / "fsdp.json"))
    args = TrainingArguments(output_dir=str(tmp_path / "fsdp"), fsdp=fs["fsdp"], fsdp_config=fs["fsdp_config"],
                             use_cpu=True)
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert args.fsdp_config["use_orig_params"] is True and args.fsdp_config["reshard_after_forward"] is True
