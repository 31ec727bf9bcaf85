"""Stage II vision-language model: frozen ViT -> projector -> causal LLM (the LLaVA-1.5 coupling).

* :class:`ViTTokenEncoder`: adapter that turns a timm ``VisionTransformer`` (the HCMAE export,
  loaded with :func:`hicur_monai.networks.hcmae.load_encoder`) into a token encoder
  ``(B, 3, H, W) -> (B, N, D)`` (CLS + patch tokens after the final norm: 577 x 768 for
  ViT-B/16 at 384 px, as in the original). Any module with that contract and an ``out_dim``
  attribute can be the vision tower.
* :class:`VisionLanguageModel`: the vision tower (always frozen), a projector (default
  ``mlp2x_gelu``) and a causal LLM from the LLM registry (:mod:`hicur_monai.llm.causal_lm`).
  The image tokens replace the ``<image>`` placeholder in the embedded prompt, rendered with
  the LLM's own chat template; labels cover only the assistant's answers. Training modes:
  ``"projector"`` (step 1), ``"lora"`` (peft) or ``"full"`` (step 2). Generation uses the
  LLM's ``generate`` with its KV cache. ``save_pretrained`` / ``from_pretrained`` write and
  read one folder: ``vlm_config.json``, ``projector.pt``, a peft ``adapter/`` and/or an
  ``llm/`` folder (full weights, or a random base that exists nowhere else) and ``vision/``
  (when the vision tower was not loaded from a file).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hicur_monai.llm.base import GenerationConfig
from hicur_monai.llm.causal_lm import CausalLM, load_causal_lm, load_hf_causal_lm
from hicur_monai.llm.conversation import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, tokenize_conversation
from hicur_monai.networks.projector import build_projector
from hicur_monai.registry import NETWORKS
from hicur_monai.utils.checksum import check_recorded_checksum, sha256_file
from hicur_monai.utils.io import atomic_save_torch, atomic_write_json

__all__ = [
    "ViTTokenEncoder",
    "VisionLanguageModel",
    "build_vision_tower",
    "DEFAULT_REPORT_INSTRUCTION",
    "VLM_FORMAT",
]

logger = logging.getLogger(__name__)

VLM_FORMAT = "hicur-vlm/1"
DEFAULT_REPORT_INSTRUCTION = (
    "Write a formatted diagnostic report for this nasopharyngoscopy image: the findings region by region "
    "(roof, posterior wall, left and right lateral walls), then a one-line impression."
)
_VIT_CLASS = "timm.models.vision_transformer.VisionTransformer"


class ViTTokenEncoder(nn.Module):
    """A timm ``VisionTransformer`` as a token encoder: ``forward_features`` (prefix + patch tokens, normed).

    Args:
        vit: the timm ViT (e.g. from :func:`hicur_monai.networks.hcmae.load_encoder`).
        tokens: ``"all"`` (CLS + patches, the original's 577 tokens) or ``"patch"`` (patches only, LLaVA-1.5).
    """

    def __init__(self, vit: nn.Module, tokens: str = "all"):
        super().__init__()
        if tokens not in ("all", "patch"):
            raise ValueError(f"tokens must be 'all' or 'patch', got {tokens!r}")
        self.vit: Any = vit  # duck-typed: forward_features(x) -> tokens
        self.tokens = tokens
        self.out_dim = int(getattr(vit, "num_features", getattr(vit, "embed_dim", 0)))
        size = getattr(getattr(vit, "patch_embed", None), "img_size", None)
        self.image_size = int(size[0]) if size is not None else None
        self.timm_kwargs: dict[str, Any] | None = None  # set when built from timm kwargs (save_pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)``."""
        t = self.vit.forward_features(x)
        if self.tokens == "patch":
            t = t[:, int(getattr(self.vit, "num_prefix_tokens", 1)):]
        return t


def build_vision_tower(spec: Mapping[str, Any], root: str | os.PathLike | None = None) -> nn.Module:
    """Build the vision tower from a spec.

    Specs:
        ``{"kind": "encoder_file", "path": ".../vit_encoder.pt", "tokens": "all", "sha256": "..."}``: an
        encoder exported by ``HCMAE.export_encoders`` (relative paths resolve against ``root``); when
        ``sha256`` is recorded and the file's differs (Stage I was re-trained), a loud warning says so;
        ``{"kind": "timm_vit", "kwargs": {...}, "seed": 0}``: a timm ``VisionTransformer`` built
        from keyword arguments (random weights; tests and the tiny demo).

    Raises:
        ValueError: an unknown kind or a missing field.
    """
    kind = spec.get("kind")
    tokens = spec.get("tokens", "all")
    if kind == "encoder_file":
        from hicur_monai.networks.hcmae import load_encoder

        if not spec.get("path"):
            raise ValueError("vision spec 'encoder_file' needs 'path' (a vit_encoder.pt exported by HCMAE)")
        path = Path(spec["path"])
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        check_recorded_checksum(path, spec.get("sha256"), "HCMAE ViT encoder (the VLM's vision tower)")
        vit = load_encoder(path)
        if type(vit).__module__ + "." + type(vit).__name__ != _VIT_CLASS:
            raise ValueError(f"{path}: the vision tower must be a ViT, got {type(vit).__name__}")
        return ViTTokenEncoder(vit, tokens)
    if kind == "timm_vit":
        from timm.models.vision_transformer import VisionTransformer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(spec.get("seed", 0)))
            vit = VisionTransformer(**dict(spec.get("kwargs", {})))
        enc = ViTTokenEncoder(vit, tokens)
        enc.timm_kwargs = dict(spec.get("kwargs", {}))  # what save_pretrained writes next to the weights
        return enc
    raise ValueError(f"unknown vision tower kind {kind!r}; expected 'encoder_file' or 'timm_vit'")


def _lora_base_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a peft-wrapped model's base weights under the original names (adapters dropped)."""
    state = cast(Any, peft_model).get_base_model().state_dict()
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


@NETWORKS.add_def("vlm", "vision-language model: frozen ViT -> projector -> causal LLM plugin")
class VisionLanguageModel(nn.Module):
    """Frozen vision tower -> projector -> causal LLM.

    Args:
        vision: token encoder ``(B, 3, H, W) -> (B, N, D)`` with an ``out_dim`` attribute.
        lm: the causal LLM (:class:`hicur_monai.llm.causal_lm.CausalLM`).
        projector: ``"mlp2x_gelu"`` (default), ``"linear"`` or ``"mlp<N>x_gelu"``.
        vision_spec: how to rebuild ``vision`` (see :func:`build_vision_tower`); recorded on save.
        max_length: longest sequence in tokens (an image counts as its number of tokens).
        image_placeholder: the text marking where the image goes.
    """

    def __init__(self, vision: nn.Module, lm: CausalLM, projector: str = "mlp2x_gelu",
                 vision_spec: Mapping[str, Any] | None = None, max_length: int = 2048,
                 image_placeholder: str = IMAGE_PLACEHOLDER):
        super().__init__()
        self.vision = vision.eval()
        self.vision.requires_grad_(False)
        self.llm = lm.model
        self.tokenizer = lm.tokenizer
        self.llm_spec = dict(lm.spec)
        self.vision_spec = dict(vision_spec or {})
        self.projector_kind = projector
        d_vision = int(getattr(vision, "out_dim", 0))
        if d_vision <= 0:
            raise ValueError("the vision tower needs an 'out_dim' attribute (its token width)")
        self.projector = build_projector(projector, d_vision, lm.hidden_size)
        self.max_length = int(max_length)
        self.image_placeholder = image_placeholder
        self.mode = "frozen"
        self.lora_config: dict[str, Any] | None = None
        self._num_image_tokens: int | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, vision: Mapping[str, Any], llm: Mapping[str, Any], projector: str = "mlp2x_gelu",
              max_length: int = 2048, device: str | torch.device | None = None) -> VisionLanguageModel:
        """Build from specs: ``vision`` for :func:`build_vision_tower`, ``llm`` = ``{"backend": name, **kwargs}``."""
        llm = dict(llm)
        backend = llm.pop("backend", None)
        if backend is None:
            raise ValueError("llm spec needs 'backend' (hf_causal_lm, gguf, smollm2 or tiny_random)")
        llm.pop("in_memory", None)
        vision = dict(vision)
        if vision.get("kind") == "encoder_file" and vision.get("path") and not vision.get("sha256"):
            vision["sha256"] = sha256_file(vision["path"])  # recorded with the model, checked on every load
        model = cls(build_vision_tower(vision), load_causal_lm(backend, **llm), projector, vision, max_length)
        return model.to(device) if device is not None else model

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    @property
    def image_size(self) -> int:
        """Input size of the vision tower (square)."""
        size = getattr(self.vision, "image_size", None)
        if not size:
            raise ValueError("the vision tower does not say its image_size")
        return int(size)

    @property
    def num_image_tokens(self) -> int:
        """How many LLM positions one image takes."""
        if self._num_image_tokens is None:
            p = self.projector[0] if isinstance(self.projector, nn.Sequential) else self.projector
            x = torch.zeros(1, 3, self.image_size, self.image_size, device=cast(torch.Tensor, p.weight).device)
            with torch.no_grad():
                self._num_image_tokens = int(self.vision(x).shape[1])
        return self._num_image_tokens

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """Train/eval mode; the vision tower stays in eval mode (it is frozen)."""
        super().train(mode)
        self.vision.eval()
        return self

    # ------------------------------------------------------------------ training setup
    def configure_training(self, mode: str, lora: Mapping[str, Any] | None = None, tune_projector: bool = True,
                           gradient_checkpointing: bool = False) -> list[nn.Parameter]:
        """Choose what trains and return the trainable parameters.

        Args:
            mode: ``"projector"`` (step 1: projector only), ``"lora"`` (peft adapters on the LLM)
                or ``"full"`` (the whole LLM). The vision tower is always frozen.
            lora: ``LoraConfig`` arguments (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``).
            tune_projector: in step 2, train the projector too (LLaVA-1.5 does).
            gradient_checkpointing: recompute LLM activations in the backward pass.
        """
        if mode not in ("projector", "lora", "full"):
            raise ValueError(f"training mode must be 'projector', 'lora' or 'full', got {mode!r}")
        self.vision.requires_grad_(False)
        self.projector.requires_grad_(mode == "projector" or tune_projector)
        if mode == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if not isinstance(self.llm, PeftModel):
                cfg: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]} | dict(lora or {})
                self.lora_config = cfg
                self.llm = get_peft_model(self.llm, LoraConfig(task_type="CAUSAL_LM", **cfg))
            else:  # continuing a LoRA run: only the adapters train
                for name, p in self.llm.named_parameters():
                    p.requires_grad_("lora_" in name)
        else:
            self.llm.requires_grad_(mode == "full")
        if gradient_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.llm.config.use_cache = False
        self.mode = mode
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ inputs
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image tokens ``(B, N, d_llm)`` (the vision tower runs without gradients)."""
        with torch.no_grad():
            feats = self.vision(images.to(self.device, torch.float32))
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(feats.to(proj_dtype))

    def tokenize(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
                 ) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation (see :func:`hicur_monai.llm.conversation.tokenize_conversation`)."""
        return tokenize_conversation(self.tokenizer, messages, add_generation_prompt, self.max_length,
                                     self.image_placeholder, self.num_image_tokens)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Pad token lists (right side) and stack images: the batch :meth:`forward` takes.

        Each sample has ``input_ids`` and ``labels`` (lists or 1-D tensors) and ``image``
        (a ``(3, H, W)`` tensor, or None for a text-only sample).
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        length = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        images = []
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[i, :n] = torch.as_tensor(s["input_ids"], dtype=torch.long)
            if s.get("labels") is not None:
                labels[i, :n] = torch.as_tensor(s["labels"], dtype=torch.long)
            mask[i, :n] = 1
            if s.get("image") is not None:
                images.append(torch.as_tensor(s["image"]))
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask,
                 "images": torch.stack(images) if images else None}
        for key in ("id",):
            if all(key in s for s in samples):
                batch[key] = [s[key] for s in samples]
        return batch

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
              images: torch.Tensor | None = None, padding_side: str = "right"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token embeddings with the image tokens spliced in at each :data:`IMAGE_TOKEN_INDEX`.

        Images are consumed in order, one per placeholder, across the batch.

        Returns:
            ``(inputs_embeds (B, T, d), attention_mask (B, T), labels (B, T) or None)``, padded on ``padding_side``.

        Raises:
            ValueError: the number of placeholders and of images differ.
        """
        dev = self.device
        input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
        table = self.llm.get_input_embeddings()
        feats = self.encode_images(images) if images is not None and len(images) else None
        n_placeholders = int((input_ids[attention_mask.bool()] == IMAGE_TOKEN_INDEX).sum())
        n_images = 0 if feats is None else feats.shape[0]
        if n_placeholders != n_images:
            raise ValueError(f"the batch has {n_placeholders} image placeholder(s) but {n_images} image(s)")
        seqs, labs = [], []
        k = 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            lab = labels[b].to(dev)[keep] if labels is not None else None
            parts, lparts, start = [], [], 0
            for pos in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                assert feats is not None  # as many images as placeholders (checked above)
                parts.append(table(ids[start:pos]))
                parts.append(feats[k].to(parts[-1].dtype))
                if lab is not None:
                    lparts += [lab[start:pos], torch.full((feats.shape[1],), IGNORE_INDEX, device=dev, dtype=lab.dtype)]
                k += 1
                start = pos + 1
            parts.append(table(ids[start:]))
            seqs.append(torch.cat(parts))
            if lab is not None:
                lparts.append(lab[start:])
                labs.append(torch.cat(lparts))
        length = max(s.shape[0] for s in seqs)
        d = seqs[0].shape[1]
        out = seqs[0].new_zeros(len(seqs), length, d)
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=dev)
        lab_out = (torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long, device=dev)
                   if labels is not None else None)
        for i, s in enumerate(seqs):
            n = s.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            out[i, sl] = s
            mask[i, sl] = 1
            if lab_out is not None:
                lab_out[i, sl] = labs[i]
        return out, mask, lab_out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                images: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Run the LLM on the embedded batch; returns its ``CausalLMOutput`` (with ``loss`` when labels are given)."""
        embeds, mask, labels = self.embed(input_ids, attention_mask, labels, images)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)

    # ------------------------------------------------------------------ generation
    def _messages_with_image(self, messages: Sequence[Mapping[str, str]], has_image: bool) -> list[dict[str, str]]:
        msgs = [dict(m) for m in messages]
        placed = sum(m["content"].count(self.image_placeholder) for m in msgs)
        if has_image and placed == 0:
            first_user = next((m for m in msgs if m["role"] == "user"), None)
            if first_user is None:
                raise ValueError("the conversation has no user message to attach the image to")
            first_user["content"] = f"{self.image_placeholder}\n{first_user['content']}"
        elif not has_image and placed:
            raise ValueError(f"the conversation has {placed} {self.image_placeholder} placeholder(s) but no image")
        return msgs

    @torch.inference_mode()
    def generate(self, messages: Sequence[Mapping[str, str]], image: torch.Tensor | None = None,
                 config: GenerationConfig | None = None) -> str:
        """The assistant's next reply to ``messages`` about ``image`` ((3, H, W), model-normalised) or no image.

        Multi-turn: pass the earlier turns in ``messages``. The image is placed before the
        first user message unless a message contains the placeholder. Uses the KV cache.
        """
        cfg = config or GenerationConfig()
        msgs = self._messages_with_image(messages, image is not None)
        ids, _ = self.tokenize(msgs, add_generation_prompt=True)
        batch = self.collate([{"input_ids": ids, "labels": None, "image": image}])
        embeds, mask, _ = self.embed(batch["input_ids"], batch["attention_mask"], None, batch["images"], "left")
        gen: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "use_cache": True}
        if cfg.temperature > 0:
            gen.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        tok = self.tokenizer
        gen["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if cfg.stop:
            gen.update(stop_strings=list(cfg.stop), tokenizer=tok)
        was_training = self.training
        self.eval()
        try:
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, **gen)
        finally:
            self.train(was_training)
        text = tok.decode(out[0], skip_special_tokens=True)
        for stop in cfg.stop:
            if stop in text:
                text = text[: text.index(stop)]
        return text.strip()

    def chat(self, image: torch.Tensor | None, question: str, history: Sequence[tuple[str, str]] = (),
             config: GenerationConfig | None = None, system: str | None = None) -> str:
        """Answer ``question`` about ``image`` after the earlier ``(question, answer)`` turns in ``history``."""
        msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        for q, a in history:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": question})
        return self.generate(msgs, image, config)

    def report(self, image: torch.Tensor, config: GenerationConfig | None = None,
               instruction: str = DEFAULT_REPORT_INSTRUCTION) -> str:
        """Diagnostic-report mode: a formatted report of ``image``."""
        return self.chat(image, instruction, config=config)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the model to ``out_dir`` (a temporary sibling folder renamed into place).

        Writes ``vlm_config.json``, ``projector.pt``; ``adapter/`` (LoRA); ``llm/`` when the LLM
        was fully fine-tuned or exists only in memory; ``vision/vit_encoder.{pt,json}`` when the
        vision tower was not loaded from a file.
        """
        from peft import PeftModel

        target = Path(out_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            atomic_save_torch({k: v.detach().cpu() for k, v in self.projector.state_dict().items()},
                              tmp / "projector.pt")
            vision_spec = dict(self.vision_spec)
            if vision_spec.get("kind") != "encoder_file":
                kwargs = getattr(self.vision, "timm_kwargs", None)
                if kwargs is None:
                    raise ValueError("cannot save a vision tower that was not loaded from a file "
                                     "nor built from timm kwargs")
                vit = cast(nn.Module, self.vision.vit)
                atomic_save_torch({k: v.detach().cpu() for k, v in vit.state_dict().items()},
                                  tmp / "vision" / "vit_encoder.pt")
                atomic_write_json(tmp / "vision" / "vit_encoder.json", {"class": _VIT_CLASS, "kwargs": kwargs,
                                                                       "img_size": self.image_size})
                vision_spec = {"kind": "encoder_file", "path": "vision/vit_encoder.pt",
                               "tokens": vision_spec.get("tokens", "all")}
            else:
                src = Path(vision_spec["path"]).resolve()
                # inside a saved model folder (this one, or a checkpoint that will be replaced): carry it over
                if target.resolve() in src.parents or (src.parent.parent / "vlm_config.json").is_file():
                    (tmp / "vision").mkdir(exist_ok=True)
                    for f in (src, src.with_suffix(".json")):
                        shutil.copy2(f, tmp / "vision" / f.name)
                    vision_spec["path"] = f"vision/{src.name}"
                else:
                    vision_spec["path"] = str(src)
            is_peft = isinstance(self.llm, PeftModel)
            llm_spec = {k: v for k, v in self.llm_spec.items() if k != "in_memory"}
            saved_llm = self.mode == "full" or bool(self.llm_spec.get("in_memory"))
            if saved_llm:
                base = self.llm.get_base_model() if is_peft else self.llm
                state = _lora_base_state(self.llm) if is_peft else None
                base.save_pretrained(tmp / "llm", state_dict=state)
                self.tokenizer.save_pretrained(tmp / "llm")
                llm_spec = {"backend": "hf_causal_lm", "path": "llm", "source": llm_spec}
            if is_peft:
                self.llm.save_pretrained(tmp / "adapter")
            config = {
                "format": VLM_FORMAT,
                "vision": vision_spec,
                "llm": llm_spec,
                "projector": {"kind": self.projector_kind, "d_vision": int(cast(int, self.vision.out_dim)),
                              "d_llm": int(self.projector_out_dim)},
                "adapter": "adapter" if is_peft else None,
                "lora": self.lora_config,
                "mode": self.mode,
                "max_length": self.max_length,
                "image_placeholder": self.image_placeholder,
                "num_image_tokens": self.num_image_tokens,
                "image_size": self.image_size,
                **dict(extra or {}),
            }
            atomic_write_json(tmp / "vlm_config.json", config)
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @property
    def projector_out_dim(self) -> int:
        last = [m for m in self.projector.modules() if isinstance(m, nn.Linear)][-1]
        return int(last.out_features)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, llm: Mapping[str, Any] | None = None,
                        device: str | torch.device | None = None, is_trainable: bool = False) -> VisionLanguageModel:
        """Load a model written by :meth:`save_pretrained` in one call.

        Args:
            path: the folder.
            llm: override the LLM spec (e.g. the base Llama-3 folder moved: ``{"backend": "hf_causal_lm",
                "path": "/new/place"}``).
            device: where to put the model.
            is_trainable: keep LoRA adapters trainable (to continue training).

        Raises:
            FileNotFoundError / ValueError: naming the file and field that are missing or wrong.
        """
        root = Path(path)
        cfg_path = root / "vlm_config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{root}: not a saved vision-language model (no vlm_config.json)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != VLM_FORMAT:
            raise ValueError(f"{cfg_path}: 'format' is {cfg.get('format')!r}, expected {VLM_FORMAT!r}")
        vision = build_vision_tower(cfg["vision"], root)
        spec = dict(llm or cfg["llm"])
        backend = spec.pop("backend")
        spec.pop("source", None)
        if backend == "hf_causal_lm" and not Path(spec["path"]).is_absolute():
            lm = load_hf_causal_lm(root / spec["path"], **{k: v for k, v in spec.items() if k != "path"})
            lm.spec = dict(cfg["llm"].get("source", lm.spec))
        else:
            lm = load_causal_lm(backend, **spec)
        model = cls(vision, lm, cfg["projector"]["kind"], cfg["vision"], cfg.get("max_length", 2048),
                    cfg.get("image_placeholder", IMAGE_PLACEHOLDER))
        if cfg["llm"].get("path") == "llm":  # the LLM weights live in this folder; keep saving them there
            model.llm_spec["in_memory"] = True
        state = torch.load(root / "projector.pt", map_location="cpu", weights_only=True)
        model.projector.load_state_dict(state)
        if cfg.get("adapter"):
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, root / cfg["adapter"], is_trainable=is_trainable)
            model.lora_config = cfg.get("lora")
        model.mode = cfg.get("mode", "frozen")
        model.vision_spec = dict(cfg["vision"])
        if model.vision_spec.get("kind") == "encoder_file" and not Path(model.vision_spec["path"]).is_absolute():
            model.vision_spec["path"] = str((root / model.vision_spec["path"]).resolve())
        model.eval()
        return model.to(device) if device is not None else model

    def merge_adapter(self) -> VisionLanguageModel:
        """Fold a LoRA adapter into the LLM's weights, for inference (peft ``merge_and_unload``).

        The outputs stay the same; each forward pass skips the adapter's extra matrix products
        (about 20% of a SmolLM2 coarse-state pass on one CPU thread). Nothing is lost: the merged
        LLM now exists only in memory, so a later :meth:`save_pretrained` writes it (``llm/``).
        Without an adapter this does nothing. Returns ``self``.
        """
        from peft import PeftModel

        if isinstance(self.llm, PeftModel):
            self.llm = self.llm.merge_and_unload()
            self.llm_spec["in_memory"] = True
        return self

    def autocast(self, enabled: bool | str = "auto") -> AbstractContextManager[Any]:
        """A bf16 autocast context where the device supports it (CUDA with bf16), else a no-op."""
        dev = self.device
        if enabled == "auto":
            enabled = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.autocast(dev.type, dtype=torch.bfloat16) if enabled else nullcontext()
