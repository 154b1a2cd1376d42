"""Deprecated home of the several-runs table: :mod:`bench.tables` builds it.

Kept only so ``bench/cli.py`` keeps working until its commands import :mod:`bench.tables`
directly; nothing else should import it.
"""

from __future__ import annotations

from bench.tables import Reference, as_json, combined, machine_names, markdown  # noqa: F401
from bench.tables import TableError as MultiRunError  # noqa: F401
