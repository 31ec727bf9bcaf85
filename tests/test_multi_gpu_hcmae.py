"""bundles/hcmae_pretrain under torchrun: 2 gloo processes on the CPU, as on 2 GPUs with nccl.

HCMAE's losses depend on the batch a process sees (the masks are drawn per batch, the contrastive
negatives are the process's own batch, as in the released code), so the 1-process run with the same
global batch that 2 DDP processes equal is one that accumulates the two processes' batches (each with
its masks) before the optimiser step: the test runs that from the bundle's own objects and compares
the weights after the run (rtol 1e-4, atol 1e-6: float32 sums in another order through AdamW).
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from multi_gpu_helpers import PER_RANK, launch, written_files  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN = "bundles/hcmae_pretrain/configs/train.json"
DDP = "bundles/hcmae_pretrain/configs/multi_gpu_train.json"
TINY = {"max_items": 8, "slice_step": 3, "augment": False, "val_interval": 100, "num_workers": 0,
        "cpu_threads": 1, "save_interval": 0}
PER_RANK_BATCH = 2  # x 2 processes: global batch 4, 2 iterations per epoch over 8 images


@pytest.fixture(scope="module")
def ddp_run(demo_cohort, tmp_path_factory):
    base = tmp_path_factory.mktemp("hcmae_ddp")
    launch(2, [TRAIN, DDP], dataset_dir=str(demo_cohort), output_dir=PER_RANK.format(base=base), epochs=1,
           batch_size=PER_RANK_BATCH, **TINY)
    return base


def _reference(demo_cohort, repo_root, output_dir, iterations: int) -> dict:
    """One process, the same global batch: the two ranks' batches accumulated, as DDP averages them."""
    import monai
    from monai.bundle import ConfigParser
    from torch.utils.data import DataLoader, DistributedSampler

    from hicur_monai.training import mask_generator

    parser = ConfigParser()
    parser.read_config(str(repo_root / TRAIN))
    parser.update({"dataset_dir": str(demo_cohort), "output_dir": str(output_dir), "epochs": 1,
                   "batch_size": 2 * PER_RANK_BATCH, **TINY})
    monai.utils.set_determinism(seed=0)
    torch.set_num_threads(1)
    trainer = parser.get_parsed_content("train#trainer")  # built in the bundle's order (same initial weights)
    net, opt = trainer.network, trainer.optimizer
    sched, dataset = parser.get_parsed_content("train#lr_scheduler"), parser.get_parsed_content("train#dataset")
    samplers = [DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0, drop_last=True)
                for r in range(2)]
    for sampler in samplers:
        sampler.set_epoch(1)  # MONAI's workflow sets the engine's epoch, counted from 1
    # every DDP process has the same global RNG state (same seed): each micro-batch here starts from it too
    # (the DataLoader's base seed, dropout / drop-path draws)
    rng, loaders = torch.get_rng_state(), []
    for sampler in samplers:
        torch.set_rng_state(rng)
        loaders.append(iter(DataLoader(dataset, batch_size=PER_RANK_BATCH, drop_last=True, sampler=sampler)))
    net.train()
    for it in range(1, iterations + 1):
        opt.zero_grad(set_to_none=True)
        rng = torch.get_rng_state()
        for loader in loaders:
            torch.set_rng_state(rng)
            out = net(next(loader)["image"], task="pretrain", generator=mask_generator(0, it))
            (out["loss"] / 2).backward()
        opt.step()
        net.update_target(it / iterations)
        sched.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_two_processes_equal_one_with_the_same_global_batch(ddp_run, demo_cohort, repo_root, tmp_path):
    rank0, rank1 = ddp_run / "rank0", ddp_run / "rank1"
    # only rank 0 writes checkpoints, exports, figures and logs
    assert {"models/last.pt", "models/model.pt", "models/vit_encoder.pt", "reconstruction.png",
            "loss_history.json"} <= written_files(rank0)
    assert any(f.startswith("tensorboard/") for f in written_files(rank0))
    assert not rank1.exists() or written_files(rank1) == set()
    ckpt = torch.load(rank0 / "models" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 2  # 8 images / (2 processes x 2)
    ref = _reference(demo_cohort, repo_root, tmp_path, iterations=2)  # its writer logs under tmp_path
    got = torch.load(rank0 / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_ranks_see_disjoint_shards(demo_cohort, repo_root):
    from monai.bundle import ConfigParser

    shards = []
    for rank in range(2):
        parser = ConfigParser()
        parser.read_config([str(repo_root / TRAIN), str(repo_root / DDP)])
        parser.update({"dataset_dir": str(demo_cohort), **TINY, "train#sampler#num_replicas": 2,
                       "train#sampler#rank": rank})
        shards.append(list(parser.get_parsed_content("train#sampler")))
    assert set(shards[0]).isdisjoint(shards[1]) and len(shards[0]) == len(shards[1]) == 4
    assert sorted(shards[0] + shards[1]) == list(range(8))


def test_resume_two_to_one_and_one_to_two(ddp_run, demo_cohort, tmp_path):
    # 2 -> 1: the DDP checkpoint (epoch 1) continues in one process with the same global batch
    shutil.copytree(ddp_run / "rank0", tmp_path / "a")
    launch(1, [TRAIN], dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "a"), epochs=2,
           batch_size=2 * PER_RANK_BATCH, **TINY)
    state = torch.load(tmp_path / "a" / "models" / "last.pt", map_location="cpu", weights_only=False)["trainer"]
    assert (state["max_epochs"], state["iteration"]) == (2, 4)
    # 1 -> 2: that one-process checkpoint (epoch 2) continues under DDP
    launch(2, [TRAIN, DDP], dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "a"), epochs=3,
           batch_size=PER_RANK_BATCH, **TINY)
    state = torch.load(tmp_path / "a" / "models" / "last.pt", map_location="cpu", weights_only=False)["trainer"]
    assert (state["max_epochs"], state["iteration"]) == (3, 6)
    import json

    history = json.loads((tmp_path / "a" / "loss_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
