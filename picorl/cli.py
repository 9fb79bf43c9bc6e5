"""The ``picorl`` command: ``picorl train``, ``eval``, ``report``, ``export`` and ``compare``.

Every config field is a flag (see :mod:`picorl.config`); ``--config FILE`` loads a TOML file first
and flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from picorl import distributed
from picorl.cli_tools import add_tool_parsers, run_tool
from picorl.config import SECTIONS, build_config, field_index, load_toml
from picorl.train.interrupt import Interrupted


def _value_parser(annotation: Any):
    """argparse type and nargs for a field's annotation (``int | None``, ``list[int]``, ``bool``...)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = (
        args[0]
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else annotation
    )
    if typing.get_origin(base) is list:
        return {"type": typing.get_args(base)[0], "nargs": "+"}
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": base}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = {}
    for cls in SECTIONS.values():
        hints.update(typing.get_type_hints(cls))
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help = f.metadata.get("help", "")
            shown = default if default is not None else "auto" if "auto" in help else "off"
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=argparse.SUPPRESS,
                # argparse %-formats help strings ("5% warm-up" would crash --help)
                help=f"{help} (default: {shown})".replace("%", "%%"),
                **_value_parser(hints[f.name]),
            )


def config_reference() -> str:
    """The README's configuration reference, generated from the dataclasses (a test keeps them equal)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines += ["", f"**[{section}]**", "", "| flag | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            help = f.metadata.get("help", "").replace("|", "\\|")
            shown = default if default is not None else "auto" if "auto" in help else "off"
            lines.append(f"| `--{f.name.replace('_', '-')}` | `{shown}` | {help} |")
    return "\n".join(lines) + "\n"


def config_from_args(args: argparse.Namespace):
    """The run's Config: ``--config`` then flags; with ``--resume``, the saved run's config beneath both."""
    overrides = load_toml(args.config) if args.config else {}
    index = field_index()
    for name, value in vars(args).items():
        if name in index:
            overrides.setdefault(index[name][0], {})[name] = value
    config = build_config(overrides)  # every value checked, with or without --resume
    if getattr(args, "command", "train") == "train":
        # Under torchrun: join the process group now, so that rank 0 alone reads the run folder first
        # (a rank that resolved --resume before the group existed raced rank 0's writes).
        distributed.init(config.train.device)
    if config.run.resume and getattr(args, "command", "train") == "train":
        from picorl.train.resume import resume_overrides

        config = build_config(distributed.main_first(lambda: resume_overrides(overrides)))
    return config


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake costs two lines, not the 46-line usage of every flag."""

    def error(self, message: str) -> typing.NoReturn:
        flag = re.search(r"unrecognized arguments: (--[\w-]+)", message)
        if flag:
            flags = sorted(_all_flags(self))
            close = difflib.get_close_matches(flag.group(1), flags, n=1)
            message += f" (did you mean {close[0]}?)" if close else ""
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every option)\n")


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and its subcommands (an unknown flag is reported by the top
    parser, which does not know which subcommand it was meant for)."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        for sub in (action.choices or {}).values() if isinstance(action.choices, dict) else ():
            flags |= _all_flags(sub)
    return flags


NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$", re.IGNORECASE)


def join_negative_numbers(argv: list[str]) -> list[str]:
    """``--lr -1e-4`` -> ``--lr=-1e-4``: argparse reads a value that starts with '-' as a flag unless it
    is a plain negative number, so a negative float in scientific notation would be 'expected one
    argument'. The joined form reaches the config's own check (``lr must be > 0``)."""
    out: list[str] = []
    for arg in argv:
        if out and NUMBER.match(arg) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="picorl", description="RL from verifiable rewards (GRPO and relatives, LoRA) on one GPU."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help in (
        ("train", "RL training (GRPO and relatives) with optional SFT warm-up; writes runs/NAME/."),
        ("eval", "Greedy evaluation of a base model or a saved adapter on the fixed eval sets."),
    ):
        p = sub.add_parser(
            name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.add_argument("--config", help="TOML file with [section] tables of the options below")
        if name == "eval":
            p.add_argument(
                "--adapter", help="a saved adapter folder (runs/NAME/adapter) to evaluate on its base model"
            )
            p.add_argument(
                "--run",
                help="re-evaluate this run (runs/NAME): its adapter (or --adapter), base model and eval sets "
                "from its config.toml; writes rerun_eval*.jsonl there",
            )
        add_config_flags(p)
    add_tool_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(join_negative_numbers(list(argv)))
    # Library deprecation chatter (PEFT calling transformers' renamed helpers) is not for users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown the run's own progress lines
    try:
        if args.command in ("report", "export", "compare"):
            run_tool(args)
            return 0
        if args.command == "eval" and args.run:
            if not (Path(args.run) / "config.toml").is_file():
                raise FileNotFoundError(
                    f"{args.run} is not a picorl run folder (no config.toml); pass runs/NAME"
                )
            args.config = args.config or str(Path(args.run) / "config.toml")
        config = config_from_args(args)
        if args.command == "train":
            from picorl.train.trainer import train

            train(config)
            distributed.shutdown()
        elif args.run:
            from picorl.train.rerun_eval import rerun_eval

            rerun_eval(args.run, config, adapter=args.adapter)
        else:
            from picorl.eval.run import run_eval

            run_eval(config, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as e:
        print(f"picorl: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk or permission problem outside the checkpoint writes, which say more
        print(f"picorl: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # Ctrl-C during training: the message says what was saved
        print(f"picorl: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside training (which says what it saved): loading, eval
        print("picorl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
