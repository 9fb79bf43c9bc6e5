"""The run-folder commands of ``picorl``: ``report``, ``export`` and ``compare`` (``eval --run`` lives
with eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

REPORT_HELP = "Write runs/NAME/report.html: curves, eval table, rollout and eval browser (one file)."
EXPORT_HELP = "Export a run's policy as a plain Hugging Face model folder (adapter merged in fp32)."
COMPARE_HELP = (
    "Compare two eval points task by task (default: a run's SFT eval, else base, vs its last eval): "
    "accuracy per tier, tasks fixed and broken, exact McNemar p."
)


def add_tool_parsers(sub) -> None:
    """Add ``report``, ``export`` and ``compare`` to the ``picorl`` sub-command parsers."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("report", help=REPORT_HELP, description=REPORT_HELP, formatter_class=fmt)
    p.add_argument("run", help="the run folder, runs/NAME")
    p = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP, formatter_class=fmt)
    p.add_argument("run", help="the run folder, runs/NAME")
    p.add_argument("--merged", required=True, metavar="OUT", help="the new model folder to write")
    p.add_argument(
        "--dtype", choices=("bf16", "fp16", "fp32"), help="weights dtype (default: the run's; bf16 if auto)"
    )
    p.add_argument("--adapter", help="a saved adapter folder other than runs/NAME/adapter")
    p = sub.add_parser("compare", help=COMPARE_HELP, description=COMPARE_HELP, formatter_class=fmt)
    p.add_argument("run", help="the run folder runs/NAME, or its eval_samples.jsonl(.gz)")
    # Points stay strings here: a bad one is reported by compare.parse_point in one line, exit 2.
    p.add_argument(
        "--from",
        dest="from_point",
        metavar="POINT",
        help="the 'before' point: base, sft, last or a step (None: sft, else base)",
    )
    p.add_argument(
        "--to",
        dest="to_point",
        metavar="POINT",
        default="last",
        help="the 'after' point: base, sft, last or a step",
    )
    p.add_argument("--against", metavar="RUN_B", help="read --to from this run (evaluated on the same seeds)")


def run_tool(args: argparse.Namespace) -> None:
    """Run ``picorl report``, ``export`` or ``compare``; bad input raises ValueError/FileNotFoundError."""
    if args.command == "compare":  # before the folder check: compare also takes a samples file
        run_compare(args)
        return
    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass runs/NAME")
    if args.command == "report":
        from picorl.report import write_report

        print(f"wrote {write_report(run, replot=True)}")
    else:
        from picorl.export import export_merged

        out = export_merged(run, args.merged, dtype=args.dtype, adapter=args.adapter)
        print(f"wrote {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")


def run_compare(args: argparse.Namespace) -> None:
    """``picorl compare RUN_A [--from P] [--to P] [--against RUN_B]``: print the paired table."""
    from picorl.eval.compare import compare, format_table, parse_point, read_eval_samples, select

    rows_a = read_eval_samples(args.run)
    rows_b = read_eval_samples(args.against) if args.against else rows_a
    point_a = 0 if args.from_point is None else parse_point(args.from_point)  # 0: where RL started
    point_b = parse_point(args.to_point)
    label_a, label_b = select(rows_a, point_a)[0], select(rows_b, point_b)[0]
    if args.against:  # two runs: say which run each side comes from (a file's run is its folder)
        name_a, name_b = (
            p.name if p.is_dir() else p.parent.name for p in map(Path, (args.run, args.against))
        )
        label_a, label_b = f"{name_a} {label_a}", f"{name_b} {label_b}"
    # Built before anything is printed, so that bad input prints the error line alone.
    table = format_table(compare(rows_a, point_a, rows_b, point_b), label_a, label_b)
    print(f"{label_a} (A) -> {label_b} (B), paired by task seed\n{table}")
