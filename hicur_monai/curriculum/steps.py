"""Curriculum steps: a command, the paths it reads and the paths it writes.

A step is skipped when every output exists and its stamp (``<out>/.curriculum/<name>.json``)
records the same command and the same fingerprint of its inputs (size and modification time
of every file under each input path): nothing already done is computed again or lost. A step
that fails leaves no stamp, so the next run repeats it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hicur_monai.utils.io import atomic_write_json

__all__ = ["Step", "StepOutcome", "fingerprint", "run_steps", "STAMP_DIR"]

#: folder (inside the run's output folder) holding one stamp per finished step
STAMP_DIR = ".curriculum"


@dataclass(frozen=True)
class Step:
    """One curriculum step.

    Attributes:
        name: short file-safe name (the stamp's name), e.g. ``"stage1_hcmae"``.
        title: what the progress line says, e.g. ``"I  HCMAE pre-training"``.
        command: the command as a list (run without a shell, from the repository root).
        inputs: files or folders the step reads (a missing one is an error before the step runs).
        outputs: files or folders the step writes (all must exist afterwards).
        action: run in-process instead of ``command`` (the table step); ``command`` is then only displayed.
        always: run even when up to date (cheap steps that summarise the others).
    """

    name: str
    title: str
    command: tuple[str, ...]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    action: Callable[[], None] | None = field(default=None, compare=False)
    always: bool = False

    def display(self) -> str:
        """The command as one shell line (an argument holding single quotes goes in double quotes)."""
        return " ".join(_quote(a) for a in self.command)


def _quote(arg: str) -> str:
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


@dataclass(frozen=True)
class StepOutcome:
    """What happened to a step: ``"ran"``, ``"skipped"`` or ``"dry-run"``, and its wall time."""

    name: str
    status: str
    seconds: float


def fingerprint(paths: Sequence[Path]) -> str:
    """SHA-256 over (path, size, mtime) of every file under ``paths`` (folders walked, sorted)."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stamp(step: Step) -> dict:
    return {"command": list(step.command), "inputs": fingerprint(step.inputs)}


def _up_to_date(step: Step, stamp_file: Path) -> bool:
    if step.always or not step.outputs or not all(p.exists() for p in step.outputs) or not stamp_file.is_file():
        return False
    try:
        return json.loads(stamp_file.read_text()) == _stamp(step)
    except (OSError, ValueError):
        return False


def _check_inputs(step: Step) -> None:
    missing = [str(p) for p in step.inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"curriculum step {step.name!r} ({' '.join(step.title.split())}): missing input(s) "
                                f"{', '.join(missing)}; an earlier step should have written them")


def _execute(step: Step, env: dict[str, str] | None) -> None:
    if step.action is not None:
        step.action()
        return
    proc = subprocess.run(list(step.command), env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"curriculum step {step.name!r} ({' '.join(step.title.split())}) failed with exit code "
                           f"{proc.returncode}: {step.display()}")
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        written = ", ".join(missing)
        raise RuntimeError(f"curriculum step {step.name!r} ran but did not write {written}: {step.display()}")


def _print(line: str) -> None:
    print(line, flush=True)  # before the step's own output, which goes straight to the terminal


def run_steps(steps: Sequence[Step], out: Path, dry_run: bool = False, env: dict[str, str] | None = None,
              log: Callable[[str], None] = _print) -> list[StepOutcome]:
    """Run ``steps`` in order, skipping those already done; print one progress line per step with its wall time.

    Args:
        steps: the steps, in order.
        out: the run's output folder (stamps go to ``out/.curriculum/``).
        dry_run: only print each step's command (nothing runs, nothing is written).
        env: environment of the commands (default: this process's).
        log: where progress lines go.

    Raises:
        FileNotFoundError: a step's input is missing when it is its turn.
        RuntimeError: a step's command failed or did not write its outputs.
    """
    outcomes = []
    stamps = Path(out) / STAMP_DIR
    for i, step in enumerate(steps, 1):
        head = f"[curriculum {i}/{len(steps)}] {step.title}"
        if dry_run:
            log(f"{head}\n    {step.display()}")
            outcomes.append(StepOutcome(step.name, "dry-run", 0.0))
            continue
        stamp_file = stamps / f"{step.name}.json"
        if _up_to_date(step, stamp_file):
            log(f"{head}: skipped (outputs exist, inputs and command unchanged)")
            outcomes.append(StepOutcome(step.name, "skipped", 0.0))
            continue
        _check_inputs(step)
        log(f"{head}: running\n    {step.display()}")
        t0 = time.time()
        _execute(step, env)
        seconds = time.time() - t0
        os.makedirs(stamps, exist_ok=True)
        atomic_write_json(stamp_file, _stamp(step))
        log(f"{head}: done in {seconds:.0f} s (wall)")
        outcomes.append(StepOutcome(step.name, "ran", seconds))
    return outcomes
