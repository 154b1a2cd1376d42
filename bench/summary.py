"""Deprecated home of one run's table: :mod:`bench.tables` builds it (one run is the N = 1 case).

Kept only so ``bench/cli.py`` keeps working until its commands call :mod:`bench.tables`
(``tables.markdown([run])``, ``tables.as_json([run])``); nothing else should import it.
"""

from __future__ import annotations

import pandas as pd

from bench import tables
from bench.tables import format_duration, numeric  # noqa: F401 - the names cli and export use


def summary_markdown(runs: pd.DataFrame, env: dict, command: str | None = None) -> str:
    """One run's table from rows in memory: ``tables.markdown([tables.in_memory(runs, env)])``."""
    return tables.markdown([tables.in_memory(runs, env)], commands=[command])


def summary_json(runs: pd.DataFrame, env: dict) -> dict:
    return tables.as_json([tables.in_memory(runs, env)])
