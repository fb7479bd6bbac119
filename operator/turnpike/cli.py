"""The `turnpike` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from turnpike.controller import settings as operator_settings
from turnpike.gateway import command as gateway_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnpike", description="Turnpike operator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    operator_settings.add_arguments(run)
    gateway = commands.add_parser("gateway", help="run the request gateway in front of Triton")
    gateway_command.add_arguments(gateway)
    args = parser.parse_args(argv)
    if args.command == "gateway":
        return gateway_command.run(args)
    if args.command == "run":
        from turnpike.controller.operator import run as run_operator

        return asyncio.run(run_operator(operator_settings.from_arguments(args)))
    return 2


if __name__ == "__main__":
    sys.exit(main())
