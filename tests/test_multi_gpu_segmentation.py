"""bundles/npc_segmentation under torchrun: 2 gloo processes on the CPU, as on 2 GPUs with nccl.

The Dice-focal loss is a mean over slices and pixels and the network normalises per sample
(instance norm), so 2 DDP processes with 1 volume each equal 1 process with both volumes in its
batch: the weights after the run agree to rtol 1e-4, atol 1e-6 (float32 sums in another order
through AdamW). Validation runs on every rank (its metrics gather across ranks); only rank 0 writes.
"""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from multi_gpu_helpers import PER_RANK, launch, written_files  # noqa: E402

pytestmark = pytest.mark.slow

CONFIGS = ["bundles/npc_segmentation/configs/train.json", "bundles/npc_segmentation/configs/demo.json"]
DDP = "bundles/npc_segmentation/configs/multi_gpu_train.json"
TINY = {"max_patients": 4, "val_every": 3, "sequences": ["T1C"], "augment": False, "norm": "instance",
        "val_interval": 1, "schedule_epochs": 3, "num_workers": 0}


@pytest.fixture(scope="module")
def runs(demo_cohort, tmp_path_factory):
    base = tmp_path_factory.mktemp("seg_ddp")
    launch(2, [*CONFIGS, DDP], dataset_dir=str(demo_cohort), output_dir=PER_RANK.format(base=base / "ddp"),
           epochs=1, batch_size=1, **TINY)
    launch(1, CONFIGS, dataset_dir=str(demo_cohort), output_dir=str(base / "single"), epochs=1, batch_size=2, **TINY)
    return base


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    rank0, rank1 = runs / "ddp" / "rank0", runs / "ddp" / "rank1"
    files0 = written_files(rank0)
    assert {"models/last.pt", "models/model.pt", "val_contours.png"} <= files0
    assert any(f.startswith("tensorboard/") for f in files0)
    # rank 1 writes no checkpoint, figure or log (only its coarse-state cache, a data cache)
    assert not rank1.exists() or all(f.startswith("coarse_cache/") for f in written_files(rank1))
    got = torch.load(rank0 / "models" / "model.pt", map_location="cpu", weights_only=True)
    ref = torch.load(runs / "single" / "models" / "model.pt", map_location="cpu", weights_only=True)
    it_ddp = torch.load(rank0 / "models" / "last.pt", map_location="cpu", weights_only=False)["trainer"]["iteration"]
    ckpt_one = torch.load(runs / "single" / "models" / "last.pt", map_location="cpu", weights_only=False)
    it_one = ckpt_one["trainer"]["iteration"]
    assert it_ddp == it_one > 0
    assert got.keys() == ref.keys()
    for k in ref:
        if not isinstance(ref[k], torch.Tensor):  # the network's recorded settings (_extra_state)
            assert got[k] == ref[k], k
            continue
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_ranks_see_disjoint_shards(demo_cohort, repo_root):
    from monai.bundle import ConfigParser

    shards = []
    for rank in range(2):
        parser = ConfigParser()
        parser.read_config([str(repo_root / c) for c in (*CONFIGS, DDP)])
        parser.update({"dataset_dir": str(demo_cohort), **TINY, "train#sampler#num_replicas": 2,
                       "train#sampler#rank": rank, "use_coarse": False})
        shards.append(list(parser.get_parsed_content("train#sampler")))
    assert shards[0] and set(shards[0]).isdisjoint(shards[1]) and len(shards[0]) == len(shards[1])


def test_resume_two_to_one_and_one_to_two(runs, demo_cohort, tmp_path):
    shutil.copytree(runs / "ddp" / "rank0", tmp_path / "a")
    launch(1, CONFIGS, dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "a"), epochs=2, batch_size=2, **TINY)
    one = torch.load(tmp_path / "a" / "models" / "last.pt", map_location="cpu", weights_only=False)["trainer"]
    launch(2, [*CONFIGS, DDP], dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "a"), epochs=3, batch_size=1,
           **TINY)
    two = torch.load(tmp_path / "a" / "models" / "last.pt", map_location="cpu", weights_only=False)["trainer"]
    per_epoch = one["iteration"] // 2
    assert (one["max_epochs"], two["max_epochs"]) == (2, 3) and two["iteration"] == 3 * per_epoch > 0
