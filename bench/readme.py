"""Regenerate the README's statistics table in place, between two marker comments.

Only the text between the markers changes; every byte outside them stays as it was, and
so does the file: its line endings (the generated block takes the file's first line
ending, so a CRLF file stays CRLF), a missing final newline, a UTF-8 byte-order mark,
its permission bits (and owner, where allowed), and where it lives (a symlinked README
has its target updated; the link stays a link). Running it twice changes nothing.

The file is replaced atomically: a temporary file beside it is written, flushed to disk
and renamed over it, so a reader (or a crash) sees the old file or the new one, never
half of one. What a rename cannot keep: other hard links to the old file keep the old
text, and extended attributes or ACLs are not copied.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path

from bench import files, store

DEFAULT_MARKER = "table"
MAX_README_BYTES = 64 * 2**20
#: any bench marker comment, however spaced: a generated block must never hold one
_ANY_MARKER = re.compile(r"<!--\s*bench:", re.IGNORECASE)


def markers(name: str = DEFAULT_MARKER) -> tuple[str, str]:
    """The comment pair around a generated block: ``<!-- bench:NAME:start -->`` ... ``end``."""
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


START, END = markers()


class ReadmeError(Exception):
    """The README cannot be updated: missing, unreadable, read-only, or its markers are wrong."""


def replace_table(text: str, table: str, name: str = "README", marker: str = DEFAULT_MARKER,
                  newline: str = "\n") -> str:
    """``text`` with everything between the ``marker`` pair replaced by ``table``.

    The block's lines end with ``newline``, whatever the table's own line endings are.
    """
    START, END = markers(marker)  # noqa: N806 - the same names as the module's defaults
    planted = _ANY_MARKER.search(table)
    if planted:
        line = table[:planted.start()].count("\n") + 1
        raise ReadmeError(f"{name}: the generated table holds a 'bench:' marker comment (line {line} of the "
                          "block, from a machine label, a path or a run's files); refusing to write it: "
                          "rename what holds '<!-- bench:'")
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
    lines = table.strip().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return newline.join([f"{before}{START}", *lines, f"{END}{after}"])


def line_ending(text: str) -> str:
    """The first line ending in ``text`` (``\\r\\n``, ``\\n`` or ``\\r``); ``\\n`` if none."""
    for index, char in enumerate(text):
        if char == "\n":
            return "\n"
        if char == "\r":
            return "\r\n" if text[index + 1:index + 2] == "\n" else "\r"
    return "\n"


def update_readme(readme: str | Path, table: str, marker: str = DEFAULT_MARKER) -> bool:
    """Write ``table`` between the README's markers. Returns whether the file changed."""
    shown = Path(readme)
    try:
        path = shown.resolve(strict=True)  # a symlink: update its target, keep the link
        raw = store.read_regular_file(path, MAX_README_BYTES, "a README (a regular text file)")
    except FileNotFoundError:
        raise ReadmeError(f"{shown}: no such file; pass --readme PATH") from None
    except store.ResultsError as exc:  # a FIFO, a device: refused unread instead of hanging
        raise ReadmeError(str(exc).replace(str(path), str(shown), 1)) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ReadmeError(f"{shown}: cannot be read ({_reason(exc)})") from None
    bom = codecs.BOM_UTF8 if raw.startswith(codecs.BOM_UTF8) else b""
    try:
        text = raw[len(bom):].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadmeError(f"{shown}: not UTF-8 text (byte 0x{raw[len(bom) + exc.start]:02x} at "
                          f"offset {len(bom) + exc.start}); save it as UTF-8") from None
    updated = replace_table(text, table, str(shown), marker, line_ending(text))
    if updated == text:
        return False
    try:
        _refuse_read_only(path, shown)
        files.write_atomically(path, bom + updated.encode("utf-8"))
    except OSError as exc:
        raise ReadmeError(f"{shown}: cannot be written ({_reason(exc)})") from None
    return True


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or " ".join(str(exc).split())


def _refuse_read_only(path: Path, shown: Path) -> None:
    """A file or directory with no write bit is read-only on purpose, even to root.

    (The rename needs only the directory to be writable, so a read-only README would
    otherwise be silently replaced.)
    """
    for what, target in (("file", path), ("directory", path.parent)):
        if not stat.S_IMODE(target.stat().st_mode) & 0o222 or not os.access(target, os.W_OK):
            raise ReadmeError(f"{shown}: the {what} {target} is read-only; make it writable "
                              "to update the table")
