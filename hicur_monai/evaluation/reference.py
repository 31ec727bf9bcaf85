"""Reference ("upper bound") answers written by a strong chat model.

The original protocol let GPT-4 answer every question from the caption and used that
answer as the reference the judge and the physicians compare against. :func:`write_references`
does the same with any chat model of the LLM registry and writes a new items file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig
from hicur_monai.utils.io import atomic_write_text

from .judge import fill_prompt, load_prompt
from .records import Item

__all__ = ["reference_messages", "write_references"]


def reference_messages(item: Item, prompts_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The chat messages asking a model for the reference answer of ``item``."""
    user = fill_prompt(load_prompt("reference", prompts_dir), question=item.question,
                       context=item.context or "(none given)")
    return [{"role": "system", "content": load_prompt("system", prompts_dir)}, {"role": "user", "content": user}]


def write_references(model: ChatModel, items: Sequence[Item], out: str | os.PathLike, overwrite: bool = False,
                     retries: int = 2, generation: GenerationConfig | None = None,
                     prompts_dir: str | os.PathLike | None = None, progress: bool = True) -> list[Item]:
    """Fill in the reference answers of ``items`` with ``model`` and write them to ``out``.

    Items that already have a reference keep it unless ``overwrite``. The file is written
    atomically at the end; each item records the model in ``reference_by``.

    Raises:
        ChatModelError: naming the item when the model fails ``retries + 1`` times or
            replies with nothing (a reference is never left empty silently).
    """
    from tqdm.auto import tqdm

    config = generation or GenerationConfig(temperature=0.0, max_new_tokens=512)
    done: list[Item] = []
    for item in tqdm(items, desc="references", unit="item", disable=not progress):
        if item.reference.strip() and not overwrite:
            done.append(item)
            continue
        errors = []
        for _ in range(retries + 1):
            try:
                text = model(reference_messages(item, prompts_dir), config).strip()
            except ChatModelError as err:
                errors.append(str(err))
                continue
            if text:
                break
            errors.append("empty reply")
        else:
            raise ChatModelError(f"item {item.item_id!r}: no reference answer after {retries + 1} attempts "
                                 f"({errors[-1]})")
        by = getattr(model, "name", "model")
        done.append(replace(item, reference=text, extra={**item.extra, "reference_by": by}))
    atomic_write_text(Path(out), "".join(json.dumps(it.to_dict(), ensure_ascii=False) + "\n" for it in done))
    return done
