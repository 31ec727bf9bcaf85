"""LLM plugins: chat models, teachers and text encoders behind one interface.

Importing this package registers the available backends in :mod:`hicur_monai.registry`.
"""

from __future__ import annotations

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message, load_chat_model

__all__ = ["ChatModel", "ChatModelError", "GenerationConfig", "Message", "load_chat_model"]
