"""Each pytest-xdist worker's own share of the CPUs, for the real trainings a numeric test starts
in a subprocess.

tox runs two workers on CI's 2 cores. Each training framework sizes its thread pools to every
CPU it may use, so two trainings side by side run 4 busy threads on 2 cores, and their
spin-waiting threads cost more than the second core gives: measured here, two native PyTorch
trainings of the engine accuracy test side by side took 92 s each, and 48 s each with one CPU
apiece. Pinning such a subprocess to its worker's share leaves the frameworks to size their
pools to it (they read the affinity mask).

Only for tests whose assertions are about numbers the network computes (agreement, learning),
never for a run of the harness itself: what the harness records about the CPUs it was given,
and its contention notes, are themselves under test elsewhere.
"""

from __future__ import annotations

import os
import sys


def worker_cpus() -> set[int] | None:
    """This worker's CPUs: its slice of the ones this process may use, or None outside xdist,
    with one worker, or with fewer CPUs than workers (shares would overlap)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")          # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    index, share = int(worker[2:]), len(cpus) // count
    if share < 1 or index >= count:
        return None
    return set(cpus[index * share:(index + 1) * share])


#: Sets the affinity, then becomes the command (argv[1:]); run by a fresh interpreter, so no
#: Python code runs between fork and exec in the (multithreaded) test process.
_PIN_THEN_EXEC = "import os, sys; os.sched_setaffinity(0, {cpus}); os.execv(sys.argv[1], sys.argv[1:])"


def on_worker_share(command: list[str]) -> list[str]:
    """``command`` pinned to ``worker_cpus()``, as a new argv (unchanged when there is nothing to
    pin). Not ``preexec_fn``: that runs Python between fork and exec, which can deadlock a test
    process whose JAX or TensorFlow threads hold a lock at the fork (and JAX warns of it)."""
    cpus = worker_cpus()
    if cpus is None:
        return list(command)
    return [sys.executable, "-c", _PIN_THEN_EXEC.format(cpus=sorted(cpus)), *command]
