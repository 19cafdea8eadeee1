"""The HTML report rendered by a real browser (headless Chromium): plots decode, tables are in the DOM.

Slow (a browser start per test); runs in CI, where `make test` installs the Debian `chromium`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rl_reasoning import cli
from tests.trace_fixture import write_fixture_run, write_retry_fixture_run

pytestmark = pytest.mark.slow

# Injected into a copy of the report (not into the report itself): after load, record how many
# <img class=plot> decoded to a real bitmap, and how many aha rows and completion cards exist.
PROBE = """<script>
window.addEventListener('load', () => {
  const plots = [...document.querySelectorAll('img.plot')];
  document.body.dataset.plots = plots.length;
  document.body.dataset.decoded = plots.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100).length;
  document.body.dataset.ahaRows = document.querySelectorAll('#aha-table tr.aha-row').length;
  document.body.dataset.cards = document.querySelectorAll('.prompt-view .card').length;
  document.body.dataset.visibleWidth = Math.round(document.querySelector('#aha-table').getBoundingClientRect().width);
});
</script>"""


def without_csp(page: str) -> str:
    """The page minus its Content-Security-Policy, so that our own injected probe script may run."""
    stripped = re.sub(r"<meta http-equiv=Content-Security-Policy[^>]*>", "", page)
    assert stripped != page, "the report must carry a Content-Security-Policy"
    return stripped


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is not installed: `make test` installs it (apt-get install chromium)")


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,2000"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def report(tmp_path) -> Path:
    run = write_fixture_run(tmp_path / "run")
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run), "-o", str(out)]) == 0
    return out


def test_report_renders_plots_and_tables_in_chromium(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(without_csp(report.read_text()).replace("</body>", PROBE + "</body>"))
    result = run_chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    dom = result.stdout
    assert "<body" in dom, result.stderr[-2000:]
    data = dict(re.findall(r'data-([a-z-]+)="(\d+)"', re.search(r"<body[^>]*>", dom).group(0)))
    assert int(data["plots"]) >= 6
    assert data["decoded"] == data["plots"], "every embedded plot must decode to an image"
    assert data["aha-rows"] == "1" and int(data["cards"]) >= 12
    assert int(data["visible-width"]) > 300
    assert "<mark class=\"point\">Wait</mark>" in dom


def test_report_screenshot(report, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    shot = Path(os.environ.get("RL_REASONING_SCREENSHOT", tmp_path / "report.png"))
    result = run_chromium(f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1280
    assert float(np.std(pixels[..., :3])) > 0.05, "the screenshot is blank"


# Injected into a copy of a multi-turn run's report: count the episode cards a reader sees with
# each filter (clicking its radio button as a reader would; the filter itself is CSS, no script),
# and whether the fix-rate plot decoded.
EPISODE_PROBE = """<script>
window.addEventListener('load', () => {
  const visible = () => [...document.querySelectorAll('.card.episode')].filter(c => getComputedStyle(c).display !== 'none');
  const count = (outcome) => visible().filter(c => c.classList.contains('out-' + outcome)).length;
  const d = document.body.dataset;
  d.allShown = visible().length;
  d.allFixed = count('fixed');
  document.getElementById('show-fixed').click();
  d.fixedShown = visible().length;
  d.fixedFixed = count('fixed');
  document.getElementById('show-not_fixed').click();
  d.notFixedShown = visible().length;
  d.notFixedNotFixed = count('not_fixed');
  document.getElementById('show-all').click();
  d.againShown = visible().length;
  const plot = [...document.querySelectorAll('img.plot')].find(i => i.alt === 'Fix rate beside accuracy');
  d.fixPlot = plot && plot.complete && plot.naturalWidth > 100 && plot.naturalHeight > 100 ? 1 : 0;
  d.feedbackBoxes = document.querySelectorAll('.card.episode .feedback').length;
});
</script>"""


def test_episode_cards_and_their_filter_render_in_chromium(tmp_path):
    run = write_retry_fixture_run(tmp_path / "run")
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run), "-o", str(out)]) == 0
    page = out.read_text()
    assert "<script" not in page, "the filter must work without script"
    probe = tmp_path / "probe.html"
    probe.write_text(without_csp(page).replace("</body>", EPISODE_PROBE + "</body>"))
    result = run_chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert "<body" in result.stdout, result.stderr[-2000:]
    data = dict(re.findall(r'data-([a-z-]+)="(\d+)"', re.search(r"<body[^>]*>", result.stdout).group(0)))
    assert (data["all-shown"], data["all-fixed"]) == ("12", "4")  # 4 fixed, 3 not fixed, 4 right at once, 1 not judged
    assert (data["fixed-shown"], data["fixed-fixed"]) == ("4", "4"), "'wrong → fixed' must hide every other card"
    assert (data["not-fixed-shown"], data["not-fixed-not-fixed"]) == ("3", "3")
    assert data["again-shown"] == "12"
    assert data["fix-plot"] == "1", "the fix-rate plot must decode to an image"
    assert data["feedback-boxes"] == "6"  # 4 fixed + 2 wrong twice; the old-style record's feedback recovered from its completion


# --------------------------------------------------------------------------- a hostile run folder


class Listener:
    """A local HTTP server that records every request: the page must fetch nothing."""

    def __init__(self):
        import http.server
        import threading

        self.paths: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                listener.paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def hostile_values(url: str) -> list[str]:
    return [
        '<img src=x onerror="document.title=\'PWNED\'">',
        f"<script>document.title='PWNED'</script><script src='{url}/script.js'></script>",
        f"</pre></td></tr></table><img src='{url}/img.png'><link rel=stylesheet href='{url}/style.css'>",
        f"<style>body{{background:url('{url}/bg.png')}}</style><iframe src='{url}/frame'></iframe>",
        f"<a href=\"javascript:document.title='PWNED'\">x</a><meta http-equiv=refresh content='0;url={url}/refresh'>",
    ]


def write_hostile_run(run: Path, url: str) -> Path:
    import json

    write_fixture_run(run)
    values = hostile_values(url)
    with (run / "traces.jsonl").open("a") as f:
        for i, v in enumerate(values):
            f.write(json.dumps({"step": 6, "prompt_id": v, "group_index": i, "prompt": v, "question": v, "answer": v, "completion": v * 3,
                                "reward": 1.0, "correct": True, "length": 5}) + "\n")
        f.write(json.dumps({"step": values[0], "prompt_id": "q-add", "completion": "x"}) + "\n")  # malformed: skipped
    with (run / "eval_traces.jsonl").open("a") as f:
        for i, v in enumerate(values):
            f.write(json.dumps({"step": 6, "problem": i, "question": v, "answer": v, "completion": v, "correct": False}) + "\n")
        f.write(json.dumps({"step": values[0], "problem": 0, "completion": "x"}) + "\n")
    (run / "config.yaml").write_text("model:\n  name: " + json.dumps(values[2]) + "\n")
    return run


def dom_and_title(page: Path) -> tuple[str, str]:
    # the title after scripts would have run, read from the DOM chromium dumps
    result = run_chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    dom = result.stdout
    assert "<body" in dom, result.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    return dom, title


def test_a_hostile_run_folder_runs_no_script_and_fetches_nothing(tmp_path):
    listener = Listener()
    try:
        run = write_hostile_run(tmp_path / "run<img src=x onerror=alert(1)>", listener.url)
        out = tmp_path / "report.html"
        assert cli.main(["report", str(run), "-o", str(out)]) == 0
        dom, title = dom_and_title(out)
        assert "PWNED" not in title and title.endswith("rl-reasoning report")
        assert not re.search(r"<(script|iframe|link|object|embed|style)\b", dom.split("</head>", 1)[1]), "markup from the run became elements"
        images = re.findall(r"<img\b[^>]*>", dom)
        assert images and all('class="plot"' in i and 'src="data:image/png;base64,' in i for i in images), [i[:80] for i in images]
        assert listener.paths == [], f"the report fetched {listener.paths}"
        control = tmp_path / "control.html"  # the same values pasted raw, without a policy, do fetch: the test can fail
        control.write_text("<html><head><title>c</title></head><body>" + "".join(hostile_values(listener.url)) + "</body></html>")
        dom_and_title(control)
        assert {"/script.js", "/img.png", "/style.css"} <= set(listener.paths), f"the control page fetched only {listener.paths}"
    finally:
        listener.close()


def test_the_csp_stops_script_even_if_escaping_slips(tmp_path, report):
    """Simulate an escaping bug: raw markup pasted into the page. The policy must still block it."""
    listener = Listener()
    try:
        slipped = tmp_path / "slipped.html"
        injected = (f"<img src=x onerror=\"document.title='PWNED'\"><script>document.title='PWNED'</script>"
                    f"<img src='{listener.url}/img.png'><script src='{listener.url}/s.js'></script>")
        slipped.write_text(report.read_text().replace("</body>", injected + "</body>"))
        dom, title = dom_and_title(slipped)
        assert "PWNED" not in title
        assert listener.paths == [], f"the page fetched {listener.paths} despite its policy"
        control = tmp_path / "control.html"  # the same page without the policy runs the script and fetches: the test can fail
        control.write_text(without_csp(slipped.read_text()))
        assert "PWNED" in dom_and_title(control)[1]
        assert {"/img.png", "/s.js"} <= set(listener.paths), f"the control page fetched only {listener.paths}: the listener is not reached"
    finally:
        listener.close()
