"""``python -m bench``: build the parser from the command list, dispatch, map failures to exit statuses.

Each command lives in :mod:`bench.commands`; what a run does lives in :mod:`bench.session`.
Everything but the small :mod:`bench.errors` is imported inside :func:`main`'s handlers, so a
Ctrl-C while the harness is still importing is the same quiet exit 130 as one later on, never a traceback.
"""

from __future__ import annotations

import signal
import sys

from bench.errors import Stopped, UsageError, WriteError

EXIT_USAGE, EXIT_WRITE = 2, 5


def build_parser():
    """The whole command line: one subparser per :data:`bench.commands.ALL` entry, in ``--help`` order."""
    from bench import __version__, commands
    from bench.options import EXIT_STATUSES, Parser

    parser = Parser(prog="python -m bench", description=(
        "Benchmark training the seed CIFAR-10 network (Keras 3 on TensorFlow, JAX or PyTorch) on "
        "every CPU and GPU of this machine, at several batch sizes, and catch slowdowns."),
        epilog=f"Exit statuses: {EXIT_STATUSES}.")
    parser.add_argument("--version", action="version", version=f"cifar-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for command in commands.ALL:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(argv)
        return args.command.run(args)
    except UsageError as exc:
        _error(f"bench: error: {exc}")
        return EXIT_USAGE
    except WriteError as exc:
        _error(f"bench: error: {exc}")
        return EXIT_WRITE
    except KeyboardInterrupt:
        return _interrupted()
    except Stopped as stop:  # stopped before any cell ran (a run that stops later says more)
        _error(f"bench: stopped by {signal.Signals(stop.signum).name}")
        return 128 + stop.signum
    except BrokenPipeError:
        # the reader went away (`bench summary | head`): stop quietly, as `cat` does
        from bench.options import silence_stdout

        silence_stdout()
        return 128 + signal.SIGPIPE


def _interrupted() -> int:
    _error("bench: interrupted")
    return 128 + signal.SIGINT


def _error(text: str) -> None:
    """One line on stderr; what its encoding cannot hold (an undecodable file name, an ASCII
    locale) is shown escaped."""
    encoding = getattr(sys.stderr, "encoding", None) or "ascii"
    try:
        print(text.encode(encoding, "backslashreplace").decode(encoding), file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, LookupError):
        pass
