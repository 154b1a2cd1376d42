"""Regenerate the README's statistics table in place, between two marker comments.

Only the text between the markers changes; everything else in the file stays byte for
byte. Running it twice changes nothing. The file is replaced atomically.
"""

from __future__ import annotations

from pathlib import Path

from bench.store import write_atomically

DEFAULT_MARKER = "table"


def markers(name: str = DEFAULT_MARKER) -> tuple[str, str]:
    """The comment pair around a generated block: ``<!-- bench:NAME:start -->`` ... ``end``."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


START, END = markers()


class ReadmeError(Exception):
    """The README cannot be updated: missing, unreadable, or its markers are wrong."""


def replace_table(text: str, table: str, name: str = "README", marker: str = DEFAULT_MARKER) -> str:
    """``text`` with everything between the ``marker`` pair replaced by ``table``."""
    START, END = markers(marker)  # noqa: N806 - the same names as the module's defaults
    starts, ends = text.count(START), text.count(END)
    if starts == 0 or ends == 0:
        raise ReadmeError(f"{name}: no '{START}' ... '{END}' markers; add both around the "
                          "statistics table, each on its own line")
    if starts > 1 or ends > 1:
        raise ReadmeError(f"{name}: the markers must appear exactly once each "
                          f"(found {starts} start, {ends} end)")
    before, rest = text.split(START)
    if END not in rest:
        raise ReadmeError(f"{name}: '{END}' comes before '{START}'; put the end marker after "
                          "the start marker")
    _, after = rest.split(END)
    return f"{before}{START}\n{table.strip()}\n{END}{after}"


def update_readme(readme: str | Path, table: str, marker: str = DEFAULT_MARKER) -> bool:
    """Write ``table`` between the README's markers. Returns whether the file changed."""
    path = Path(readme)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReadmeError(f"{path}: no such file; pass --readme PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReadmeError(f"{path}: cannot be read ({exc})") from None
    updated = replace_table(text, table, str(path), marker)
    if updated == text:
        return False
    try:
        write_atomically(path, updated)
    except OSError as exc:
        raise ReadmeError(f"{path}: cannot be written ({exc.strerror})") from None
    return True
