"""The ``hicur`` command line.

Each subcommand lives next to the code it drives, in a module that exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` (called with the parsed
arguments, returning an exit code). Adding a command means adding its module and command
names to :data:`COMMAND_MODULES`, nothing else; ``hicur <command>`` imports only the module
that provides it, so start-up does not pay for every stage's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: modules that contribute subcommands -> the top-level commands each adds (in ``hicur --help`` order).
#: Naming the commands lets ``hicur <command>`` import only the module it needs.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "hicur_monai.data.demo.cli": ("demo-data", "demo"),
    "hicur_monai.bundle": ("bundle",),
    "hicur_monai.data.curation.cli": ("curate",),
    "hicur_monai.evaluation.cli": ("judge", "rate"),
    "hicur_monai.llm.teacher_cli": ("instructions",),
    "hicur_monai.survival.cli": ("report",),
    "hicur_monai.vlm.cli": ("ask", "vlm"),
    "hicur_monai.segmentation.cli": ("segment",),
    "hicur_monai.label.cli": ("label-app",),
    "hicur_monai.curriculum.cli": ("curriculum",),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser: every subcommand, or only the modules that provide ``command``."""
    from hicur_monai import __version__

    parser = argparse.ArgumentParser(prog="hicur", description="HiCur-NPC toolkit on MONAI.")
    parser.add_argument("--version", action="version", version=f"hicur-monai {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [m for m, cmds in COMMAND_MODULES.items() if command is None or command in cmds]
    for module in modules or COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # an optional extra is missing: the command says so when used
            for name in COMMAND_MODULES[module]:
                p = sub.add_parser(name, help=f"(unavailable: {err})")
                p.set_defaults(func=lambda _a, _e=err, _m=module: _unavailable(_m, _e))
            continue
        mod.add_parser(sub)
    return parser


def _unavailable(module: str, err: ImportError) -> int:
    print(f"hicur: this command needs an optional dependency that is not installed ({module}: {err}).\n"
          "Install the extras with: pip install 'hicur-monai[all]'", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hicur`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None and "--version" in argv:  # answer without importing every command module
        from hicur_monai import __version__

        print(f"hicur-monai {__version__}")
        return 0
    parser = build_parser(first)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
