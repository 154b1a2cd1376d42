"""Escaping untrusted text where it lands: a Markdown table cell, a CSV cell, HTML, a terminal.

Labels, paths, reasons and anything read from another machine's files are untrusted: a
machine label ``<!-- bench:table:end -->`` would plant a marker in the README, a label
``=HYPERLINK(...)`` is a formula to a spreadsheet, and Unicode bidi controls make text
display in another order than it reads. One helper per destination: a table builder
calls the one for where its text goes, once, on the raw text, and never escapes by hand.
"""

from __future__ import annotations

import html
import re

#: Unicode's bidirectional controls (embeddings, overrides, isolates, marks)
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: C0 and C1 control characters, line breaks and tabs included, and the line/paragraph separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: what a spreadsheet reads as the start of a formula (OWASP's CSV injection list)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
REPLACEMENT = "\ufffd"


def plain_text(text: object) -> str:
    """One line of inert text for a terminal: line breaks and tabs become spaces, other
    control characters and bidi controls become U+FFFD (visible, not silently dropped)."""
    text = str(text)
    text = re.sub("[\t\n\r\u2028\u2029]+", " ", text)
    return _BIDI.sub(REPLACEMENT, _CONTROL.sub(REPLACEMENT, text))


def markdown_cell(text: object) -> str:
    """Text for a Markdown table cell (or a line of a generated block): one line, no HTML
    (so no ``<!--``/``-->`` comment and no marker), ``|`` escaped so it cannot split the cell."""
    return html_text(text).replace("|", "\\|")


def html_text(text: object) -> str:
    """Text for HTML (or Markdown, which passes HTML through): one line, ``& < > " '`` escaped."""
    return html.escape(plain_text(text), quote=True)


def csv_cell(text: object) -> object:
    """A text cell a spreadsheet shows as text: a leading ``= + - @`` (a formula) gets a ``'``
    in front, bidi controls become U+FFFD. Line breaks stay (CSV quotes them); non-text
    values pass through unchanged."""
    if not isinstance(text, str):
        return text
    text = _BIDI.sub(REPLACEMENT, text)
    return "'" + text if text.startswith(_FORMULA_START) else text
