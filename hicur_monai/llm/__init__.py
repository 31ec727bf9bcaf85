"""LLM plugins: chat models, teachers and text encoders behind one interface.

Importing this package registers the available backends in :mod:`hicur_monai.registry`:
chat backends ``openai`` (OpenAI-compatible HTTP), ``transformers`` (local folder; the
library is imported only when a model is built) and ``rule`` (offline, from parsed
reports), and the teachers ``rule``, ``openai`` and ``transformers``.
"""

from __future__ import annotations

from hicur_monai.llm import local, openai_http, rule, teacher  # noqa: F401  (registers backends)
from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message, load_chat_model
from hicur_monai.llm.local import TransformersChatModel
from hicur_monai.llm.openai_http import OpenAIChatModel
from hicur_monai.llm.rule import RuleChatModel
from hicur_monai.llm.teacher import ChatTeacher, TeacherResult, make_teacher

__all__ = [
    "ChatModel",
    "ChatModelError",
    "GenerationConfig",
    "Message",
    "load_chat_model",
    "OpenAIChatModel",
    "TransformersChatModel",
    "RuleChatModel",
    "ChatTeacher",
    "TeacherResult",
    "make_teacher",
]
