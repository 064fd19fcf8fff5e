"""The ``linmaml`` command line: a thin layer that parses arguments and calls the library.

Each subcommand lives in its own module here with two functions, ``register(subparsers)`` that adds
its parser, and the ``run(args)`` that the parser points to. Errors in the user's input (bad values,
missing files, unwritable folders) become one line on stderr and exit status 2; ``--debug`` shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules, in the order ``linmaml --help`` lists them.
COMMANDS = ("verify", "derive", "surface", "reproduce", "explore", "data", "train", "evaluate", "analyze", "plot",
            "bench")

#: Exceptions that mean "the input was wrong", reported without a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (argparse's default prints the whole usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="linmaml", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in COMMANDS:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("linmaml: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
        print(f"linmaml {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(status or 0)
