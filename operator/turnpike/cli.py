"""The `turnpike` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from turnpike.controller import settings as operator_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnpike", description="Turnpike operator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    operator_settings.add_arguments(run)
    args = parser.parse_args(argv)
    if args.command == "run":
        from turnpike.controller.operator import run as run_operator

        return asyncio.run(run_operator(operator_settings.from_arguments(args)))
    return 2


if __name__ == "__main__":
    sys.exit(main())
