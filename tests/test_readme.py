"""bench.readme: the table between the markers, and nothing else, changes."""

from __future__ import annotations

import pytest

from bench import readme

TEXT = f"# Title\n\nintro\n\n{readme.START}\nold table\n{readme.END}\n\nafter, untouched\n"


def test_replaces_only_between_the_markers_and_is_idempotent(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(TEXT)
    assert readme.update_readme(path, "| new | table |") is True
    updated = path.read_text()
    assert updated == TEXT.replace("old table", "| new | table |")
    assert readme.update_readme(path, "| new | table |") is False
    assert path.read_text() == updated


@pytest.mark.parametrize("text, message", [
    ("# no markers here\n", "no '<!-- bench:table:start -->'"),
    (f"{readme.START}\n{readme.START}\n{readme.END}\n", "exactly once"),
    (f"{readme.END}\nx\n{readme.START}\n", "comes before"),
])
def test_bad_markers_are_refused_and_the_file_is_untouched(tmp_path, text, message):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(readme.ReadmeError, match=message):
        readme.update_readme(path, "table")
    assert path.read_text() == text


def test_missing_readme(tmp_path):
    with pytest.raises(readme.ReadmeError, match="no such file"):
        readme.update_readme(tmp_path / "nope.md", "table")


def test_named_markers_leave_other_blocks_alone(tmp_path):
    start, end = readme.markers("levers")
    path = tmp_path / "README.md"
    path.write_text(TEXT + f"{start}\nold levers\n{end}\n")
    assert readme.update_readme(path, "levers table", marker="levers")
    assert "old table" in path.read_text() and "levers table" in path.read_text()
    with pytest.raises(readme.ReadmeError, match="bench:other:start"):
        readme.update_readme(path, "x", marker="other")
