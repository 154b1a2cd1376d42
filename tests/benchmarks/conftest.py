"""The pytest-benchmark suite: not part of the default test run (``tox -e benchmark``).

What else ran matters to every number here, and pytest-benchmark's ``--benchmark-compare-fail``
cannot know it: the session's contention is measured from start to end, saved with the
results (``machine_info["contention"]``) and, when other processes took
:data:`BUSY_PCT` % of the CPUs or more, said loudly under the results.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.contention import ContentionSampler  # noqa: E402

#: Other processes' CPU + steal, % of the usable CPUs, from which a comparison is not trusted.
BUSY_PCT = 10.0
_sampler: ContentionSampler | None = None


def pytest_sessionstart(session):
    global _sampler
    _sampler = ContentionSampler(os.getpid()).start()


def _contention():
    """Stop measuring: the contention from the session's start until now (called once the
    benchmarks have run, when their results are saved or summarised)."""
    return _sampler.stop() if _sampler is not None else None


def pytest_benchmark_update_machine_info(config, machine_info):
    contention = _contention()
    if contention is not None:
        machine_info["contention"] = contention.to_dict()
        config._bench_contention = contention


def pytest_terminal_summary(terminalreporter, config):
    contention = getattr(config, "_bench_contention", None) or _contention()
    if contention is None or contention.other_cpu_pct is None:
        return
    busy = contention.other_cpu_pct + (contention.steal_pct or 0.0)
    if busy >= BUSY_PCT:
        terminalreporter.write_line(
            f"WARNING: machine busy while benchmarking ({contention.describe()}): a slowdown that "
            "--benchmark-compare-fail reports may be the machine, not the code; run again on a quiet "
            "machine before trusting it", yellow=True, bold=True)
