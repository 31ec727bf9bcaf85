"""The one interface every chat model implements: teachers, judges and chat backends.

A *chat model* takes a list of messages (OpenAI-style dicts with ``role`` and ``content``)
and returns the assistant's reply as text. Backends (an OpenAI-compatible HTTP endpoint,
a local transformers folder, a GGUF file, a rule-based offline teacher, a tiny random model
for tests) implement :class:`ChatModel` and register themselves in
:data:`hicur_monai.registry.LLM_BACKENDS`; code that needs a model asks the registry by
name (see :func:`load_chat_model`) and never knows which model it is.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Message", "GenerationConfig", "ChatModel", "ChatModelError", "load_chat_model", "validate_messages"]

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

_ROLES = ("system", "user", "assistant")


class ChatModelError(RuntimeError):
    """A chat model could not produce a reply (transport failure, refusal, bad output)."""


@dataclass
class GenerationConfig:
    """Sampling settings shared by all backends.

    Attributes:
        max_new_tokens: upper bound on the reply length in tokens.
        temperature: 0 means greedy / deterministic decoding.
        top_p: nucleus sampling mass (ignored when ``temperature == 0``).
        seed: sampling seed where the backend supports one.
        stop: optional stop strings.
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Check a message list and return it as a list of plain dicts.

    Raises:
        ValueError: naming the index and the field that is wrong.
    """
    if not messages:
        raise ValueError("messages is empty: a chat request needs at least one user message")
    out: list[Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"messages[{i}] is a {type(msg).__name__}, expected a dict with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}]['role'] is {role!r}, expected one of {_ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] is {type(content).__name__}, expected str")
        out.append({"role": role, "content": content})
    return out


class ChatModel(abc.ABC):
    """A model that answers a conversation with one assistant message."""

    #: short identifier recorded in outputs (never used to change behaviour elsewhere)
    name: str = "chat-model"

    @abc.abstractmethod
    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        """Return the assistant reply to ``messages``.

        Raises:
            ChatModelError: when no reply could be produced.
        """

    def __call__(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        return self.chat(validate_messages(messages), config)


def load_chat_model(name: str, **kwargs: Any) -> ChatModel:
    """Build the chat backend registered as ``name`` in the LLM registry.

    Args:
        name: registry name (e.g. ``"openai"``, ``"transformers"``, ``"rule"``).
        kwargs: backend-specific arguments (paths, URLs, ...).
    """
    from hicur_monai.registry import create

    model = create("llm_backends", name, **kwargs)
    if not isinstance(model, ChatModel):
        raise TypeError(f"LLM backend {name!r} built a {type(model).__name__}, which is not a ChatModel")
    return model
