"""benchmarks/gpu_check.py runs at toy size on the CPU, so the GPU check cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("timm")


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_tiny(repo_root):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--json"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["hcmae"]["images_per_s"] > 0 and out["hcmae"]["gflops_per_image"] > 0
    assert out["hcmae"]["mfu"] is None  # no peak FLOP/s for a CPU
    assert [v["model"] for v in out["vlm"]] == ["VLM SmolLM2-135M-shape (tiny)", "VLM 1B-class (tiny)"]
    assert all(v["tokens_per_s"] > 0 for v in out["vlm"]) and out["segmentation"]["volumes_per_s"] > 0
    assert [r["processes"] for r in out["ddp_scaling"]] == [1, 2] and out["ddp_scaling"][0]["efficiency"] == 1.0
