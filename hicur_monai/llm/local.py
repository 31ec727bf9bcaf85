"""A chat model from a local transformers causal-LM folder (chat template applied).

``transformers`` and ``torch`` are imported when a model is built, not when this module
is imported, so ``import hicur_monai.llm`` stays cheap.

Example:
    >>> from hicur_monai.llm import load_chat_model
    >>> model = load_chat_model("transformers", path="/models/Meta-Llama-3-8B-Instruct")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message
from hicur_monai.registry import LLM_BACKENDS

__all__ = ["TransformersChatModel"]


@LLM_BACKENDS.add_def("transformers", "local transformers causal LM folder, chat template applied")
class TransformersChatModel(ChatModel):
    """Chat with a causal LM saved by ``save_pretrained`` (model + tokenizer with a chat template).

    Args:
        path: the model folder (``config.json``, weights, tokenizer files).
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``None`` picks CUDA when available.
        dtype: torch dtype name (``"bfloat16"``, ``"float16"``, ``"float32"``); ``None``: the saved dtype.
        chat_template: a Jinja chat template to use when the tokenizer has none.
        model / tokenizer: already-built objects (then ``path`` only names them).
    """

    def __init__(self, path: str | Path, device: str | None = None, dtype: str | None = None,
                 chat_template: str | None = None, model: Any = None, tokenizer: Any = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        self.name = f"transformers:{self.path.name}"
        if model is None or tokenizer is None:
            if not (self.path / "config.json").is_file():
                raise FileNotFoundError(f"{self.path}: not a transformers model folder (no config.json)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.path)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.path}: the tokenizer has no chat template; pass chat_template=... "
                             "(a Jinja template) or use an instruction-tuned model folder")
        if model is None:
            kwargs: dict[str, Any] = {}
            if dtype:
                if not hasattr(torch, dtype):
                    raise ValueError(f"unknown torch dtype {dtype!r}")
                kwargs["dtype"] = getattr(torch, dtype)
            model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        self.model = model.to(self.device).eval()

    def prompt_ids(self, messages: Sequence[Message]) -> tuple[Any, Any]:
        """Token ids of ``messages`` with the chat template and the generation prompt applied."""
        enc: Any = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                      return_tensors="pt", return_dict=True)
        return enc["input_ids"].to(self.device), enc.get("attention_mask")

    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        import torch

        cfg = config or GenerationConfig()
        input_ids, attention = self.prompt_ids(messages)
        if attention is not None:
            attention = attention.to(self.device)
        gen: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens}
        if cfg.temperature > 0:
            gen.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            gen.update(do_sample=False)
        if cfg.stop:
            gen["stop_strings"] = list(cfg.stop)
            gen["tokenizer"] = self.tokenizer
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is not None:
            gen["pad_token_id"] = pad
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention, **gen)
        except (RuntimeError, ValueError) as err:
            raise ChatModelError(f"{self.name}: generation failed: {err}") from err
        text = str(self.tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True))
        for stop in cfg.stop:
            if stop in text:
                text = text[: text.index(stop)]
        return text
