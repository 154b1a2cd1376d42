"""One module per command, each with ``add_parser(subparsers)`` and ``run(args) -> int``: turn
the arguments into a request, call one function below, print, return an exit status.

:data:`ALL` is the order ``--help`` lists them in. Adding a command is one module here and
one name in :data:`ALL`.
"""

from bench.commands import (
                            ab,
                            baseline,
                            check,
                            compare,
                            devices,
                            export,
                            history,
                            noise,
                            peak,
                            readme,
                            report,
                            run,
                            runs,
                            summary,
)

ALL = (devices, run, ab, noise, baseline, check, compare, peak, summary, readme, runs, export, report, history)
