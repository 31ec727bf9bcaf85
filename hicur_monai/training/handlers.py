"""Generic Ignite handlers: atomic resumable checkpoints and a per-epoch loss history.

* :class:`AtomicCheckpointSaver` writes ``<dir>/last.pt`` (every N iterations and at each
  epoch end) with the toolkit's one checkpoint writer (temp file + rename), so a kill at
  any moment leaves the previous checkpoint intact; MONAI's
  :class:`~monai.handlers.CheckpointLoader` reads it back (``latest_checkpoint`` finds it).
* :class:`ResumeFromCheckpoint` resumes from that file when it exists.
* :class:`LossHistory` writes per-epoch means of the scalar losses to JSON.

The stage-I handlers (reconstruction figure, encoder export) are in
:mod:`hicur_monai.training.hcmae`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from hicur_monai.training.engine import LOSS_KEYS, unwrap
from hicur_monai.utils.io import atomic_save_torch

__all__ = ["AtomicCheckpointSaver", "latest_checkpoint", "ResumeFromCheckpoint", "LossHistory"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """Path of the resumable checkpoint in ``ckpt_dir``, or ``None`` when there is none."""
    p = Path(ckpt_dir) / CHECKPOINT_NAME
    return str(p) if p.is_file() else None


class AtomicCheckpointSaver:
    """Save ``save_dict`` (objects with ``state_dict``) atomically to ``<save_dir>/last.pt``.

    Args:
        save_dir: checkpoint folder.
        save_dict: e.g. ``{"network": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}``.
        save_interval: also save every this many iterations (0: only at epoch ends).
        save_final: also save ``<save_dir>/model.pt`` (network weights only) when training completes.
        engine_key: the engine this handler is attached to is saved under this key
            (its epoch / iteration counters), so configs need not refer to the trainer; ``None``: not saved.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 0,
        save_final: bool = True,
        engine_key: str | None = "trainer",
    ) -> None:
        if not save_dict:
            raise ValueError("AtomicCheckpointSaver: save_dict is empty")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.save_final = save_final
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self.save_model)

    def save(self, engine: Engine | None = None) -> Path:
        state = {}
        for k, obj in self.save_dict.items():
            obj = unwrap(obj) if isinstance(obj, torch.nn.Module) else obj
            state[k] = obj.state_dict()
        return atomic_save_torch(state, self.save_dir / CHECKPOINT_NAME)

    def save_model(self, engine: Engine | None = None) -> Path:
        net = self.save_dict.get("network")
        if net is None:
            raise KeyError("AtomicCheckpointSaver.save_model: save_dict has no 'network'")
        return atomic_save_torch(unwrap(net).state_dict(), self.save_dir / "model.pt")


class ResumeFromCheckpoint:
    """Resume from ``<ckpt_dir>/last.pt`` with MONAI's :class:`~monai.handlers.CheckpointLoader` when it exists.

    Restores every object of ``load_dict`` (network, optimizer, LR scheduler, and the
    trainer's epoch / iteration counters), so training continues where the last saved
    checkpoint left it; without a checkpoint (or with ``enabled=False``) training starts fresh.
    The engine it is attached to is restored under ``engine_key``.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        enabled: bool = True,
        map_location: Any = "cpu",
        engine_key: str | None = "trainer",
    ) -> None:
        self.ckpt_dir, self.load_dict = Path(ckpt_dir), dict(load_dict)
        self.enabled, self.map_location = enabled, map_location
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        from monai.handlers import CheckpointLoader

        path = latest_checkpoint(self.ckpt_dir) if self.enabled else None
        if path is None:
            log.info("no checkpoint to resume from in %s: starting fresh", self.ckpt_dir)
            return
        load = {k: (unwrap(v) if isinstance(v, torch.nn.Module) else v) for k, v in self.load_dict.items()}
        if self.engine_key:
            load[self.engine_key] = engine
        CheckpointLoader(load_path=path, load_dict=load, map_location=self.map_location).attach(engine)
        log.info("resuming from %s", path)


class LossHistory:
    """Per-epoch means of the scalar losses in the iteration output, written to a JSON file (atomic).

    When resuming, earlier epochs already in the file are kept.
    """

    def __init__(self, output_file: str | os.PathLike, keys: Sequence[str] = LOSS_KEYS) -> None:
        self.output_file, self.keys = Path(output_file), tuple(keys)
        self._sums: dict[str, float] = {}
        self._n = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._sums, self._n = {k: 0.0 for k in self.keys}, 0

    def _accumulate(self, engine: Engine) -> None:
        out: Any = engine.state.output  # the step's dict of losses
        for k in self.keys:
            if k in out:
                self._sums[k] = self._sums.get(k, 0.0) + float(out[k])
        self._n += 1

    def _write(self, engine: Engine) -> None:
        import json

        from hicur_monai.utils.io import atomic_write_json

        history = json.loads(self.output_file.read_text()) if self.output_file.is_file() else []
        history = [h for h in history if h.get("epoch", 0) < engine.state.epoch]
        history.append({"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                        **{k: v / max(1, self._n) for k, v in self._sums.items()}})
        atomic_write_json(self.output_file, history)

