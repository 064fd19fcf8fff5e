"""The ``linmaml`` command line: a thin layer that parses arguments and calls the library.

Each subcommand lives in its own module here with two functions, ``register(subparsers)`` that adds
its parser, and the ``run(args)`` that the parser points to. Errors in the user's input (bad values,
missing files, unwritable folders) and every operating-system error (read-only file system, disk
full, file too large, ``/dev/full`` as standard output) become one line on stderr naming the path
and the reason, with exit status 2, and so does a missing optional dependency (the line names the
extra to install, e.g. ``linmaml[plots]``); ``--debug`` shows the traceback instead. A closed pipe on
standard output (``linmaml verify | head -1``) ends the command quietly with status 141
(128 + SIGPIPE, what a shell reports for a Unix tool stopped by the closed pipe).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import signal
import sys

from linmaml import __version__
from linmaml._extras import missing_extra

#: What ``linmaml --help`` says first: plain text (the module docstring above is reST, for the API pages).
DESCRIPTION = ("The linmaml command line: check the closed forms of MAML on linear networks, regenerate the figures, "
               "and meta-train and evaluate on few-shot benchmarks. 'linmaml COMMAND --help' lists a command's "
               "options.")

#: Subcommand modules, in the order ``linmaml --help`` lists them.
COMMANDS = ("verify", "derive", "surface", "reproduce", "explore", "data", "train", "evaluate", "analyze", "plot",
            "bench")

#: Exceptions that mean "the input was wrong" or "the system refused", reported without a traceback.
USER_ERRORS = (ValueError, TypeError, OSError)

#: Exit status after a closed pipe on standard output: 128 + SIGPIPE, as a shell reports for a tool
#: that the closed pipe stopped.
BROKEN_PIPE_STATUS = 128 + 13

#: ``OSError.filename`` of errors raised while writing standard output.
STDOUT = "<standard output>"


def package_version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (source checkout)."""
    from importlib import metadata  # lazy: importlib.metadata costs more to import than the rest of linmaml.cli

    try:
        return metadata.version("linmaml")
    except metadata.PackageNotFoundError:
        return __version__  # a source checkout, without installed metadata


#: A negative number in any spelling float() reads (``-1e3``, ``-.5``, ``-inf``): argparse's own pattern
#: knows only ``-5`` and ``-0.5``, and took ``--inner-lr -1e3`` for a missing value followed by a flag.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (argparse's default prints the whole usage), and negative
    numbers such as ``-1e3`` read as values (no option of ours looks like a number)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="linmaml", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"linmaml {package_version()}")
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


class _Stdout:
    """Standard output whose write errors name it (``filename == STDOUT``), so that the error line can
    say where the write failed and a broken pipe can be told from other ones (a socket's, say)."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as error:
            if error.filename is not None:
                raise
            raise type(error)(error.errno, error.strerror or str(error), STDOUT) from None

    def write(self, text):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null: the interpreter's final flush of what is still buffered
    would otherwise fail again and print "Exception ignored ... BrokenPipeError"."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def os_error_message(error: OSError) -> str:
    """One line: the path(s) and the system's reason, e.g. ``/x/y.png: Read-only file system``."""
    reason = error.strerror or str(error).splitlines()[0] or type(error).__name__
    if error.filename == STDOUT:
        return f"cannot write to standard output: {reason}"
    if error.filename is None:
        return reason
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {reason}"


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return os_error_message(error)  # "[Errno 28] …: '/x'" becomes "/x: …"
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return message


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    # Under `ulimit -f` the kernel kills a writer with SIGXFSZ; ignored, the write fails with EFBIG
    # instead, which is reported in one line with the previous files intact.
    with contextlib.suppress(ValueError, AttributeError, OSError):  # not the main thread / no such signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a full disk or closed pipe on stdout surfaces here, not at exit
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError):
            print("linmaml: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError as error:
        if error.filename != STDOUT or args.debug:
            return _report(args, error)
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    except ImportError as error:
        # an optional dependency that is not installed (matplotlib for figures, ...): name the extra
        missing = missing_extra(error)
        if missing is None:
            raise
        return _report(args, missing)
    except USER_ERRORS as error:
        if isinstance(error, OSError) and error.filename == STDOUT:
            _silence_stdout()
        return _report(args, error)
    finally:
        sys.stdout = stdout
    return int(status or 0)


def _report(args, error: BaseException) -> int:
    if args.debug:
        raise error
    # stderr may be closed or full (2>/dev/full): the exit status still says what happened
    with contextlib.suppress(OSError, ValueError):
        print(f"linmaml {args.command}: error: {_message(error)}", file=sys.stderr, flush=True)
    return 2
