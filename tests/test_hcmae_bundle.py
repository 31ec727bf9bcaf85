"""The hcmae_pretrain bundle: metadata, network I/O, training with exact resume after a kill, evaluation, inference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BUNDLE = Path("bundles/hcmae_pretrain/configs")
QUICK = {
    "max_items": 24,
    "slice_step": 3,
    "batch_size": 8,
    "augment": False,
    "val_interval": 100,
    "cpu_threads": 1,
    "num_workers": 0,
}


@pytest.fixture(autouse=True)
def _at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # bundles resolve transforms/*.json from the repository root


def _run(configs, **overrides):
    from monai.bundle import run

    run(config_file=[str(BUNDLE / c) for c in configs], **overrides)


def test_metadata_is_valid(meta_schema, repo_root):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(repo_root / BUNDLE / "metadata.json"), filepath=str(meta_schema))


def test_verify_net_in_out(repo_root):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(repo_root / BUNDLE / "metadata.json"),
        config_file=str(repo_root / BUNDLE / "train.json"),
        device="cpu",
    )


def test_bundle_configs_parse_with_overlays(repo_root):
    from monai.bundle import ConfigParser

    for extra in ("evaluate.json", "inference.json", "base.json", "multi_gpu_train.json", "cpu_lean.json"):
        p = ConfigParser()
        p.read_config([str(BUNDLE / "train.json"), str(BUNDLE / extra)])
        assert p["network_def"]["_target_"] == "hicur_monai.networks.hcmae.HCMAE"
    p = ConfigParser()
    p.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "base.json")])
    assert (p["preset"], p["img_size"], p["batch_size"]) == ("base", 384, 128)


def test_cpu_lean_overlay_switches_optimizer_checkpointing_depthwise_and_heap(repo_root):
    from monai.bundle import ConfigParser

    from hicur_monai.training.cpu_lean import AdamWInBackward, FastDepthwiseConv2d

    for lean in (False, True):
        p = ConfigParser()
        p.read_config([str(BUNDLE / c) for c in ("train.json", "base.json", *(("cpu_lean.json",) if lean else ()))])
        p.update({"preset": "tiny", "img_size": 64, "device": "$torch.device('cpu')"})
        net = p.get_parsed_content("network")
        assert net.config.grad_checkpointing is lean
        assert any(isinstance(m, FastDepthwiseConv2d) for m in net.modules()) is lean
        assert any("cpu_lean" in e for e in p["initialize"]) is lean
        trainer_cls = p.get_parsed_content("train#trainer#_target_")
        assert (trainer_cls == "hicur_monai.training.cpu_lean.LeanMaskedImageTrainer") is lean
        opt = p.get_parsed_content("train#optimizer")
        assert isinstance(opt, AdamWInBackward) is lean
        assert isinstance(opt, torch.optim.AdamW) or lean
    assert p.get_parsed_content("heap_mmap_threshold") == 2097152


def test_bundle_json_holds_wiring_only(repo_root):
    """No conditionals or lambdas in ``$`` expressions, none longer than 120 characters (issue 18)."""

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    for path in sorted((repo_root / BUNDLE).glob("*.json")):
        for expr in (e for e in strings(json.loads(path.read_text())) if e.startswith("$")):
            assert " if " not in expr and "lambda" not in expr, f"{path.name}: {expr}"
            assert len(expr) <= 120, f"{path.name}: {len(expr)} characters: {expr}"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_train_resumes_exactly_after_kill(demo_cohort, tmp_path, repo_root):
    # fixed data order: the sampler's shuffling is not part of the checkpoint (see the bundle README)
    common = {**QUICK, "dataset_dir": str(demo_cohort), "epochs": 4, "max_items": 40, "train#sampler#shuffle": False}
    # uninterrupted reference run
    _run(["train.json"], output_dir=str(tmp_path / "ref"), **common)
    ref = _weights(tmp_path / "ref/models/model.pt")
    history = json.loads((tmp_path / "ref/loss_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]

    # the same run (same config, so the same LR schedule) dies hard (os._exit, no clean-up, like
    # SIGKILL) right after its first epoch's handlers ran: a point the test controls, not a race
    out = tmp_path / "killed"
    crash = tmp_path / "crash_after_epoch_1.json"
    crash.write_text(json.dumps({"run": [
        "$import os",
        "$import ignite",
        # (no 'import' word here: MONAI would take the expression for an import statement)
        "$@train#trainer.add_event_handler(ignite.engine.Events.EPOCH_COMPLETED(once=1), lambda e: os._exit(9))",
        "$@train#trainer.run()",
    ]}))
    args = [f"--{k}={v}" for k, v in common.items()]  # fire reads True/False as booleans
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           json.dumps([str(BUNDLE / "train.json"), str(crash)]), f"--output_dir={out}", *args]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=repo_root,
                          timeout=600)
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert not (out / "models/model.pt").exists()
    saved = torch.load(out / "models/last.pt", map_location="cpu", weights_only=False)
    steps_per_epoch = saved["trainer"]["epoch_length"]
    assert saved["trainer"]["iteration"] == steps_per_epoch  # exactly epoch 1 was saved
    assert [h["epoch"] for h in json.loads((out / "loss_history.json").read_text())] == [1]
    # resume: the final weights equal the uninterrupted run's
    _run(["train.json"], output_dir=str(out), **common)
    resumed = _weights(out / "models/model.pt")
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), f"{k} differs after resume"


@pytest.mark.slow
def test_train_evaluate_infer_on_demo_cohort(demo_cohort, tmp_path):
    out = tmp_path / "run"
    common = {**QUICK, "dataset_dir": str(demo_cohort), "output_dir": str(out), "max_items": 48}
    _run(["train.json"], epochs=4, **{**common, "val_interval": 2})
    history = json.loads((out / "loss_history.json").read_text())
    assert history[-1]["loss_mae"] < history[0]["loss_mae"]
    assert (out / "reconstruction.png").stat().st_size > 10_000
    for name in ("vit_encoder", "convnext_encoder"):
        assert (out / f"models/{name}.pt").is_file() and (out / f"models/{name}.json").is_file()

    _run(["train.json", "evaluate.json"], **common)
    metrics = json.loads((out / "eval/metrics.json").read_text())
    assert metrics["val_recon_loss"] > 0
    probe = json.loads((out / "eval/probe.json").read_text())
    pairs = {(p["target"], p["feature"]) for p in probe["probes"]}
    assert pairs >= {("tumour", "vit_cls"), ("sequence", "convnext_pool")}
    for p in probe["probes"]:
        for side in ("pretrained", "random_init"):
            assert 0.0 <= p[side]["accuracy"] <= 1.0

    _run(["train.json", "inference.json"], **common)
    feats = torch.load(out / "features.pt", map_location="cpu", weights_only=False)
    assert len(feats["rows"]) == feats["vit_cls"].shape[0] == feats["convnext_pool"].shape[0] > 0
    assert len(set(feats["rows"])) == len(feats["rows"])  # one row per image, keyed by datalist row
    assert all(r.split("/")[0] in ("mri", "ct", "endoscopy") for r in feats["rows"])
