"""bench.readme: the table between the markers, and nothing else, changes."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

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


# ---------------------------------------------------------------- the file stays as it was

START_B, END_B = readme.START.encode(), readme.END.encode()


def outside_the_markers(raw: bytes) -> tuple[bytes, bytes]:
    """The bytes up to and including the start marker, and from the end marker on."""
    return raw[:raw.index(START_B) + len(START_B)], raw[raw.index(END_B):]


def block(raw: bytes) -> bytes:
    return raw[raw.index(START_B) + len(START_B):raw.index(END_B)]


def update_and_check(path, table="| a | b |\n|---|---|\n| 1 | 2 |\n") -> bytes:
    """Update, assert only the block changed and no temporary file is left; return the bytes."""
    before = path.read_bytes()
    listing = sorted(p.name for p in path.parent.iterdir())
    assert readme.update_readme(path, table) is True
    after = path.read_bytes()
    assert outside_the_markers(after) == outside_the_markers(before)
    assert sorted(p.name for p in path.parent.iterdir()) == listing
    assert readme.update_readme(path, table) is False and path.read_bytes() == after
    return after


ODD_BYTES = "tab\there, trailing spaces   , ünïcödé ✓, a lone \r carriage return, \x0c feed"


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
@pytest.mark.parametrize("table_newline", ["\r\n", "\n"])
def test_line_endings_are_the_files_own(tmp_path, newline, table_newline):
    path = tmp_path / "README.md"
    lines = ["# Title", ODD_BYTES, readme.START, "old", readme.END, "after"]
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    after = update_and_check(path, table_newline.join(["| a |", "|---|", "| 1 |"]) + table_newline)
    expected_block = newline.join(["", "| a |", "|---|", "| 1 |", ""]).encode()
    assert block(after) == expected_block


def test_a_file_without_a_final_newline_stays_without(tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(f"# T\r\n{readme.START}\r\nold\r\n{readme.END}".encode())
    after = update_and_check(path)
    assert after.endswith(END_B) and b"\r\n| 1 | 2 |\r\n" in after


def test_a_utf8_byte_order_mark_stays(tmp_path):
    path = tmp_path / "README.md"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    assert update_and_check(path).startswith(b"\xef\xbb\xbf# Title")


def test_a_readme_that_is_not_utf8_is_refused_untouched(tmp_path):
    path = tmp_path / "README.md"
    original = TEXT.encode().replace(b"intro", b"intro \xff\xfe latin-1 \xe9")
    path.write_bytes(original)
    with pytest.raises(readme.ReadmeError) as caught:
        readme.update_readme(path, "table")
    assert "not UTF-8" in str(caught.value) and "0xff" in str(caught.value)
    assert "\n" not in str(caught.value) and path.read_bytes() == original


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o755], ids=oct)
def test_permissions_are_kept(tmp_path, mode):
    path = tmp_path / "README.md"
    path.write_text(TEXT)
    path.chmod(mode)
    update_and_check(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_symlinked_readme_updates_its_target_and_stays_a_link(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    target = docs / "README.md"
    target.write_text(TEXT)
    target.chmod(0o640)
    link = tmp_path / "README.md"
    link.symlink_to(Path("docs") / "README.md")
    before = sorted(p.name for p in docs.iterdir())
    update_and_check(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("docs", "README.md")
    assert "| 1 | 2 |" in target.read_text() and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in docs.iterdir()) == before


def test_a_dangling_symlink_is_a_missing_file(tmp_path):
    (tmp_path / "README.md").symlink_to(tmp_path / "gone.md")
    with pytest.raises(readme.ReadmeError, match="no such file"):
        readme.update_readme(tmp_path / "README.md", "table")


@pytest.fixture
def read_only(tmp_path):
    """Make paths read-only for a test, and writable again afterwards (for the cleanup)."""
    made = []

    def make(path, mode):
        made.append((path, path.stat().st_mode))
        path.chmod(mode)

    yield make
    for path, mode in reversed(made):
        path.chmod(mode)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_read_only_file_or_directory_is_refused_untouched(tmp_path, read_only, what):
    folder = tmp_path / "docs"
    folder.mkdir()
    path = folder / "README.md"
    path.write_text(TEXT)
    read_only(path if what == "file" else folder, 0o444 if what == "file" else 0o555)
    with pytest.raises(readme.ReadmeError, match=f"the {what} .* is read-only") as caught:
        readme.update_readme(path, "table")
    assert "\n" not in str(caught.value)
    assert path.read_text() == TEXT and [p.name for p in folder.iterdir()] == ["README.md"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path, monkeypatch, failing):
    path = tmp_path / "README.md"
    path.write_text(TEXT)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(readme.ReadmeError, match="cannot be written \\(No space left on device\\)"):
        readme.update_readme(path, "table")
    assert path.read_text() == TEXT and [p.name for p in tmp_path.iterdir()] == ["README.md"]


# ---------------------------------------------------------------- the published blocks

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_DOCS = ("README.md", "docs/method.md", "docs/scaling.md")


def generated_blocks():
    """(document, marker, run directories) of every generated block in the docs, the runs read
    from the block's own "Produced by" lines (each names its run with --out)."""
    import re

    for document in PUBLISHED_DOCS:
        text = (REPO / document).read_text(encoding="utf-8")
        for marker, body in re.findall(r"<!-- bench:([a-z0-9-]+):start -->(.*?)<!-- bench:\1:end -->", text, re.S):
            runs = re.findall(r"^Produced by `[^`]*--out (\S+?)`", body, re.M)
            named = re.findall(r"^Speed-up divides by `--reference (.+)`\.$", body, re.M)
            reference = [arg for r in named for arg in ["--reference", *shlex.split(r)]]
            reference += [arg for t in re.findall(r"^Time to target scored from the curves at "
                                                  r"`--target-accuracy ([0-9.]+)`\.$", body, re.M)
                          for arg in ("--target-accuracy", t)]
            yield pytest.param(document, marker, runs, reference, id=f"{document}:{marker}")


@pytest.mark.parametrize("document, marker, runs, reference", list(generated_blocks()))
def test_every_published_block_regenerates_byte_for_byte(tmp_path, monkeypatch, document, marker, runs, reference):
    from bench import cli

    assert runs, f"{document}:{marker}: no 'Produced by ... --out RUN' line names its runs"
    copy = tmp_path / "doc.md"
    original = (REPO / document).read_bytes()
    copy.write_bytes(original)
    monkeypatch.chdir(REPO)                 # "Produced by" names each run relative to the project
    argv = ["readme", "--readme", str(copy), "--marker", marker, *reference]
    for run in runs:
        argv += ["--run", run]
    assert cli.main(argv) == 0
    assert copy.read_bytes() == original, f"{document}:{marker} no longer regenerates from {runs}"


@pytest.mark.parametrize("checkout", ["main", "check/work/main", "."])
def test_a_produced_by_line_does_not_depend_on_where_readme_runs(tmp_path, monkeypatch, checkout):
    """CI regenerates the published blocks in a checkout somewhere else than where they were
    made: the recorded command is shown as recorded (only --out follows the run), whatever the
    working directory, so an absolute --data-dir is not re-relativized into ../shared here and
    left absolute there."""
    import pandas as pd

    from bench import store
    from bench.commands.readme import readme_command

    data = tmp_path / "shared" / "datasets" / "cifar-10-batches-py"
    recorded = f"python -m bench run --devices cpu --data-dir {data} --no-download --out /elsewhere/precision"
    run_ = store.Run(Path("results/published/precision"), pd.DataFrame(), pd.DataFrame(), {"command": recorded})
    (tmp_path / checkout).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / checkout)
    assert readme_command(run_) == (f"python -m bench run --devices cpu --data-dir {data} --no-download "
                                    "--out results/published/precision")
