"""bench report: one self-contained HTML page, checked as data and in a real (offline) browser.

The browser tests drive the system's Chromium through Playwright (no browser is downloaded).
Without either they skip, saying why, except under CI (``CI`` set), where they fail.
Set ``BENCH_REPORT_SCREENS=DIR`` to keep a copy of each screenshot there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import cli, history, report, store

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from runs import ENV, write_run

from bench.devices import Device, Requested

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "results" / "published"
HOSTILE = "<script>alert(1)</script>\"'</script><img src=x onerror=alert(2)>"
TEST_GPU = Requested("gpu:0", Device("gpu:0", "GPU", "Test GPU", 1, 1, 2**34))


def steps(median: float, n: int = 40, seed: int = 0) -> np.ndarray:
    return median * (1 + 0.02 * np.random.default_rng(seed).standard_normal(n))


def cpu_and_gpu_run(directory: Path, env: dict = ENV) -> store.Run:
    """A run with a CPU and a GPU cell at batch 128 (the GPU 10x faster) and a CPU one at 64."""
    write_run(directory, {128: steps(0.5), 64: steps(0.26, seed=1),
                          (128, (("device", TEST_GPU),)): steps(0.05, seed=2)}, env=env)
    return store.read_run(directory)


# --------------------------------------------------------------------------- the page as data

def test_json_in_a_script_element_cannot_end_it():
    value = {"label": "</script><!-- & -->", "other": "\u2028"}
    text = report._json_for_script(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == value


def test_the_headline_divides_the_slowest_cpu_row_by_each_row_and_says_so(tmp_path):
    cells = report.report_cells([cpu_and_gpu_run(tmp_path / "run")])
    found = report.headline_bars(cells)
    assert [b["device_type"] for b in found.bars] == ["CPU", "GPU"]      # batch 128 only, slowest first
    cpu, gpu = found.bars
    assert cpu["ratio"] == 1 and gpu["ratio"] == pytest.approx(10, rel=0.05)
    assert found.reference.device_type == "CPU"
    assert "divides the reference row's time by the bar's" in found.caption
    assert found.reference.label in found.caption


def test_a_failed_cell_keeps_its_reason_and_a_run_from_before_engines_reads_as_keras(tmp_path):
    directory = tmp_path / "run"
    write_run(directory, {128: steps(0.5)})
    writer = store.RunWriter(directory, "run", store.read_run(directory).runs.to_dict("records"),
                             store.read_run(directory).steps.to_dict("records"))
    writer.add({**writer.rows[0], "cell_id": "cpu_bs256_x_r0", "batch_size": 256, "status": "failed",
                "reason": "worker crashed: out of memory", "step_median_s": None, "images_per_s": None,
                "train_s": None, "projected_seed_run_s": None})
    run = store.read_run(directory)
    failed = [c for c in report.report_cells([run]) if c.status == "failed"]
    assert [c.reason for c in failed] == ["worker crashed: out of memory"]
    assert {c.engine for c in report.report_cells([run])} == {"keras"}    # the engine dimension's legacy value


def test_curves_are_drawn_when_a_run_has_them_and_garbage_is_ignored(tmp_path):
    run = cpu_and_gpu_run(tmp_path / "run")
    assert report.curves_spec([run]) is None
    (run.directory / "curves.csv").write_text("cell_id,epoch,val_accuracy\nc,0,0.3\nc,1,0.5\n")
    spec = report.curves_spec([run])
    assert [p["value"] for p in spec["data"]["values"]] == [0.3, 0.5]
    (run.directory / "curves.csv").write_text("\x00garbage")
    assert report.curves_spec([run]) is None


def test_columns_runs_may_gain_later_are_shown_when_present(tmp_path):
    """engine, energy and time to target: absent today, shown as soon as runs.csv has them."""
    run = cpu_and_gpu_run(tmp_path / "run")
    assert report.energy_spec(report.report_cells([run])) is None
    run.runs["engine"] = "native"
    run.runs["energy_per_image_j"] = 0.25
    run.runs["time_to_target_s"] = 60.0
    cells = report.report_cells([run])
    assert all(" · native · " in c.label for c in cells)
    assert cells[0].extra == {"energy_per_image_j": 0.25, "time_to_target_s": 60.0}
    energy = report.energy_spec(cells)
    assert {p["measure"] for p in energy["data"]["values"]} == {"energy_per_image_j"}
    page = report.render([run])
    columns = json.loads(re.search(r'id="report-columns">(.*?)</script>', page).group(1))
    assert {"engine", "energy_per_image_j", "time_to_target_s"} <= {c["key"] for c in columns}


def test_hostile_text_is_escaped_in_the_html(tmp_path):
    run = cpu_and_gpu_run(tmp_path / "run", env={**ENV, "machine_label": HOSTILE})
    page = report.render([run])
    assert HOSTILE not in page and "<img src=x" not in page
    assert html_escaped(HOSTILE) in page                    # the run's section, as text
    vendored = sum((report.VENDOR / name).read_text().count("<script") for name in report.SCRIPTS)
    assert page.count("<script") == 3 + 3 + 1 + vendored    # 3 builds, 3 data blocks, the table's


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_the_headline_png_is_written(tmp_path):
    cells = report.report_cells([cpu_and_gpu_run(tmp_path / "run")])
    path = report.write_headline_png(cells, tmp_path / "img" / "cpu-vs-gpu.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the command, through the real CLI

def command(argv: list[str]) -> int:
    """``python -m bench ARGV``'s exit status, through the real command line."""
    return cli.main(argv)


def test_command_writes_one_file_from_the_latest_run(tmp_path, capsys):
    root = tmp_path / "results"
    cpu_and_gpu_run(root / "runs" / "20260101-000000")
    out = tmp_path / "report.html"
    png = tmp_path / "cpu-vs-gpu.png"
    assert command(["report", "--results-dir", str(root), "--out", str(out), "--history", "--headline-png",
                    str(png)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "history of 3 cell(s)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--out", "{tmp}"], "is a directory"),
    (["--out", "{tmp}/no/such/dir/r.html"], "its directory does not exist"),
    (["--out", "{tmp}/r.html", "--run", "{tmp}/missing-run"], "no such run directory"),
    (["--out", "{tmp}/r.html", "--headline-png", "{tmp}/no/dir/h.png"], "--headline-png"),
])
def test_command_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    assert command(["report", "--results-dir", str(tmp_path), *[a.replace("{tmp}", str(tmp_path)) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def python_m_bench(*args, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a fresh process, as a user runs it (the fake worker for ``run``)."""
    fake_worker = [sys.executable, str(REPO / "tests" / "helpers" / "fake_worker.py")]
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, text=True, capture_output=True,
                          timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(REPO),
                                                         "BENCH_WORKER_COMMAND": shlex.join(fake_worker), **env})


def test_a_run_writes_its_report_page_beside_its_summary(tmp_path):
    done = python_m_bench("run", "--devices", "cpu", "--batch-sizes", "32,64", "--steps", "6", "--warmup", "2",
                          "--data", "synthetic", "--synthetic-images", "256", "--no-peak", "--out", tmp_path / "run",
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "run" / store.SUMMARY_MD).is_file()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    rows = json.loads(re.search(r'<script type="application/json" id="report-rows">(.*?)</script>', page,
                                re.DOTALL).group(1))
    assert sorted(r["batch_size"] for r in rows) == [32, 64]       # the run's own cells, from memory


def test_report_of_a_published_run_through_the_cli(tmp_path):
    out = tmp_path / "gpu-seed.html"
    done = python_m_bench("report", "--run", "results/published/gpu-seed", "--out", out, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>") and f"report: {out}" in done.stderr


def test_history_of_the_published_runs_through_the_cli():
    done = python_m_bench("history", "--results-dir", "results/published", "--json", cwd=REPO)
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout)["points"]
    published = {p.name for p in PUBLISHED.iterdir() if (p / store.RUNS_CSV).is_file()}
    assert {Path(p["path"]).name for p in points} <= published and len(points) > len(published)
    assert all(p["images_per_s"] > 0 for p in points)


# --------------------------------------------------------------------------- in a browser

def skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install '.[test]')")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        skip_or_fail("no Chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Error as exc:
            skip_or_fail(f"Chromium at {executable} does not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


class Page:
    """A report opened offline; what the page logged, requested and tried to pop up."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        self.requests, self.problems, self.dialogs = [], [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.problems.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("body[data-charts-ready]", timeout=120_000)
        assert self.page.get_attribute("body", "data-charts-ready") == "true", self.problems

    def _route(self, route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def marks(self, chart: str, mark: str) -> int:
        return self.page.locator(f"#{chart} g.mark-{mark}.role-mark > path").count()

    def column(self, index: int) -> list[str]:
        return self.page.locator(f"#results tbody tr td:nth-child({index})").all_inner_texts()

    def header_index(self, title: str) -> int:
        """The 1-based position of the results table's column headed ``title``."""
        headers = [h.strip() for h in self.page.locator("#results thead th").all_inner_texts()]
        return next(i for i, h in enumerate(headers, start=1) if h.startswith(title))

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=path, full_page=True)
        keep = os.environ.get("BENCH_REPORT_SCREENS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)

    def close(self):
        self.context.close()


def dated(directory: Path, date: str) -> None:
    """Say the run started on ``date`` (the fake worker starts every cell at one instant)."""
    import pandas as pd

    runs = pd.read_csv(directory / store.RUNS_CSV, dtype=str, keep_default_na=False)
    runs["started_at"] = f"{date}T00:00:00+00:00"
    runs.to_csv(directory / store.RUNS_CSV, index=False)


def history_root(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for i, median in enumerate((0.10, 0.10, 0.25)):
        dated(write_run(root / "runs" / f"20260101-00000{i}", {32: steps(median, seed=i)}), f"2026-01-0{i + 1}")
    for i, median in enumerate((0.095, 0.105)):
        write_run(root / "runs" / "20260102-000000-noise" / f"run-{i + 1}", {32: steps(median, seed=i)})
    return root


def test_the_published_runs_render_offline_with_every_chart(browser, tmp_path):
    runs = [store.read_run(PUBLISHED / name) for name in ("2026-11-24-quick-v2", "2026-11-24-seed", "gpu-seed")]
    found = history.history(history_root(tmp_path))
    out = report.write_report(runs, tmp_path / "report.html", history=found)
    cells = report.report_cells(runs)
    page = Page(browser, out)
    try:
        assert page.problems == [] and page.requests == [] and page.dialogs == []
        assert page.marks("chart-headline", "rect") == len(report.headline_bars(cells).bars) == 4
        assert page.marks("chart-throughput", "symbol") == sum(c.images_per_s is not None for c in cells)
        measured = sum(c.images_per_s is not None for c in cells)
        assert page.marks("chart-steps", "rect") == 2 * measured                # quartile box + median tick
        assert page.marks("chart-steps", "symbol") == sum(
            int(run.steps["warmup"].astype(bool).sum()) for run in runs)       # every warm-up step
        assert page.marks("chart-history", "symbol") == len(found.points) == 3
        assert page.marks("chart-history", "area") == 1                    # the noise band
        assert page.page.locator("#section-chart-curves .absent").count() == 1
        page.screenshot(tmp_path / "report-published.png")

        rows = page.column(1)
        assert len(rows) == len(cells)
        images = page.header_index("Images/s")
        page.page.click(f"#results th:nth-child({images})")                   # Images/s, ascending
        shown = [float(v.replace(",", "")) for v in page.column(images) if re.fullmatch(r"[\d,]+", v)]
        assert shown == sorted(shown) and len(shown) >= 6
        page.page.click(f"#results th:nth-child({images})")                   # and descending
        shown = [float(v.replace(",", "")) for v in page.column(images) if re.fullmatch(r"[\d,]+", v)]
        assert shown == sorted(shown, reverse=True)
        page.page.fill("#filter", "H100")
        assert set(page.column(1)) == {"H100 (Xeon, 16 cores)"}
        assert page.page.inner_text("#shown-count") == f"2 of {len(cells)} rows"
        skipped = page.page.locator("#results .badge.skipped", has_text="skipped")
        page.page.fill("#filter", "skipped")
        assert skipped.count() == 3 and "no GPU" in skipped.first.get_attribute("title")
        assert page.page.locator("#results th.more").first.is_hidden()
        page.page.check("#all-columns")
        assert page.page.locator("#results th.more").first.is_visible()
        first = page.page.locator("#chart-history g.mark-symbol.role-mark > path").first
        first.scroll_into_view_if_needed()
        box = first.bounding_box()
        with page.page.expect_navigation():                                # a point opens its run
            page.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert page.page.url.endswith("/results/runs/20260101-000000/")
    finally:
        page.close()


def test_hostile_labels_are_shown_as_text_and_never_run(browser, tmp_path):
    import pandas as pd

    directory = tmp_path / "runs" / "run\"'<b>x"
    run = cpu_and_gpu_run(directory, env={**ENV, "machine_label": HOSTILE})
    runs_csv = pd.read_csv(directory / store.RUNS_CSV, dtype=str, keep_default_na=False)
    runs_csv["run_id"] = HOSTILE                                     # text in a file: anything at all
    runs_csv.to_csv(directory / store.RUNS_CSV, index=False)
    run = store.read_run(directory)
    write_run(tmp_path / "baselines" / "<script>alert(3)<\\script>\"'", {32: steps(0.1)},
              env={**ENV, "machine_label": HOSTILE})
    found = history.history(tmp_path)
    out = report.write_report([run], tmp_path / "hostile.html", history=found)
    page = Page(browser, out)
    try:
        assert page.dialogs == [] and page.problems == [] and page.requests == []
        assert page.page.locator("img").count() == 0
        assert HOSTILE in page.column(1)                                     # the Machine column, as text
        assert HOSTILE in page.page.inner_text("#section-runs")
        assert page.marks("chart-history", "symbol") == len(found.points) == 4
        page.page.click("#history-table summary")
        links = page.page.locator("#history-table a")
        assert HOSTILE in links.all_inner_texts()
        hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
        hrefs += page.page.evaluate("Array.from(document.querySelectorAll('#chart-history [href]'))"
                                    ".map(e => e.getAttribute('href'))")
        assert hrefs and all(h.startswith(("./", "../")) and ":" not in h for h in hrefs)
        page.screenshot(tmp_path / "report-hostile.png")
    finally:
        page.close()


def test_the_documented_report_and_history_commands_parse():
    """docs/report.md's commands, against the real parser (tests/test_documented_commands.py runs them)."""
    import shlex

    parser = cli.build_parser()
    text = (Path(__file__).parent.parent / "docs" / "report.md").read_text(encoding="utf-8")
    commands = [line.split(" #")[0].strip() for line in text.splitlines() if line.startswith("python -m bench ")]
    assert {shlex.split(c)[3] for c in commands} == {"report", "history"}
    for command in commands:
        parser.parse_args(shlex.split(command)[3:])


def test_curves_and_energy_render_when_runs_have_them(browser, tmp_path):
    run = cpu_and_gpu_run(tmp_path / "run")
    (run.directory / "curves.csv").write_text("cell_id,epoch,val_accuracy,loss\na,0,0.3,2.0\na,1,0.5,1.5\n"
                                              "b,0,0.2,2.2\nb,1,0.4,1.7\n")
    run.runs["energy_per_image_j"] = [0.5, 0.6, 0.05]
    out = tmp_path / "extras.html"
    store.write_atomically(out, report.render([run], out_dir=tmp_path))
    page = Page(browser, out)
    try:
        assert page.problems == [] and page.requests == []
        assert page.marks("chart-curves", "line") == 4                     # 2 cells × 2 measures
        assert page.marks("chart-energy", "rect") == 3
        page.screenshot(tmp_path / "report-extras.png")
    finally:
        page.close()
