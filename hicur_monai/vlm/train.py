"""Stage II training on transformers' :class:`~transformers.Trainer` (step 1: projector; step 2: LoRA or full).

The vision-language model trains the way LLaVA and LLaVA-Med train: a
:class:`transformers.Trainer` with :class:`transformers.TrainingArguments`, so data-parallel
(``torchrun``), FSDP, DeepSpeed ZeRO-2/3, bf16, gradient checkpointing, LoRA (peft), resume with
optimizer / scheduler / RNG state, and logging to TensorBoard or MLflow (``report_to``) come from
the library. What is ours:

* :class:`VLMDataCollator`: image + text samples -> the batch :meth:`VisionLanguageModel.forward` takes.
* :class:`VLMTrainer`: a ``Trainer`` subclass whose checkpoints hold only the trained tensors
  (projector, LoRA adapters or the fine-tuned LLM; the frozen vision tower and a frozen LLM base
  are rebuilt from their sources) plus the run's configuration (``vlm_run.json``).
* :class:`VLMTraining`: the workflow ``bundles/vl_alignment`` builds (``"run": ["$@trainer.run()"]``).
  It refuses to resume a checkpoint whose configuration differs from the requested one (naming the
  keys), records the vision encoder's SHA-256, and writes

  - ``OUT/model/``: the trained model (:meth:`VisionLanguageModel.save_pretrained`);
  - ``OUT/checkpoint-<step>/``: the Trainer's checkpoints (``save_every`` steps and the last step); a rerun resumes;
  - ``OUT/loss_history.jsonl``: one line per optimizer step (step, epoch, loss, lr);
  - ``OUT/summary.json``: steps, mean loss of the first and last 10% of steps, time, skipped records.

Only the main process writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hicur_monai.networks.vlm import VisionLanguageModel
from hicur_monai.training.distributed import default_backend
from hicur_monai.utils.checksum import sha256_file
from hicur_monai.utils.flags import as_flag
from hicur_monai.utils.io import atomic_write_json
from hicur_monai.vlm.data import LlavaConversationDataset

__all__ = [
    "RESUME_FREE_KEYS",
    "RUN_CONFIG_NAME",
    "LossHistoryCallback",
    "VLMDataCollator",
    "VLMTrainer",
    "VLMTraining",
    "check_resume_config",
    "config_differences",
    "trainable_state",
    "vision_spec",
]

logger = logging.getLogger(__name__)

#: the run configuration stored in every checkpoint (compared on resume)
RUN_CONFIG_NAME = "vlm_run.json"
#: settings that may change between a run and its resumption (they do not change what is trained)
RESUME_FREE_KEYS = frozenset({"epochs", "max_steps", "save_every", "gradient_checkpointing", "report_to",
                              "world_size", "batch_size", "grad_accum"})
_WEIGHTS = "model.safetensors"


def vision_spec(vit_encoder: str | os.PathLike | None, image_size: int = 64, tokens: str = "all") -> dict[str, Any]:
    """The vision-tower spec of the bundle: the HCMAE-exported ViT when ``vit_encoder`` exists (with its
    SHA-256, checked whenever the model is loaded again), else a small random timm ViT (``image_size``
    px, patch 16, 192-d, 4 blocks) with a warning.

    A random tower carries no visual knowledge; it lets the pipeline run before Stage I has.
    """
    if vit_encoder and Path(vit_encoder).is_file():
        path = Path(vit_encoder).resolve()
        return {"kind": "encoder_file", "path": str(path), "tokens": tokens, "sha256": sha256_file(path)}
    logger.warning("vision encoder %r not found: using a RANDOM ViT (%d px); train bundles/hcmae_pretrain first "
                   "for a real one", str(vit_encoder), image_size)
    return {"kind": "timm_vit", "seed": 0, "tokens": tokens,
            "kwargs": {"img_size": int(image_size), "patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3,
                       "num_classes": 0}}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that currently require gradients (for before/after checks)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def config_differences(recorded: Mapping[str, Any], requested: Mapping[str, Any],
                       free: frozenset[str] = RESUME_FREE_KEYS) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, requested)}`` for every key outside ``free`` whose values differ (JSON-normalised)."""
    norm = json.loads(json.dumps({"a": dict(recorded), "b": dict(requested)}, sort_keys=True, default=str))
    a, b = norm["a"], norm["b"]
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in free and a.get(k) != b.get(k)}


def check_resume_config(checkpoint: str | os.PathLike, requested: Mapping[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` unless it was trained with the ``requested`` configuration.

    Raises:
        ValueError: the checkpoint has no recorded configuration, or keys differ (each one named,
            with the checkpoint's and the requested value).
    """
    path = Path(checkpoint) / RUN_CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{checkpoint}: cannot resume: no {RUN_CONFIG_NAME} records what it was trained with; "
                         "use another output_dir or --resume False to start over")
    diff = config_differences(json.loads(path.read_text()), requested)
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{checkpoint}: cannot resume: the checkpoint was trained with a different configuration "
                         f"(keys that differ: {', '.join(diff)}). {detail}. Use another output_dir, or "
                         "--resume False to start over (the old checkpoints are then removed)")


class VLMDataCollator:
    """Samples of :class:`~hicur_monai.vlm.data.LlavaConversationDataset` -> a right-padded batch
    (``input_ids``, ``attention_mask``, ``labels``, ``images``) for :meth:`VisionLanguageModel.forward`.
    """

    def __init__(self, model: VisionLanguageModel):
        self.model = model

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.model.collate(samples)
        batch.pop("id", None)  # record ids are for messages, not for the model
        return batch


class VLMTrainer(Trainer):
    """:class:`transformers.Trainer` for :class:`VisionLanguageModel`.

    Checkpoints hold only the parameters that train (the projector; LoRA adapters or the LLM) as
    ``model.safetensors`` and the run configuration (``run_config``, written as ``vlm_run.json``):
    the frozen vision tower (checksummed file) and a frozen LLM base are rebuilt from their sources
    on resume. Under DeepSpeed / FSDP the library's own checkpoint format is used as is.
    """

    def __init__(self, *args: Any, run_config: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_config = dict(run_config or {})

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        import safetensors.torch

        if not self.args.should_save:
            return
        out = Path(output_dir or str(self.args.output_dir))  # TrainingArguments always sets output_dir
        out.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        state = state_dict if state_dict is not None else model.state_dict()
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        tensors, seen = {}, set()
        for k, v in state.items():
            if k in names and v.data_ptr() not in seen:  # tied weights are stored once
                seen.add(v.data_ptr())
                tensors[k] = v.detach().contiguous().cpu()
        safetensors.torch.save_file(tensors, str(out / _WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(out / RUN_CONFIG_NAME, self.run_config)
        torch.save(self.args, out / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        import safetensors.torch

        model = model if model is not None else self.model
        assert model is not None  # the Trainer is always built with the model
        path = Path(resume_from_checkpoint) / _WEIGHTS
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        state = safetensors.torch.load_file(str(path), device="cpu")
        own = dict(model.named_parameters())
        unknown = sorted(set(state) - set(own))
        missing = sorted(n for n, p in own.items() if p.requires_grad and n not in state
                         and not any(p is own[k] for k in state if k in own))
        if unknown or missing:
            raise ValueError(f"{path}: does not match the model being trained (unexpected: {unknown[:5]}, "
                             f"missing: {missing[:5]})")
        model.load_state_dict(state, strict=False)
        logger.info("resumed %d trained tensors from %s", len(state), path)


class LossHistoryCallback(TrainerCallback):
    """Append ``{"step", "epoch", "loss", "lr"}`` per logged step to a JSONL file (main process only);
    force a checkpoint at the last step; stop with an error on a non-finite loss.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        if state.is_world_process_zero:
            rec = {"step": state.global_step, "epoch": state.epoch, "loss": loss,
                   "lr": float(logs.get("learning_rate", float("nan")))}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
        if not math.isfinite(loss):
            raise RuntimeError(f"step {state.global_step}: non-finite loss {loss}; stopping (the last good "
                               f"checkpoint is the previous checkpoint-* folder in {args.output_dir})")

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_save = True  # the last step is always checkpointed, so a rerun has nothing left to do
        return control


def _truncate_history(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the history lines up to ``step`` (later lines belong to steps a resume will redo)."""
    hist = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    hist = [h for h in hist if h["step"] <= step]
    path.write_text("".join(json.dumps(h) + "\n" for h in hist))
    return hist


def _saved_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / "vlm_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"init_from {model_dir}: not a saved vision-language model (no vlm_config.json)")
    return json.loads(path.read_text())


def _resolve_bf16(bf16: bool | str, use_cpu: bool) -> bool:
    if bf16 == "auto":
        return (not use_cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return as_flag(bf16, "bf16")


def _backend() -> str | None:
    """The process-group backend when launched by ``torchrun`` with several processes (None otherwise)."""
    return default_backend() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _sharding(deepspeed: Mapping[str, Any] | str | None, fsdp: bool | str | None,
              fsdp_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The TrainingArguments of DeepSpeed / FSDP that are set (the library validates them)."""
    out: dict[str, Any] = {}
    if deepspeed:
        out["deepspeed"] = dict(deepspeed) if isinstance(deepspeed, Mapping) else str(deepspeed)
    if fsdp:
        out["fsdp"] = fsdp
        out["fsdp_config"] = dict(fsdp_config or {})
    return out


@contextlib.contextmanager
def _full_parameters(trainer: Trainer) -> Iterator[None]:
    """Gather sharded parameters (DeepSpeed ZeRO-3, FSDP) on every rank while the final model is written."""
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        assert trainer.model is not None  # the Trainer is always built with the model
        with deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None):
            yield
    elif trainer.is_fsdp_enabled:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(trainer.model_wrapped, writeback=False):
            yield
    else:
        yield


class VLMTraining:
    """Train a :class:`VisionLanguageModel` on LLaVA conversations with :class:`VLMTrainer`.

    Args:
        data: LLaVA ``.json``/``.jsonl`` file (or a list of records).
        output_dir: where ``model/``, ``checkpoint-*/``, ``loss_history.jsonl``, ``summary.json`` go.
        mode: ``"projector"`` (step 1), ``"lora"`` or ``"full"`` (step 2).
        model: a built model; or give ``init_from`` (a saved model: step 2 starts from step 1's
            ``model/``; its LLM and vision specs are used) or ``vision`` + ``llm`` specs
            (see :meth:`VisionLanguageModel.build`).
        image_folder: folder the records' ``image`` paths are relative to.
        projector / max_length: for a model built from specs.
        lora: ``LoraConfig`` arguments for ``mode="lora"``.
        tune_projector: train the projector in step 2 too.
        epochs / max_steps: stop after ``epochs`` passes or ``max_steps`` optimizer steps.
        batch_size / grad_accum: micro-batch size per process and accumulation steps per optimizer step
            (the global batch is ``batch_size * processes * grad_accum``).
        lr / weight_decay / warmup_ratio: AdamW and the warm-up share of a cosine schedule.
        gradient_checkpointing: recompute LLM activations (memory for time).
        bf16: ``"auto"`` (CUDA with bf16 support), True or False.
        device: ``"cpu"`` forces the CPU; None uses the GPU of the process when there is one.
        seed: for shuffling, dropout and the data order.
        save_every: optimizer steps between checkpoints (0: only the last step).
        resume: continue from the last ``checkpoint-*`` when present (refused when its configuration
            differs; ``False`` removes old checkpoints and starts over).
        limit: use only the first ``limit`` records (trial runs).
        num_workers: DataLoader workers.
        max_grad_norm: gradient clipping (0: none).
        progress: show the Trainer's progress bar.
        report_to: the Trainer's loggers (``"none"``, ``"tensorboard"``, ``"mlflow"``, a list).
        deepspeed: a DeepSpeed config (dict or JSON path), e.g. ``configs/zero3.json``'s.
        fsdp / fsdp_config: the Trainer's FSDP switch and settings (``configs/fsdp.json``).
        ddp_backend: process-group backend (default: ``nccl`` with CUDA, else ``gloo``).
        save_total_limit: checkpoints kept (the oldest are deleted).
        run_name: the run's name in the loggers.
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
                 num_workers: int = 0, max_grad_norm: float = 1.0, progress: bool = True,
                 report_to: str | Sequence[str] = "none", deepspeed: Mapping[str, Any] | str | None = None,
                 fsdp: bool | str | None = None, fsdp_config: Mapping[str, Any] | None = None,
                 ddp_backend: str | None = None, save_total_limit: int | None = 2, run_name: str | None = None):
        self.out = Path(output_dir)
        self.mode = mode
        resume, progress = as_flag(resume, "resume"), as_flag(progress, "progress")
        gradient_checkpointing = as_flag(gradient_checkpointing, "gradient_checkpointing")
        tune_projector = as_flag(tune_projector, "tune_projector")
        use_cpu = device == "cpu" or not torch.cuda.is_available()
        if use_cpu and (deepspeed or fsdp):
            raise ValueError("deepspeed / fsdp need GPUs: accelerate runs FSDP and DeepSpeed only on multi-GPU "
                             "setups and would silently train plain data-parallel on the CPU; drop the zero3.json / "
                             "fsdp.json overlay (multi_gpu_train.json is the CPU data-parallel overlay)")
        self.args = TrainingArguments(
            output_dir=str(self.out), per_device_train_batch_size=int(batch_size),
            gradient_accumulation_steps=max(1, int(grad_accum)), num_train_epochs=float(epochs),
            max_steps=int(max_steps) if max_steps else -1, learning_rate=float(lr), weight_decay=float(weight_decay),
            warmup_steps=float(warmup_ratio), lr_scheduler_type="cosine", optim="adamw_torch",
            max_grad_norm=float(max_grad_norm), bf16=_resolve_bf16(bf16, use_cpu), use_cpu=use_cpu,
            seed=int(seed), data_seed=int(seed), logging_steps=1, logging_nan_inf_filter=False,
            save_strategy="steps", save_steps=int(save_every) if save_every else 10**9,
            save_total_limit=save_total_limit, report_to=report_to if isinstance(report_to, str) else list(report_to),
            run_name=run_name or self.out.name,
            dataloader_num_workers=int(num_workers), dataloader_pin_memory=not use_cpu,
            disable_tqdm=not progress, remove_unused_columns=False, ddp_backend=ddp_backend or _backend(),
            ddp_find_unused_parameters=False, **_sharding(deepspeed, fsdp, fsdp_config))
        if model is not None:
            llm_spec = {k: v for k, v in model.llm_spec.items() if k != "in_memory"}
            vis_spec = dict(model.vision_spec)
        elif init_from:
            saved = _saved_config(init_from)
            llm_spec, vis_spec = saved["llm"].get("source", saved["llm"]), saved["vision"]
        elif vision is not None and llm is not None:
            llm_spec, vis_spec = dict(llm), dict(vision)
        else:
            raise ValueError("VLMTraining needs model=, init_from= (a saved model) or vision= and llm= specs")
        accum = self.args.gradient_accumulation_steps
        self.settings = {"mode": mode, "lr": lr, "batch_size": batch_size, "grad_accum": accum,
                         "epochs": epochs, "max_steps": max_steps, "weight_decay": weight_decay,
                         "warmup_ratio": warmup_ratio, "gradient_checkpointing": gradient_checkpointing,
                         "tune_projector": tune_projector, "lora": dict(lora) if lora and mode == "lora" else None,
                         "seed": seed, "data": str(data) if isinstance(data, (str, os.PathLike)) else "<records>"}
        self.run_config = {**self.settings, "llm": llm_spec, "vision": vis_spec, "projector": projector,
                           "max_length": int(max_length), "init_from": str(init_from) if init_from else None,
                           "image_folder": str(image_folder) if image_folder else None, "limit": limit,
                           "bf16": self.args.bf16, "max_grad_norm": float(max_grad_norm),
                           "world_size": self.args.world_size,
                           "global_batch_size": int(batch_size) * self.args.world_size * accum}
        self.resume_from = self._checkpoint_to_resume(resume)
        set_seed(int(seed))  # the projector's initialisation (the same on every process)
        if model is None:
            model = (VisionLanguageModel.from_pretrained(init_from, is_trainable=True) if init_from
                     else VisionLanguageModel.build(vis_spec, llm_spec, projector, max_length))
        self.model = model
        self.params = model.configure_training(mode, lora, tune_projector, gradient_checkpointing)
        if not self.params:
            raise ValueError(f"nothing to train in mode {mode!r}")
        self.dataset = LlavaConversationDataset(data, model, image_folder, limit=limit)
        self.trainer = VLMTrainer(model=model, args=self.args, train_dataset=self.dataset,
                                  data_collator=VLMDataCollator(model), run_config=self.run_config,
                                  callbacks=[LossHistoryCallback(self.out / "loss_history.jsonl")])

    def _checkpoint_to_resume(self, resume: bool) -> str | None:
        """The last ``checkpoint-*`` when resuming (after checking its configuration); old ones removed otherwise."""
        last = get_last_checkpoint(str(self.out)) if self.out.is_dir() else None
        if last is None:
            if (self.out / "checkpoint" / "trainer_state.pt").is_file():
                logger.warning("%s: a checkpoint of the old hand-written trainer; it cannot be resumed and is "
                               "ignored", self.out / "checkpoint")
            return None
        if resume:
            check_resume_config(last, self.run_config)
            return last
        if self.args.should_save:
            for old in self.out.glob("checkpoint-*"):
                logger.warning("resume=false: removing the old checkpoint %s", old)
                shutil.rmtree(old, ignore_errors=True)
        return None

    def run(self) -> dict[str, Any]:
        """Train until ``epochs`` / ``max_steps``; save ``model/`` and ``summary.json``; return the summary."""
        hist_path = self.out / "loss_history.jsonl"
        start = 0
        if self.resume_from:
            start = int(json.loads((Path(self.resume_from) / "trainer_state.json").read_text())["global_step"])
        if self.trainer.is_world_process_zero():
            self.out.mkdir(parents=True, exist_ok=True)
            _truncate_history(hist_path, start)
        self.trainer.accelerator.wait_for_everyone()
        t0 = time.time()
        if self.resume_from and start >= self.total_steps():
            logger.info("%s: the checkpoint has all %d steps; nothing left to train", self.resume_from, start)
            self.trainer._load_from_checkpoint(self.resume_from)
            self.trainer.state.global_step = start
        else:
            self.trainer.train(resume_from_checkpoint=self.resume_from)
        with _full_parameters(self.trainer):
            if self.trainer.is_world_process_zero():
                self.model.save_pretrained(self.out / "model", extra={"training": self.settings})
        summary = self._summary(hist_path, time.time() - t0)
        if self.trainer.is_world_process_zero():
            atomic_write_json(self.out / "summary.json", summary)
        self.trainer.accelerator.wait_for_everyone()
        logger.info("trained %d steps: loss %s -> %s", summary["steps"], summary["loss_first"], summary["loss_last"])
        return summary

    def total_steps(self) -> int:
        """Optimizer steps of the whole run, as the Trainer counts them (``max_steps``, else epochs x steps per
        epoch)."""
        if self.args.max_steps > 0:
            return int(self.args.max_steps)
        batches = len(self.trainer.get_train_dataloader())
        per_epoch = max(1, math.ceil(batches / self.args.gradient_accumulation_steps))
        return per_epoch * math.ceil(self.args.num_train_epochs)

    def _summary(self, hist_path: Path, seconds: float) -> dict[str, Any]:
        lines = hist_path.read_text().splitlines() if hist_path.is_file() else []
        history = [json.loads(x) for x in lines if x.strip()]
        losses = [h["loss"] for h in history]
        k = max(1, len(losses) // 10)
        return {
            **self.settings,
            "records": len(self.dataset),
            "skipped_records": self.dataset.skipped,
            "steps": int(self.trainer.state.global_step),
            "processes": self.args.world_size,
            "global_batch_size": self.run_config["global_batch_size"],
            "trainable_parameters": int(sum(p.numel() for p in self.params)),
            "loss_first": sum(losses[:k]) / k if losses else None,
            "loss_last": sum(losses[-k:]) / k if losses else None,
            "seconds": round(seconds, 1),
            "model": str(self.out / "model"),
            "device": str(self.args.device),
        }
