"""`distill` command line. Every domain error ends the job with exit code 2 and a one-line message."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from bundle import signing
from bundle.errors import BundleInvalid
from bundle.publish import PublishError
from distill.config import DEFAULT_GRID, GROUPS, RunConfig
from distill.errors import ConfigError, DistillError
from distill.options import cli_fields, load_config_file


def _bool(text: str) -> bool | None:
    """The boolean `text` spells (true/false, yes/no, on/off, 1/0), or None."""
    return {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}.get(text.lower())


class _Toggle(argparse.Action):
    """`--x` / `--no-x` for a boolean option. `--x true|false`, the only form before, still parses for one
    release, with a warning, so that scripts written for it keep working while they are updated."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        flag = option_strings[0]
        super().__init__([flag, "--no-" + flag[2:]], dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = self.option_strings[0][2:]
        if option_string is not None and option_string.startswith("--no-"):
            if values is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value; drop {values!r}")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        value = _bool(values)
        if value is None:
            raise argparse.ArgumentError(self, f"{values!r} is not a boolean; write --{flag} or --no-{flag}")
        print(f"distill: warning: `--{flag} {values}` is deprecated and goes in the next release; write "
              f"--{flag if value else 'no-' + flag}", file=sys.stderr)
        setattr(namespace, self.dest, value)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help; a boolean listed as `--x, --no-x`, not with the deprecated value it still takes."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, _Toggle):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


_Options = argparse.ArgumentParser | argparse._ArgumentGroup


CONFIG_HELP = ("Options come from, lowest precedence first: the defaults below, the TOML file of --config (keys are "
               "the option names, e.g. teacher_layers = 6, at the top level or in a [run] table; see "
               "docs/job.example.toml), and the flags typed on the command line.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill", description="Distil a large GNN teacher into a small ONNX student bundle."
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train teacher, scratch and distilled students; write a bundle",
                         formatter_class=_HelpFormatter, description=CONFIG_HELP)
    groups = _groups(run)
    groups["job"].add_argument("--out", required=True, type=Path, help="bundle directory to create")
    _job_flags(groups["job"], config_file=True)
    _config_options(groups)
    _select_parser(sub)
    ref = sub.add_parser("refresh", help="re-distil a bundle with its own config into a new version",
                         formatter_class=_HelpFormatter)
    ref.add_argument("--bundle", required=True, type=Path, help="the parent bundle")
    ref.add_argument("--out", required=True, type=Path, help="directory of the new bundle")
    ref.add_argument("--dataset", required=True,
                     help="dataset spec to train on (never taken from the parent: a bundle names no code or file "
                          "the job will read; pass the parent's `dataset.spec` to retrain on the same data)")
    ref.add_argument("--reuse-teacher", action="store_true", help="reuse the parent's teacher.pt instead of retraining")
    ref.add_argument("--max-drop", type=float, default=0.01,
                     help="refuse a bundle whose served validation metric is this much below the parent's, "
                          "both scored on the same validation nodes")
    ref.add_argument("--allow-worse", action="store_true", help="write the bundle even past --max-drop")
    ref.add_argument("--edge-log", type=Path, default=None,
                     help="the service's edge log (SERVE_EDGE_LOG) of --bundle: its new nodes and edges are added to "
                          "--dataset before training (times dropped; docs/bundle.md, \"The edge log\")")
    # No --config: a refresh trains with the parent's recorded config; only --dataset is new.
    _job_flags(ref, config_file=False)
    _score_parser(sub)
    return p


def _select_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sel = sub.add_parser("select", help="distil a grid of students and keep the most accurate within a latency budget",
                         formatter_class=_HelpFormatter, description=CONFIG_HELP)
    g = sel.add_argument_group("selection", "the student grid and the latency budget it must meet")
    g.add_argument("--latency-budget-ms", required=True, type=float, help="p99 budget of one scoring call")
    g.add_argument("--grid", default=",".join(DEFAULT_GRID),
                   help="comma-separated STUDENT:LAYERS:HIDDEN[:FANOUT] candidates (FANOUT: that candidate's "
                        "--fanout, in-neighbours kept per node at every hop)")
    g.add_argument("--int8", action="store_true", help="also try a dynamic-int8 copy of every candidate")
    g.add_argument("--calls", type=int, default=1000, help="timed in-process scoring calls per candidate")
    g.add_argument("--http-calls", type=int, default=0,
                   help="also time this many single-node HTTP requests against a real `python -m serve` per "
                        "candidate; the budget then applies to the HTTP p99 (0 = in-process only)")
    groups = _groups(sel)
    groups["job"].add_argument("--out", required=True, type=Path, help="bundle directory for the chosen student")
    _job_flags(groups["job"], config_file=True)
    _config_options(groups)


def _score_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sc = sub.add_parser("score", help="score many nodes of a bundle offline (exactly the service's scores)",
                        formatter_class=_HelpFormatter)
    sc.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    sc.add_argument("--out", required=True, type=Path, help="output file (columns node_id, label, prob_<class>)")
    sc.add_argument("--nodes", default="all",
                    help="'all', or a file of node ids (.npy 1-D integers, or text, one per line)")
    sc.add_argument("--format", dest="fmt", choices=("npy", "csv", "parquet"), default=None,
                    help="output format (default: from the --out suffix; parquet needs pyarrow)")
    sc.add_argument("--batch", type=int, default=0,
                    help="nodes per scoring step (0 = 4096 for the MLP student, 1024 for graph students)")
    sc.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")


def _groups(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One `--help` section per role of an option (distill.config.GROUPS), in that order."""
    return {name: p.add_argument_group(name, about) for name, about in GROUPS.items()}


def _job_flags(p: _Options, config_file: bool) -> None:
    if config_file:
        p.add_argument("--config", type=Path, default=None, metavar="PATH",
                       help="TOML file of options for the whole job (see the description above)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; on a shared machine, 1 avoids oversubscription)")


def _config_options(groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One flag per RunConfig field, in its group. The parser default is SUPPRESS, so only a flag the user
    typed lands in the namespace and can override the --config file; the real default is shown in the help."""
    for f in cli_fields():
        if isinstance(f.default, bool):
            shown = f.flag if f.default else "--no-" + f.flag[2:]
            groups[f.group].add_argument(f.flag, action=_Toggle, default=argparse.SUPPRESS,
                                         help=f"{f.help} (default: {shown})")
        else:
            shown = repr(f.default) if f.default == "" else str(f.default)
            groups[f.group].add_argument(f.flag, type=type(f.default), default=argparse.SUPPRESS,
                                         help=f"{f.help} (default: {shown})", choices=f.choices)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "score":  # torch-free: no torch threads to set, its own error handling
        return _score(args)
    if args.threads < 0:
        print(f"distill: error: --threads {args.threads} must be >= 0 (0 = torch's default)", file=sys.stderr)
        return 2
    try:
        signing.key_from_env(signing.JOB_KEY_ENV)  # a weak key fails now, not after the training
    except ValueError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.command == "run":
            return _run(args)
        if args.command == "select":
            return _select(args)
        if args.command == "refresh":
            return _refresh(args)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except BundleInvalid as exc:  # the contract refused what the job was about to write or read
        print(f"distill: error: bundle contract: {exc.message}", file=sys.stderr)
        return 2
    except PublishError as exc:  # an OSError while writing or swapping the bundle (disk full, EACCES, ...)
        print(f"distill: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 2


def run_config(args: argparse.Namespace) -> RunConfig:
    """The job's effective config: defaults < the --config file < the flags typed on the command line.
    Only typed flags are in `args` (their parser default is SUPPRESS), so an untouched flag never
    overrides the file; the manifest records the result (RunConfig.to_dict)."""
    from_file = load_config_file(args.config) if args.config else {}
    names = {f.name for f in cli_fields()}
    typed = {k: v for k, v in vars(args).items() if k in names}
    try:
        return RunConfig.from_dict({**from_file, **typed})
    except ConfigError as exc:
        # RunConfig names the flag (`--epochs 0 must be >= 1`); say so when the value came from the file.
        culprits = [k for k in from_file if k not in typed and re.search(rf"--{k.replace('_', '-')}(?![\w-])",
                                                                         str(exc))]
        if not culprits:
            raise
        raise ConfigError(f"{exc} (set as {culprits[0]} in --config {args.config})") from None


def _run(args: argparse.Namespace) -> int:
    from distill.temporal.data import LAYOUTS  # torch-free: the spec decides which job runs

    if getattr(args, "dataset", "").partition(":")[0] in LAYOUTS:
        return _run_temporal(args)
    cfg = run_config(args)
    from distill import pipeline, report  # torch/PyG import only once the arguments are valid

    rep = pipeline.run(cfg, args.out, force=args.force, progress=not args.quiet)
    print(report.markdown(rep))
    print(f"bundle written to {args.out} in {rep['seconds']:.1f}s")
    return 0


def _run_temporal(args: argparse.Namespace) -> int:
    """A temporal dataset (bitcoin-otc:PATH, temporal:PATH): the temporal job (distill/temporal/job.py),
    which takes --seed (the split and initialisation) and no other training option."""
    names = {f.name for f in cli_fields()}
    other = sorted(k for k in vars(args) if k in names and k not in ("dataset", "seed"))
    if other or args.config:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in other) or "--config"
        raise ConfigError(f"{flags} does not apply to the temporal dataset {args.dataset!r}: its job takes "
                          "--dataset, --seed, --out, --force, --threads and --quiet (distill/temporal/job.py)")
    from distill.temporal import job

    rep = job.run(args.dataset, args.out, force=args.force, seed=getattr(args, "seed", 0), progress=not args.quiet)
    print(job.markdown(rep))
    print(f"bundle written to {args.out} in {rep['seconds']:.1f}s")
    return 0


def _select(args: argparse.Namespace) -> int:
    cfg = run_config(args)
    if args.latency_budget_ms <= 0 or args.calls < 100 or args.http_calls < 0:
        raise DistillError(f"--latency-budget-ms {args.latency_budget_ms} must be > 0, --calls {args.calls} >= 100 "
                           f"and --http-calls {args.http_calls} >= 0")
    from distill import budget

    grid = [budget.Candidate.parse(c) for c in args.grid.split(",")]
    opts = budget.Options(args.latency_budget_ms, args.calls, args.int8, args.http_calls)
    summary = budget.run_select(cfg, grid, opts, args.out, args.force, not args.quiet)
    print(budget.select_table(summary))
    chosen = next(r for r in summary["candidates"] if r["chosen"])
    print(f"chosen {chosen['name']} (p99 {chosen['p99_ms']:.3f} ms); bundle written to {args.out}")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from distill import refresh, report

    req = refresh.Request(args.bundle, args.out, args.dataset, args.reuse_teacher, args.max_drop, args.allow_worse,
                          args.edge_log)
    done = refresh.refresh(req, args.force, not args.quiet)
    print(report.markdown(done.report))
    if done.folded is not None:
        f = done.folded
        print(f"folded {args.edge_log}: {f.records} writes (through sequence {f.last_seq}), {f.nodes_added} nodes and "
              f"{f.edges_added} new edges added ({f.edges_logged} logged)")
    print(f"refreshed bundle written to {args.out} (parent {done.parent.version})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from distill import score  # onnxruntime + the service's scoring code; no torch

    opts = score.Options(args.bundle, args.out, args.nodes, args.fmt, args.batch, args.threads, not args.quiet)
    try:
        done = score.score(opts)
    except DistillError as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"scored {len(done.labels)} nodes in {done.score_s:.4f}s ({done.nodes_per_s:,.0f} nodes/s; "
          f"bundle load {done.load_s:.2f}s, write {done.write_s:.2f}s) -> {args.out}")
    return 0
