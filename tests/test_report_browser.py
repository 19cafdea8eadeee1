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
from tests.trace_fixture import write_fixture_run

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
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
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
