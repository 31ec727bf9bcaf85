"""``hicur label-app DEST``: export the MONAI Label app with the segmentation bundle."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def _label_app(args: argparse.Namespace) -> int:
    from hicur_monai.label.export import export_label_app, parse_overrides

    out = export_label_app(args.dest, model=args.model, overrides=parse_overrides(args.set))
    print(f"MONAI Label app written to {out}. Start it in the `make label` environment:\n"
          f"  .venv-label/bin/monailabel start_server --app {out} --studies STUDIES --host 127.0.0.1 --port 8000 "
          "--conf zoo_source github --conf sam2 false\n"
          "Model upload, logs, training and deletions are off unless HICUR_LABEL_ADMIN_TOKEN is set in its "
          "environment (docs/security.md).")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label-app", help="export the MONAI Label app (segmentation bundle, self-contained)")
    p.add_argument("dest", help="new app folder")
    p.add_argument("--model", help="trained weights (models/model.pt of a npc_segmentation run)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="top-level config values for the exported inference/train configs "
                        "(e.g. preset=tiny img_size=64)")
    p.set_defaults(func=_label_app)
