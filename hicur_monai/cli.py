"""The ``hicur`` command line.

Each subcommand lives next to the code it drives, in a module that exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` (called with the parsed
arguments, returning an exit code). Adding a command means adding its module to
:data:`COMMAND_MODULES`, nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: modules that contribute subcommands, in the order they appear in ``hicur --help``
COMMAND_MODULES: list[str] = [
    "hicur_monai.data.demo.cli",  # demo-data, demo
    "hicur_monai.bundle",  # bundle export
    "hicur_monai.data.curation.cli",  # curate, curate merge
    "hicur_monai.evaluation.cli",  # judge run/aggregate/demo, rate init/add-rater/serve/export
    "hicur_monai.data.instructions_cli",  # instructions build/validate
    "hicur_monai.survival.cli",  # report survival
    "hicur_monai.vlm.cli",  # ask
    "hicur_monai.segmentation.cli",  # segment demo
    "hicur_monai.label.cli",  # label-app
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    from hicur_monai import __version__

    parser = argparse.ArgumentParser(prog="hicur", description="HiCur-NPC toolkit on MONAI.")
    parser.add_argument("--version", action="version", version=f"hicur-monai {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # an optional extra is missing: the command says so when used
            name = module.rsplit(".", 2)[-2]
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
