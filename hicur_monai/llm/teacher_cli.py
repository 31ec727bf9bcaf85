"""``hicur instructions``, wired with the Q&A teacher of this package.

:mod:`hicur_monai.data.instructions_cli` defines the command and takes a teacher factory, so
that the data layer never imports the LLM layer; this module passes it
:func:`teacher_from_args` and is what :mod:`hicur_monai.cli` loads for ``instructions``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hicur_monai.data import instructions_cli

if TYPE_CHECKING:
    from hicur_monai.llm.teacher import ChatTeacher

__all__ = ["add_parser", "teacher_from_args"]


def teacher_from_args(args: argparse.Namespace) -> ChatTeacher:
    """The teacher named by ``--teacher`` (``rule``, ``openai``, ``local:PATH``) and its options.

    Raises:
        SystemExit: an unknown ``--teacher``.
    """
    from hicur_monai.llm.teacher import make_teacher

    kind = args.teacher
    kwargs: dict = {"max_attempts": args.max_attempts}
    if kind == "rule":
        kwargs["patterns"] = [str(p) for p in args.patterns] or None
    elif kind == "openai":
        kwargs.update(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                      requests_per_minute=args.rpm, timeout=args.timeout,
                      cache_dir=str(args.cache_dir or args.out / "teacher_cache"))
    elif kind.startswith("local:"):
        kwargs["device"] = args.device
    else:
        raise SystemExit(f"hicur instructions build: unknown --teacher {kind!r} (use rule, openai or local:PATH)")
    return make_teacher(kind, **kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``hicur instructions`` with the real teacher factory."""
    instructions_cli.add_parser(subparsers, teacher_factory=teacher_from_args)
