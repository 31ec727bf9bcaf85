"""Conversations -> token ids and training labels with the model's own chat template.

Used by the vision-language model for training and generation. A conversation is a list
of ``{"role", "content"}`` messages (LLaVA records with ``from: human/gpt`` are converted
by :func:`from_llava`). The text is rendered with ``tokenizer.apply_chat_template`` and
cut at the turn boundaries the template itself produces: the assistant's answers (and the
end-of-turn marker the template puts after them, so the model learns to stop) are the only
labelled tokens; system prompts, questions and template markup get ``IGNORE_INDEX``. An
image placeholder (``<image>``) in a message becomes one :data:`IMAGE_TOKEN_INDEX` id, which
the VLM replaces by the projected image tokens.

Example:
    >>> from hicur_monai.llm.causal_lm import train_bpe_tokenizer
    >>> tok = train_bpe_tokenizer(vocab_size=300)
    >>> ids, labels = tokenize_conversation(tok, [{"role": "user", "content": "<image>\\nwhat is seen"},
    ...                                          {"role": "assistant", "content": "a mass"}])
    >>> IMAGE_TOKEN_INDEX in ids
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "IMAGE_PLACEHOLDER",
    "from_llava",
    "render_segments",
    "tokenize_conversation",
]

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``)."""
IMAGE_TOKEN_INDEX = -200
"""Stand-in id where the image tokens go (never a real vocabulary id)."""
IMAGE_PLACEHOLDER = "<image>"

_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def from_llava(conversations: Sequence[Mapping[str, Any]], where: str = "conversations") -> list[dict[str, str]]:
    """LLaVA turns (``{"from": "human"|"gpt"|"system", "value": ...}``) -> chat messages.

    Raises:
        ValueError: naming ``where`` and the turn index when a turn is malformed.
    """
    out = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise ValueError(f"{where}[{i}]: expected an object with 'from' and 'value', got {type(turn).__name__}")
        role = _LLAVA_ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        value = turn.get("value", turn.get("content"))
        if role is None:
            raise ValueError(f"{where}[{i}]['from'] is {turn.get('from')!r}; expected human, gpt or system")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}[{i}]['value'] must be a non-empty string")
        out.append({"role": role, "content": value})
    return out


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def render_segments(tokenizer: Any, messages: Sequence[Mapping[str, str]],
                    add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, is_answer)`` pieces at the template's turn boundaries.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: the conversation.
        add_generation_prompt: end with the template's assistant prefix (for generation).

    Raises:
        ValueError: the template does not render a conversation as the prefix of its continuation
            (then answers cannot be located reliably).
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("the chat template does not render turn by turn as a prefix of the whole conversation "
                             f"(at message {i}); cannot mask labels to the answers")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    whole = _render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    if not whole.startswith(done):
        raise ValueError("the chat template renders the whole conversation differently from its turns")
    if whole[len(done):]:
        segments.append((whole[len(done):], False))
    return [(t, a) for t, a in segments if t]


def tokenize_conversation(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
                          max_length: int | None = None, image_placeholder: str = IMAGE_PLACEHOLDER,
                          image_length: int = 1) -> tuple[list[int], list[int]]:
    """Token ids (with :data:`IMAGE_TOKEN_INDEX` where the image goes) and labels of a conversation.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: ``{"role", "content"}`` dicts; ``image_placeholder`` in a content marks the image.
        add_generation_prompt: append the assistant prefix (generation) instead of expecting answers.
        max_length: truncate so that the sequence, with each image counted as ``image_length``
            tokens, fits (never cutting an image).
        image_placeholder: the placeholder text.
        image_length: number of tokens one image becomes (for ``max_length``).

    Returns:
        ``(input_ids, labels)``: equal-length lists; labels are the ids of answer tokens and
        :data:`IGNORE_INDEX` elsewhere.
    """
    ids: list[int] = []
    labels: list[int] = []
    for text, is_answer in render_segments(tokenizer, messages, add_generation_prompt):
        pieces = text.split(image_placeholder)
        for k, piece in enumerate(pieces):
            if k > 0:
                if is_answer:
                    raise ValueError(f"an assistant answer contains the image placeholder {image_placeholder!r}")
                ids.append(IMAGE_TOKEN_INDEX)
                labels.append(IGNORE_INDEX)
            if piece:
                tok = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += tok
                labels += tok if is_answer else [IGNORE_INDEX] * len(tok)
    if max_length is not None:
        budget, cut = int(max_length), len(ids)
        for j, t in enumerate(ids):
            budget -= image_length if t == IMAGE_TOKEN_INDEX else 1
            if budget < 0:
                cut = j
                break
        if IMAGE_TOKEN_INDEX in ids[cut:]:
            raise ValueError(f"max_length {max_length} is too short to hold the image ({image_length} tokens) "
                             "and the text before it")
        ids, labels = ids[:cut], labels[:cut]
    return ids, labels
