"""`swarm`: one entry point, a subcommand per service plus `host`, `ingest`, `demo`.

Each service package contributes its subcommands through `register(subparsers)` in its `cli` module. Heavy imports
(torch, hivemind) happen inside the command functions, so `swarm --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from swarm import __version__, lifeline
from swarm.errors import ConfigError, UsageError

# Modules whose `register(subparsers)` adds subcommands; order is the order shown in --help.
COMMAND_MODULES = (
    "swarm_coordinator.cli",
    "swarm_dataset.cli",
    "swarm_bootstrap_dht.cli",
    "swarm_trainer.cli",
    "swarm_launcher.host",
    "swarm_launcher.demo",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="swarm",
        description="Swarm Diffusion: fine-tune Stable Diffusion with a swarm of GPUs across the internet.",
        epilog="Run `swarm COMMAND --help` for the options of one command. Start with `swarm demo`.",
    )
    parser.add_argument("--version", action="version", version=f"swarm-diffusion {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    lifeline.install()  # before anything forks: children (hivemind's included) die with this process
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        code = args.func(args)
    except (ConfigError, UsageError) as e:
        print(f"swarm {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)
