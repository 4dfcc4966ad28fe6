"""``bitnet-doctor --report``: the page for a healthy run (a real run of our trainer) and for a collapsed one (the
debugging report's own table, read with --log), looked at in a real browser.

Headless Chromium (Debian's package; .ci/browser.sh installs it in CI) loads each page from a file with every
host name mapped to nowhere, writes a screenshot and a network log. The test checks the screenshot is no blank
page, the verdict box is at the top in the verdict's colour, and the plots were drawn (their line colours are on
screen); and that the page asked for nothing over the network: the network log holds no request the page
started. A control page with one image on a loopback address shows that such a request is seen.
Outside CI the browser part is skipped when chromium is not installed; under CI (CI set) it fails instead.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _decode_ckpt import trained_checkpoint
from test_runlog import REPORT_STANDARD_LR

pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e .[plot])")
Image = pytest.importorskip("PIL.Image", reason="pillow (a matplotlib dependency) is not installed")
pytestmark = pytest.mark.slow

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
GREEN, RED = (0x1B, 0x7A, 0x3A), (0xB3, 0x26, 0x1E)  # report.COLOURS["healthy"], report.UNHEALTHY
LINE_BLUE = (0x1F, 0x5F, 0xA8)  # report.TRAIN_BLUE: the train-loss curve


def need_browser():
    if BROWSER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must run .ci/browser.sh before pytest")
        pytest.skip("chromium is not installed (apt-get install chromium, or bash .ci/browser.sh)")


def doctor(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitnet_ref.doctor", *map(str, args)], capture_output=True, text=True)


def look(page: Path, tmp: Path) -> tuple:
    """Chromium's screenshot of ``page`` and the URLs the page itself requested."""
    shot, netlog = tmp / f"{page.stem}.png", tmp / f"{page.stem}.netlog.json"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                BROWSER,
                "--headless",
                "--no-sandbox",  # the tests may run as root
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: nothing leaves the machine
                f"--user-data-dir={profile}",
                "--window-size=1200,1600",
                f"--screenshot={shot}",
                f"--log-net-log={netlog}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return Image.open(shot).convert("RGB"), page_requests(netlog)


def page_requests(netlog: Path) -> list:
    """URLs of the network requests the page started (Chromium's own background requests have no origin)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params", {}) for e in log["events"] if e["type"] == start]
    return [
        p["url"]
        for p in starts
        if "url" in p
        and p.get("initiator") != "not an origin"
        and not p["url"].startswith(("file:", "data:", "chrome:", "about:"))
    ]


def colour_count(img, rgb, box=None) -> int:
    region = img.crop(box) if box else img
    return sum(n for n, c in region.getcolors(maxcolors=1 << 24) if c == rgb)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    healthy, collapsed = tmp / "healthy.html", tmp / "collapsed.html"
    r = doctor(trained_checkpoint().parent, "--report", healthy)
    assert r.returncode == 0 and r.stdout.startswith("verdict: healthy"), r.stderr
    log = tmp / "debugging-report.md"
    log.write_text(REPORT_STANDARD_LR)
    r = doctor("--log", log, "--vocab-size", "50257", "--report", collapsed)
    assert r.returncode == 0 and r.stdout.startswith("verdict: not_learning"), r.stderr  # never left ln V
    return {"healthy": healthy, "collapsed": collapsed}


@pytest.mark.parametrize("which, colour", [("healthy", GREEN), ("collapsed", RED)])
def test_the_page_is_self_contained_and_leads_with_the_verdict(pages, which, colour):
    text = pages[which].read_text()
    verdict = {"healthy": "healthy", "collapsed": "not_learning"}[which]
    assert f'data-verdict="{verdict}"' in text and f"<h1>{verdict}</h1>" in text
    assert text.index('id="verdict"') < text.index("<img")  # the verdict before any plot
    bare = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)  # the images' bytes aside
    for ref in ("http:", "https:", "//", "<script", "<link", "@import", "url("):
        assert ref not in bare, ref
    assert text.count('src="data:image/png;base64,') >= 2  # loss and diversity at least


@pytest.mark.parametrize("which, colour", [("healthy", GREEN), ("collapsed", RED)])
def test_a_browser_shows_the_verdict_and_the_plots_offline(pages, tmp_path, which, colour):
    need_browser()
    img, requested = look(pages[which], tmp_path)
    assert requested == [], requested
    w, h = img.size
    white = colour_count(img, (255, 255, 255))
    assert white < 0.95 * w * h, "the page looks blank"
    box = colour_count(img, colour, (0, 0, w, 200))
    assert box > 30_000, f"no verdict box in {colour} at the top ({box} pixels)"
    assert colour_count(img, LINE_BLUE, (0, 200, w, h)) > 100, "the loss plot is not on screen"


def test_the_network_check_sees_a_page_that_asks_for_the_network(tmp_path):
    need_browser()
    page = tmp_path / "control.html"
    page.write_text('<html><body><h1>control</h1><img src="http://127.0.0.1:9/control.png"></body></html>')
    _, requested = look(page, tmp_path)
    assert requested == ["http://127.0.0.1:9/control.png"]


def test_report_errors_are_one_line(tmp_path, pages):
    r = doctor(trained_checkpoint().parent, "--report", tmp_path)  # a directory
    assert r.returncode == 2 and r.stderr.startswith("error: cannot write the report") and r.stderr.count("\n") == 1
