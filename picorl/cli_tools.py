"""The run-folder commands of ``picorl``: ``report`` and ``export`` (``eval --run`` lives with eval)."""

from __future__ import annotations

import argparse
from pathlib import Path

REPORT_HELP = "Write runs/NAME/report.html: curves, eval table, rollout and eval browser (one file)."
EXPORT_HELP = "Export a run's policy as a plain Hugging Face model folder (adapter merged in fp32)."


def add_tool_parsers(sub) -> None:
    """Add ``report`` and ``export`` to the ``picorl`` sub-command parsers."""
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


def run_tool(args: argparse.Namespace) -> None:
    """Run ``picorl report`` or ``picorl export``; bad input raises ValueError/FileNotFoundError."""
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
