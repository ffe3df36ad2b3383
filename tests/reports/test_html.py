"""HTML reports: the plain-words findings (fast), then both pages opened in a real headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from fedoa.compare.render import compare_findings, render_compare_html
from fedoa.reports.findings import run_findings
from fedoa.reports.html import render_run_html, write_html
from fedoa.reports.results import Results

pytestmark = pytest.mark.xdist_group("html-pages")  # one worker writes the pages (module fixture)

FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM_TIMEOUT_S = 90  # the machine may be busy; a healthy call takes a few seconds


# ---------------------------------------------------------------- inputs

def run_inputs() -> tuple[Results, list[dict]]:
    """The fixture run plus the keys it predates: per-round accuracy and the global-update norm."""
    results = json.loads((FIXTURES / "run_results.json").read_text())
    metrics = [json.loads(line) for line in (FIXTURES / "run_metrics.jsonl").read_text().splitlines() if line]
    for i, m in enumerate(metrics):
        if m["phase"] == "global":
            m["update_norm"] = 0.1 * m["round"] + 0.01 * i
    first = {
        "round": 1,
        "summary": {k: {"id_accuracy": s["id_accuracy"] - 0.05, "ood_accuracy": s["ood_accuracy"] - 0.1}
                    for k, s in results["summary"].items()},
        "per_client": {k: {c: {"id_accuracy": 0.2, "ood_accuracy": 0.1} for c in results["clients"]}
                       for k in results["per_client"]},
    }
    last = {"round": 2, "summary": results["summary"], "per_client": results["per_client"]}
    results["rounds"] = [first, last]
    return Results.model_validate(results), metrics


def compare_input() -> dict:
    return json.loads((FIXTURES / "compare.json").read_text())


def two_clients(global_ood: tuple[float, float], personal_ood: tuple[float, float]) -> Results:
    """Minimal results: two clients, personal, global and zero-shot models (nothing else is read)."""
    def kind(ood: tuple[float, float], id_acc: float) -> tuple[dict, dict]:
        per = {c: {"id_accuracy": id_acc, "ood_accuracy": o} for c, o in zip(("a", "b"), ood)}
        return per, {"id_accuracy": id_acc, "ood_accuracy": sum(ood) / 2}

    per_g, sum_g = kind(global_ood, 0.70)
    per_p, sum_p = kind(personal_ood, 0.90)
    per_z, sum_z = kind((0.80, 0.80), 0.60)
    return Results.model_construct(clients=["a", "b"],
                                   summary={"personal": sum_p, "global": sum_g, "zero_shot": sum_z},
                                   per_client={"personal": per_p, "global": per_g, "zero_shot": per_z})


# ---------------------------------------------------------------- findings (fast)

def test_global_beating_every_personal_model_is_said():
    found = run_findings(two_clients(global_ood=(0.852, 0.852), personal_ood=(0.70, 0.794)), [])
    assert "The global model beats every personal model on OOD (85.2 vs 74.7)." in found


def test_mixed_outcome_counts_wins_losses_and_ties():
    found = run_findings(two_clients(global_ood=(0.9, 0.5), personal_ood=(0.8, 0.6)), [])
    assert "On OOD the global model beats 1 of 2 personal models, loses to 1 and ties 0 (70.0 vs 70.0)." in found


def test_gain_and_loss_against_zero_shot_and_best_kinds():
    found = run_findings(two_clients(global_ood=(0.852, 0.852), personal_ood=(0.70, 0.794)), [])
    assert "Compared with zero-shot, personal models gain 30.0 points ID but lose 5.3 points OOD." in found
    assert "Best on ID: personal (90.0)." in found
    assert "Best on OOD: global (85.2)." in found


def test_loss_trend_and_round_trend():
    results = two_clients(global_ood=(0.5, 0.5), personal_ood=(0.5, 0.5))
    results.rounds = [{"round": 1, "summary": {"global": {"id_accuracy": 0.5, "ood_accuracy": 0.4}}},
                         {"round": 3, "summary": {"global": {"id_accuracy": 0.7, "ood_accuracy": 0.5}}}]
    metrics = [{"round": r, "client": c, "phase": "global", "task_loss": loss}
               for r, c, loss in ((1, "a", 2.0), (1, "b", 4.0), (3, "a", 1.0), (3, "b", 2.0))]
    found = run_findings(results, metrics)
    assert "The global training loss (mean over clients) went down from 3.000 in round 1 to 1.500 in round 3." in found
    assert "OOD accuracy from round 1 to round 3: global +10.0 points." in found


def test_compare_findings_name_only_distinguishable_differences_once():
    summary = compare_input()
    assert "OOD: none of the 81 paired differences on the average is distinguishable from zero" in " ".join(
        compare_findings(summary))
    for p in summary["paired"]:
        pair = (p["a"][0], p["a"][1], p["b"][0], p["b"][1])
        if p["group"] == "ood" and pair in {("fedoa", "personal", "fedit", "global"),
                                            ("fedoa", "personal", "fedoa", "mixed"),
                                            ("fedoa", "mixed", "fedoa", "personal")}:  # the last two: one pair
            sign = -1 if pair[1] == "mixed" else 1
            low, high = sorted((sign * 0.01, sign * 0.09))
            p["cells"]["average"].update(difference=sign * 0.05, low=low, high=high, distinguishable=True)
    ood = [f for f in compare_findings(summary) if f.startswith("OOD: 2 of 81")]
    assert len(ood) == 1, compare_findings(summary)
    assert "fedoa personal is ahead of fedit global by 5.0 points [+1.0, +9.0]" in ood[0]
    assert "fedoa personal is ahead of fedoa mixed (P+G per input) by 5.0 points" in ood[0]


def test_write_html_replaces_atomically(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    write_html("<p>new</p>", target)
    assert target.read_text() == "<p>new</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left behind


def test_run_page_without_rounds_or_metrics_shows_only_the_matrices():
    results = Results.load(FIXTURES / "run_results.json")
    page = render_run_html(results, [])
    assert page.count('class="plot"') == len(results.matrices)
    assert "No training metrics were logged." in page


# ---------------------------------------------------------------- the pages in a real browser (slow)

def chromium_binary() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed; `make test` installs it (apt-get install chromium)")
    return path


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    """One headless Chromium call with a fresh profile; its whole process group is killed if it hangs."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the browser and its helpers
            proc.communicate()
            pytest.fail(f"chromium hung for {CHROMIUM_TIMEOUT_S} s on {args[-1]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class PlotCollector(HTMLParser):
    """The `.plot` containers and every <img> of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.plots, self.images, self.body = 0, [], {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "plot" in (attrs.get("class") or "").split():
            self.plots += 1
        if tag == "img":
            self.images.append(attrs)
        if tag == "body":
            self.body = attrs


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Both pages on disk, with the number of plots each must show."""
    folder = tmp_path_factory.mktemp("html")
    results, metrics = run_inputs()
    run_page, compare_page = folder / "report.html", folder / "compare.html"
    write_html(render_run_html(results, metrics), run_page)
    write_html(render_compare_html(compare_input()), compare_page)
    # run: training curves, accuracy per round, per client per round, one heatmap per kind;
    # compare: bars and a forest plot per group
    return {"run": (run_page, 3 + len(results.matrices)), "compare": (compare_page, 2 * 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run", "compare"])
def test_page_is_self_contained(pages, name):
    text = pages[name][0].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page loads an external resource"
    assert "@import" not in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run", "compare"])
def test_page_renders_its_plots_without_script_errors(pages, name):
    path, expected_plots = pages[name]
    done = run_chromium("--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, "console messages:\n" + "\n".join(console)
    dom = PlotCollector()
    dom.feed(done.stdout)
    assert dom.body.get("data-rendered") == "yes", dom.body  # set by the page once every image decoded
    assert dom.plots == expected_plots
    assert len(dom.images) == expected_plots
    for img in dom.images:
        assert img.get("alt"), img.keys()
        prefix, _, data = img["src"].partition(",")
        assert prefix == "data:image/png;base64" and data
        width, height = Image.open(io.BytesIO(base64.b64decode(data, validate=True))).size
        assert width > 100 and height > 100


@pytest.mark.slow
@pytest.mark.parametrize("name", ["run", "compare"])
def test_screenshot_is_not_blank(pages, name, tmp_path):
    shot = tmp_path / f"{name}.png"
    done = run_chromium(f"--screenshot={shot}", "--window-size=1280,2000", pages[name][0].as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colors = image.getcolors(maxcolors=image.size[0] * image.size[1])
    assert len(colors) > 200, "too few colors: the page looks blank"
    white = sum(count for count, rgb in colors if rgb == (255, 255, 255))
    assert white < 0.97 * image.size[0] * image.size[1], "the page is almost all white"
