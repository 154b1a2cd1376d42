"""Starting a worker in another Python environment so that it runs that environment's code.

``python -m bench.worker`` puts the current directory first on ``sys.path``: started from a
checkout, every interpreter imports the checkout's ``bench``, and an A/B comparison of two
environments (``bench ab --python A --python B``) runs the same code in both arms. So does a
``PYTHONPATH`` that names the checkout. :func:`worker_command` starts the worker with
neither: ``-E`` ignores the ``PYTHON*`` variables, and the ``-c`` bootstrap drops the
current directory (``-c`` puts it first as ``''``) before running ``bench.worker`` as
``__main__``; ``-u`` stands for the ``PYTHONUNBUFFERED`` that ``-E`` ignores (progress is
streamed line by line). Unlike ``-P`` (Python 3.11+) this works with any Python 3 an arm may have,
and unlike ``-I`` it keeps the arm's user site-packages.
"""

from __future__ import annotations

import os
import sys

#: Run ``bench.worker`` as ``python -m`` would, without the current directory on sys.path.
BOOTSTRAP = ("import runpy, sys\n"
             "if sys.path and sys.path[0] in ('', '.'):\n"
             "    del sys.path[0]\n"
             "runpy.run_module('bench.worker', run_name='__main__', alter_sys=True)\n")


def worker_command(python: str | os.PathLike | None = None) -> list[str]:
    """The command that starts ``bench.worker`` with ``python``'s own installed ``bench``
    (default: this interpreter), whatever the current directory and ``PYTHONPATH``."""
    return [str(python or sys.executable), "-E", "-u", "-c", BOOTSTRAP]
