"""The report page in a real browser: headless Chromium opens it from local disk (file://), with its
scripts on, and the DOM it ends with is checked: the gallery, the error table, the side-by-side view,
the text filter, and no external URL. Skipped when no Chromium is installed
(infra/install-test-services.sh installs Debian's `chromium`).

LATENTMILL_UPDATE_SCREENSHOT=1 also saves the screenshot as docs/report.png (README "Looking at a run").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from latentmill.report import build_report

try:
    from tests.report_outputs import ERRORS, PROMPTS, VIDEO_ID, make_output
except ImportError:  # pytest run without the repository root on sys.path
    from report_outputs import ERRORS, PROMPTS, VIDEO_ID, make_output

pytestmark = pytest.mark.slow

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "report.png"


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("no Chromium to open the report in: apt-get install chromium "
                    "(infra/install-test-services.sh installs it)")
    return CHROMIUM


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of two outputs of one prompt table (the side-by-side view), in the first one."""
    root = tmp_path_factory.mktemp("report-browser")
    make_output(str(root / "sd15"))
    make_output(str(root / "sdxl"), model="builtin:tiny-sdxl", seed_offset=7, same_as_first={"p1"}, failed={"p5"},
                absent={"p4"})
    build_report([str(root / "sd15"), str(root / "sdxl")])
    return root / "sd15" / "report" / "index.html"


def browse(chromium: str, tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
               *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def dump_dom(chromium: str, tmp_path: Path, url: str) -> str:
    dom = browse(chromium, tmp_path, url, "--dump-dom").stdout
    assert 'data-ready="1"' in dom, "the page's script did not run"
    return dom


def panel(dom: str, panel_id: str) -> str:
    match = re.search(rf'<section class="panel[^"]*" id="{panel_id}">(.*?)</section>', dom, re.S)
    assert match, panel_id
    return match.group(1)


def test_gallery_errors_and_no_external_urls(chromium, report, tmp_path):
    dom = dump_dom(chromium, tmp_path, report.as_uri())
    first = panel(dom, "out1")
    assert re.search(r'<section class="panel active" id="out1">', dom)  # the first tab is open
    cards = re.findall(r'<figure class="card item" data-id="([^"]+)"', first)
    assert sorted(cards) == sorted({*PROMPTS, VIDEO_ID})
    assert len(re.findall(r"<img [^>]*src=\"thumbs/[0-9a-f]{32}\.jpg\"", first)) == 5
    assert len(re.findall(r'<video [^>]*poster="thumbs/[0-9a-f]{32}\.jpg"', first)) == 1
    assert "6 of 6 shown" in first
    groups = re.findall(r'<tr class="error-group"><td>(\w+)</td><td><code>(\w+)</code></td><td>(\d+)</td>', first)
    assert groups == [("validate", "RowError", "2"), ("decode", "RuntimeError", "1")]
    assert all(message in first for *_, message in ERRORS)
    second = panel(dom, "out2")
    assert len(re.findall(r'<figure class="card item"', second)) == 4
    # Nothing the browser would fetch from the network.
    for url in re.findall(r'\s(?:src|href|poster)="([^"]*)"', dom):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", url, re.I), url
    assert not re.search(r"https?://", dom)


def test_side_by_side_and_filter(chromium, report, tmp_path):
    dom = dump_dom(chromium, tmp_path, report.as_uri() + "#tab=compare&q=fox")
    assert re.search(r'<section class="panel active" id="compare">', dom)
    compare = panel(dom, "compare")
    rows = re.findall(r'<tr class="item cmp( hidden)?" data-id="([^"]+)" [^>]*data-f-status="(\w+)"', compare)
    assert len(rows) == len(PROMPTS) + 1 + len(ERRORS)
    # The filter from the address: only the fox row is visible.
    assert [row_id for hidden, row_id, _ in rows if not hidden] == ["p2"]
    assert "1 of 9 shown" in compare
    status = {row_id: value for _, row_id, value in rows}
    assert (status["p1"], status["p2"], status["p4"], status["p5"]) == ("identical", "different", "incomplete",
                                                                        "incomplete")
    # Two outputs side by side in every row.
    p5 = re.search(r'data-id="p5".*?</tr>', compare, re.S).group(0)
    assert p5.count('<td class="cell') == 2 and "failed in decode" in p5
    p4 = re.search(r'data-id="p4".*?</tr>', compare, re.S).group(0)
    assert "not in this output" in p4
    p2 = re.search(r'data-id="p2".*?</tr>', compare, re.S).group(0)
    assert "../media/p2.png" in p2 and "../../sdxl/media/p2.png" in p2


def test_screenshot(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    browse(chromium, tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        # Rendered, not blank: the page's colours plus the thumbnails' gradients.
        assert len(image.convert("RGB").getcolors(1 << 20) or ()) > 500
        if os.environ.get("LATENTMILL_UPDATE_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
            small = image.convert("RGB").resize((800, 1250), Image.LANCZOS)  # 256 dithered colours: ~160 KB
            palette = small.quantize(256, method=Image.Quantize.MEDIANCUT)
            small.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(DOCS_SCREENSHOT, optimize=True)
