"""Training loop of the vision-language model (step 1: projector; step 2: LoRA or full fine-tuning).

:class:`VLMTrainer` is the workflow the ``bundles/vl_alignment`` configs build
(``"run": ["$@trainer.run()"]``): a plain PyTorch loop, because a causal-LM step with
spliced image tokens does not fit MONAI's supervised trainers. It uses MONAI's
``WarmupCosineSchedule``, AdamW, tqdm progress, bf16 autocast on CUDA and gradient
checkpointing where asked, and writes

* ``OUT/model/``: the trained model (:meth:`VisionLanguageModel.save_pretrained`);
* ``OUT/checkpoint/``: the model + ``trainer_state.pt`` (optimizer, scheduler, step, RNG),
  replaced atomically every ``save_every`` steps; a rerun resumes from it;
* ``OUT/loss_history.jsonl``: one line per optimizer step (step, epoch, loss, lr);
* ``OUT/summary.json``: steps, mean loss of the first and last 10% of steps, time, skipped records.

A step whose loss is not finite is skipped and logged (never silently trained on); ten in a
row stop the run with an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hicur_monai.networks.vlm import VisionLanguageModel
from hicur_monai.utils.io import atomic_save_torch, atomic_write_json
from hicur_monai.vlm.data import LlavaConversationDataset

__all__ = ["VLMTrainer", "trainable_state", "vision_spec"]

logger = logging.getLogger(__name__)


def vision_spec(vit_encoder: str | os.PathLike | None, image_size: int = 64, tokens: str = "all") -> dict[str, Any]:
    """The vision-tower spec of the bundle: the HCMAE-exported ViT when ``vit_encoder`` exists, else
    a small random timm ViT (``image_size`` px, patch 16, 192-d, 4 blocks) with a warning.

    A random tower carries no visual knowledge; it lets the pipeline run before Stage I has.
    """
    if vit_encoder and Path(vit_encoder).is_file():
        return {"kind": "encoder_file", "path": str(vit_encoder), "tokens": tokens}
    logger.warning("vision encoder %r not found: using a RANDOM ViT (%d px); train bundles/hcmae_pretrain first "
                   "for a real one", str(vit_encoder), image_size)
    return {"kind": "timm_vit", "seed": 0, "tokens": tokens,
            "kwargs": {"img_size": int(image_size), "patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3,
                       "num_classes": 0}}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that currently require gradients (for before/after checks)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class VLMTrainer:
    """Train a :class:`VisionLanguageModel` on LLaVA conversations.

    Args:
        data: LLaVA ``.json``/``.jsonl`` file (or a list of records).
        output_dir: where ``model/``, ``checkpoint/``, ``loss_history.jsonl``, ``summary.json`` go.
        mode: ``"projector"`` (step 1), ``"lora"`` or ``"full"`` (step 2).
        model: a built model; or give ``init_from`` (a saved model: step 2 starts from step 1's
            ``model/``) or ``vision`` + ``llm`` specs (see :meth:`VisionLanguageModel.build`).
        image_folder: folder the records' ``image`` paths are relative to.
        projector / max_length: for a model built from specs.
        lora: ``LoraConfig`` arguments for ``mode="lora"``.
        tune_projector: train the projector in step 2 too.
        epochs / max_steps: stop after ``epochs`` passes or ``max_steps`` optimizer steps.
        batch_size / grad_accum: micro-batch size and accumulation steps per optimizer step.
        lr / weight_decay / warmup_ratio: AdamW and the warm-up share of a cosine schedule.
        gradient_checkpointing: recompute LLM activations (memory for time).
        bf16: ``"auto"`` (CUDA with bf16 support), True or False.
        device: torch device; None picks CUDA when available.
        seed: for shuffling and dropout.
        save_every: optimizer steps between checkpoints (0: only at the end).
        resume: continue from ``OUT/checkpoint`` when present.
        limit: use only the first ``limit`` records (trial runs).
        num_workers: DataLoader workers.
        max_grad_norm: gradient clipping (0: none).
        progress: show a tqdm bar.
    """

    def __init__(self, data: str | os.PathLike | Sequence[Mapping[str, Any]], output_dir: str | os.PathLike,
                 mode: str = "projector", model: VisionLanguageModel | None = None,
                 init_from: str | os.PathLike | None = None, vision: Mapping[str, Any] | None = None,
                 llm: Mapping[str, Any] | None = None, image_folder: str | os.PathLike | None = None,
                 projector: str = "mlp2x_gelu", max_length: int = 2048, lora: Mapping[str, Any] | None = None,
                 tune_projector: bool = True, epochs: int = 1, max_steps: int | None = None, batch_size: int = 4,
                 grad_accum: int = 1, lr: float = 1e-3, weight_decay: float = 0.0, warmup_ratio: float = 0.03,
                 gradient_checkpointing: bool = False, bf16: bool | str = "auto", device: str | None = None,
                 seed: int = 0, save_every: int = 0, resume: bool = True, limit: int | None = None,
                 num_workers: int = 0, max_grad_norm: float = 1.0, progress: bool = True):
        self.out = Path(output_dir)
        self.mode = mode
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.ckpt = self.out / "checkpoint"
        self.resumed = bool(resume and (self.ckpt / "trainer_state.pt").is_file())
        if self.resumed:
            model = VisionLanguageModel.from_pretrained(self.ckpt, is_trainable=True)
        elif model is None:
            if init_from:
                model = VisionLanguageModel.from_pretrained(init_from, is_trainable=True)
            elif vision is not None and llm is not None:
                model = VisionLanguageModel.build(vision, llm, projector, max_length)
            else:
                raise ValueError("VLMTrainer needs model=, init_from= (a saved model) or vision= and llm= specs")
        self.model = model.to(self.device)
        self.params = self.model.configure_training(mode, lora, tune_projector, gradient_checkpointing)
        if not self.params:
            raise ValueError(f"nothing to train in mode {mode!r}")
        self.dataset = LlavaConversationDataset(data, self.model, image_folder, limit=limit)
        self.batch_size, self.grad_accum = int(batch_size), max(1, int(grad_accum))
        self.epochs, self.seed = int(epochs), int(seed)
        self.num_workers = int(num_workers)
        batches = math.ceil(len(self.dataset) / self.batch_size)
        self.steps_per_epoch = max(1, batches // self.grad_accum)  # a last partial accumulation is dropped
        total = self.steps_per_epoch * self.epochs
        self.total_steps = min(total, int(max_steps)) if max_steps else total
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        from monai.optimizers import WarmupCosineSchedule

        self.scheduler = WarmupCosineSchedule(self.optimizer, warmup_steps=int(warmup_ratio * self.total_steps),
                                              t_total=max(1, self.total_steps))
        self.bf16 = bf16
        self.save_every = int(save_every)
        self.max_grad_norm = float(max_grad_norm)
        self.progress = progress
        self.step, self.epoch = 0, 0
        self.settings = {"mode": mode, "lr": lr, "batch_size": batch_size, "grad_accum": self.grad_accum,
                         "epochs": epochs, "max_steps": max_steps, "weight_decay": weight_decay,
                         "warmup_ratio": warmup_ratio, "gradient_checkpointing": gradient_checkpointing,
                         "tune_projector": tune_projector, "lora": dict(lora) if lora else None, "seed": seed,
                         "data": str(data) if isinstance(data, (str, os.PathLike)) else "<records>"}
        if self.resumed:
            self._load_state()

    # ------------------------------------------------------------------ checkpointing
    def _load_state(self) -> None:
        state = torch.load(self.ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        logger.info("resumed from %s at step %d (epoch %d)", self.ckpt, self.step, self.epoch)

    def save_checkpoint(self) -> Path:
        """Model + trainer state in ``OUT/checkpoint`` (the folder is swapped in atomically)."""
        tmp = self.out / ".checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, extra={"training": self.settings})
        atomic_save_torch({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                           "step": self.step, "epoch": self.epoch, "torch_rng": torch.get_rng_state(),
                           "python_rng": random.getstate(), "numpy_rng": np.random.get_state()},
                          tmp / "trainer_state.pt")
        old = self.out / ".checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.ckpt.exists():
            os.replace(self.ckpt, old)
        os.replace(tmp, self.ckpt)
        shutil.rmtree(old, ignore_errors=True)
        return self.ckpt

    # ------------------------------------------------------------------ loop
    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=g,
                                           collate_fn=self.model.collate, num_workers=self.num_workers)

    def train_step(self, batches: Sequence[Mapping[str, Any]]) -> float | None:
        """One optimizer step over ``batches`` (gradient accumulation); returns the mean loss or None if skipped."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for batch in batches:
            with self.model.autocast(self.bf16):
                out = self.model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])
            loss = out.loss
            if not torch.isfinite(loss):
                ids = batch.get("id", [])
                logger.warning("step %d: non-finite loss %s on records %s; step skipped", self.step, loss.item(), ids)
                self.optimizer.zero_grad(set_to_none=True)
                return None
            (loss / len(batches)).backward()
            losses.append(float(loss.detach()))
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(np.mean(losses))

    def run(self) -> dict[str, Any]:
        """Train until ``epochs`` / ``max_steps``; save ``model/`` and ``summary.json``; return the summary."""
        self.out.mkdir(parents=True, exist_ok=True)
        hist_path = self.out / "loss_history.jsonl"
        history = [json.loads(x) for x in hist_path.read_text().splitlines() if x.strip()] if (
            self.resumed and hist_path.is_file()) else []
        history = [h for h in history if h["step"] <= self.step]
        hist = hist_path.open("w" if not self.resumed else "a", encoding="utf-8")
        if self.resumed:  # rewrite the log up to the checkpoint (later lines belong to lost steps)
            hist.close()
            hist_path.write_text("".join(json.dumps(h) + "\n" for h in history))
            hist = hist_path.open("a", encoding="utf-8")
        t0 = time.time()
        bad_in_row = 0
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"vlm {self.mode}", unit="step",
                   disable=not self.progress)
        try:
            while self.step < self.total_steps:
                pending: list[Mapping[str, Any]] = []
                batches_done = 0
                # after a resume, skip the batches of this epoch that the checkpoint already trained on
                skip = max(0, self.step - self.epoch * self.steps_per_epoch) * self.grad_accum if self.resumed else 0
                for batch in self._loader(self.epoch):
                    batches_done += 1
                    if batches_done <= skip:
                        continue
                    pending.append(batch)
                    if len(pending) < self.grad_accum:
                        continue
                    loss = self.train_step(pending)
                    pending = []
                    if loss is None:
                        bad_in_row += 1
                        if bad_in_row >= 10:
                            raise RuntimeError(f"{bad_in_row} optimizer steps in a row had a non-finite loss; stopping "
                                               f"(last good checkpoint: {self.ckpt})")
                        continue
                    bad_in_row = 0
                    self.step += 1
                    rec = {"step": self.step, "epoch": self.epoch, "loss": loss,
                           "lr": self.optimizer.param_groups[0]["lr"]}
                    history.append(rec)
                    hist.write(json.dumps(rec) + "\n")
                    hist.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if self.save_every and self.step % self.save_every == 0:
                        self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
                self.resumed = False
                self.epoch += 1
        finally:
            bar.close()
            hist.close()
        self.save_checkpoint()
        self.model.save_pretrained(self.out / "model", extra={"training": self.settings})
        losses = [h["loss"] for h in history]
        k = max(1, len(losses) // 10)
        summary = {
            **self.settings,
            "records": len(self.dataset),
            "skipped_records": self.dataset.skipped,
            "steps": self.step,
            "trainable_parameters": int(sum(p.numel() for p in self.params)),
            "loss_first": float(np.mean(losses[:k])) if losses else None,
            "loss_last": float(np.mean(losses[-k:])) if losses else None,
            "seconds": round(time.time() - t0, 1),
            "model": str(self.out / "model"),
            "device": str(self.device),
        }
        atomic_write_json(self.out / "summary.json", summary)
        logger.info("trained %d steps: loss %.4f -> %.4f", self.step, summary["loss_first"] or float("nan"),
                    summary["loss_last"] or float("nan"))
        return summary
