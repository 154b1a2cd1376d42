"""Every `python -m bench` command the README and docs/ show works as written.

Commands are read from the fenced shell blocks of README.md and docs/*.md. The cheap ones
(those that read committed results: summary, readme, check, compare, runs, export, baseline
list, devices, --version) run for real in a copy of the repository's documents and
published results; the expensive ones (run, peak, ab, noise with --repeat) are parsed by
the real argument parser, so an option that does not exist, a bad value or a path to a
published run that is not there fails here rather than in a user's first hour.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:sh|bash|shell|console)?\s*$")
INLINE = re.compile(r"`(python -m bench[^`]*)`")
#: an inline command with one of these is a template (``--run DIR``), not one to run
PLACEHOLDER = re.compile(r"[<>\[\]|…]|\.\.\.|\b(DIR|NAME|PATH|FILE|N|S|A|B|RUN_A|RUN_B|BASELINE)\b")
#: commands that only read committed results (devices: test_cli)
CHEAP = {"summary", "readme", "check", "compare", "runs", "export", "baseline", "report", "history"}


def documented_commands() -> list[tuple[str, str]]:
    """(document name, command) for each `python -m bench ...` line in a fenced block."""
    found = []
    for document in DOCUMENTS:
        inside = False
        for line in document.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                inside = not inside if (FENCE.match(line) or inside) else inside
                continue
            command = line.split(" #")[0].strip()
            name = document.relative_to(REPO).as_posix()
            if inside and command.startswith("python -m bench"):
                found.append((name, command))
            elif not inside:
                found += [(name, c.strip()) for c in INLINE.findall(line) if not PLACEHOLDER.search(c)]
    return found


COMMANDS = documented_commands()


def test_the_documents_show_commands():
    assert any(doc == "README.md" for doc, _ in COMMANDS)
    assert any(command.startswith("python -m bench run") for _, command in COMMANDS)


def _argv(command: str) -> list[str]:
    return shlex.split(command)[3:]


def _is_cheap(argv: list[str], workspace: Path) -> bool:
    """Runs for real: reads only what the workspace holds (recipes for a CI run are parsed)."""
    if argv == ["--version"] or "--help" in argv or "-h" in argv:
        return True
    if not argv or argv[0] not in CHEAP or (argv[0] == "baseline" and argv[1:2] == ["save"]):
        return False
    inputs = [value for option, value in zip(argv, argv[1:]) if option in ("--run", "--baseline")]
    inputs += [a for a in argv[1:] if argv[0] == "compare" and not a.startswith("-")]
    return all((workspace / value).exists() or (workspace / "results" / "baselines" / value).exists()
               for value in inputs)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The documents and the committed results, in a throw-away copy."""
    root = tmp_path_factory.mktemp("docs")
    for document in DOCUMENTS:
        target = root / document.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(document, target)
    shutil.copytree(REPO / "results" / "published", root / "results" / "published")
    shutil.copytree(REPO / "docs" / "img", root / "docs" / "img", dirs_exist_ok=True)   # docs/report.md redraws one
    if (REPO / "results" / "baselines").is_dir():
        shutil.copytree(REPO / "results" / "baselines", root / "results" / "baselines")
    # "the latest run" of a user who has run once: the newest published run
    newest = max((p for p in (REPO / "results" / "published").iterdir() if (p / "runs.csv").exists()),
                 key=lambda p: p.name)
    shutil.copytree(newest, root / "results" / "runs" / newest.name)
    return root


@pytest.mark.parametrize("document, command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_documented_command_works_as_written(document, command, workspace):
    argv = _argv(command)
    if not _is_cheap(argv, workspace):
        try:
            cli.build_parser().parse_args(argv)
        except cli.UsageError as exc:
            pytest.fail(f"{document}: `{command}` does not parse: {exc}")
        return
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=workspace, text=True,
                          capture_output=True, timeout=240)
    assert done.returncode in (0, 1, 3), f"{document}: `{command}` -> {done.returncode}: {done.stderr[-500:]}"
    assert "Traceback" not in done.stderr
