"""Launch a bundle under ``torchrun`` (gloo on the CPU) or as one plain process, for the multi-GPU tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: the ``output_dir`` override that gives every rank its own folder (to see which rank writes what)
PER_RANK = "$'{base}/rank' + __import__('os').environ.get('RANK', '0')"


def _arg(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def launch(nproc: int, configs: Sequence[str], timeout: int = 240, **overrides: Any) -> str:
    """Run ``python -m monai.bundle run`` with ``configs`` (paths from the repository root) in ``nproc``
    processes (``torchrun --standalone``; one process: no torchrun) and return the output.

    Raises:
        AssertionError: the run failed (with the last lines of its output).
    """
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    for k, v in overrides.items():
        cmd += [f"--{k}", _arg(v)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{out[-4000:]}"
    return out


def written_files(folder: Path) -> set[str]:
    """Relative paths of the files under ``folder``."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()}
