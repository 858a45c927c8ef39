"""`distill` command line. Every domain error ends the job with exit code 2 and a one-line message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.config import RunConfig, cli_fields
from distill.errors import DistillError


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill", description="Distil a large GNN teacher into a small ONNX student bundle."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train teacher, scratch and distilled students; write a bundle",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    run.add_argument("--force", action="store_true", help="replace --out if it exists")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, default, help_text, choices in cli_fields():
        kind = _bool if isinstance(default, bool) else type(default)
        run.add_argument(flag, type=kind, default=default, help=help_text, choices=choices)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 2


def _run(args: argparse.Namespace) -> int:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "out", "force", "quiet")}
    cfg = RunConfig.from_dict(values)
    from distill import pipeline, report  # torch/PyG import only once the arguments are valid

    rep = pipeline.run(cfg, args.out, force=args.force, progress=not args.quiet)
    print(report.markdown(rep))
    print(f"bundle written to {args.out} in {rep['seconds']:.1f}s")
    return 0
