"""`latentmill report` on real small outputs (PNGs, an MP4, manifest and error parts written by hand): the
page's content, its links (relative, all reachable from the report folder), sampling, the CLI."""

from __future__ import annotations

import re
import shutil
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from latentmill.jobs.cli import main
from latentmill.report import build_report
from latentmill.report.collect import sample_key

try:
    from tests.report_outputs import ERRORS, PROMPTS, VIDEO_ID, make_output
except ImportError:  # pytest run without the repository root on sys.path
    from report_outputs import ERRORS, PROMPTS, VIDEO_ID, make_output

ALL_IDS = {*PROMPTS, VIDEO_ID}


class Page(HTMLParser):
    """The elements of a page as (tag, attributes, enclosing panel id)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.panel: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if tag == "section" and "panel" in attributes.get("class", ""):
            self.panel = attributes.get("id")
        self.elements.append((tag, attributes, self.panel))

    def find(self, tag: str, cls: str | None = None, panel: str | None = None) -> list[dict[str, str]]:
        return [attrs for name, attrs, where in self.elements if name == tag
                and (cls is None or cls in attrs.get("class", "").split()) and (panel is None or where == panel)]

    def urls(self) -> list[str]:
        return [attrs[key] for _, attrs, _ in self.elements for key in ("src", "href", "poster") if key in attrs]


@pytest.fixture
def outputs(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    make_output(str(a))
    # Same prompt table, another model: p1 byte-identical, p5 failed, p4 not there, the rest different.
    make_output(str(b), model="builtin:tiny-sdxl", seed_offset=7, same_as_first={"p1"}, failed={"p5"},
                absent={"p4"})
    return a, b


def assert_self_contained(report: Path, page: Page, text: str) -> None:
    """No network: no URL with a scheme anywhere, no external stylesheet or script; every relative
    src/href/poster names a file that exists, seen from the report folder."""
    assert not re.search(r"https?://", text), re.search(r".{40}https?://.{40}", text)
    assert "<link" not in text and not re.search(r"<script[^>]+src=", text)
    for url in page.urls():
        assert "://" not in url and not url.startswith(("/", "data:")), url
        if url.startswith("#"):  # a section of the page
            assert f'id="{url[1:]}"' in text, url
            continue
        assert (report / urllib.parse.unquote(url)).resolve().is_file(), url


def test_report_of_one_output(outputs):
    a, _ = outputs
    result = build_report([str(a)])
    report = a / "report"
    assert result.index_uri == str(report / "index.html")
    assert (result.items, result.sampled, result.thumbnails_made, result.thumbnail_failures) == (6, False, 6, 0)
    text = (report / "index.html").read_text()
    page = Page(text)
    cards = page.find("figure", "card", "out1")
    assert {card["data-id"] for card in cards} == ALL_IDS
    assert_self_contained(report, page, text)
    # Thumbnails: small JPEGs; the video's is its first frame, and the video plays from ../media.
    for thumb in (report / "thumbs").iterdir():
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= 256
    (video,) = page.find("video")
    assert video["src"] == f"../media/{VIDEO_ID}.mp4" and video["poster"].startswith("thumbs/")
    assert video["preload"] == "none"
    # Images link to their full media object.
    links = {attrs["href"] for attrs in page.find("a", "media")}
    assert {f"../media/{row_id}.png" for row_id in PROMPTS} <= links
    # Errors grouped by stage and type, in stage order, with examples.
    groups = page.find("tr", "error-group")
    assert len(groups) == 2
    assert re.search(r"<td>validate</td><td><code>RowError</code></td><td>2</td>", text)
    assert re.search(r"<td>decode</td><td><code>RuntimeError</code></td><td>1</td>", text)
    for row_id, _, _, message in ERRORS:
        assert message in text
    # Counts and history, timings as SVG distributions, outputs over time from the parts' write times.
    assert "20260102T100000-bbbbbb" in text and "20260101T100000-aaaaaa" in text
    assert text.count('aria-label="encode_seconds"') == 1 and 'aria-label="denoise_seconds"' in text
    assert 'aria-label="outputs over seconds since the run started"' in text
    # Category-like columns become filters; constant ones are said once.
    selects = {attrs["data-col"] for attrs in page.find("select")}
    assert {"data-f-num_inference_steps", "data-f-model_family", "data-f-mime_type", "data-f-model"} <= selects
    assert "data-f-prompt" not in selects and "data-f-seed" not in selects
    assert '<span class="kv" title="5"><b>guidance_scale</b> 5</span>' in text
    # Outputs over time: each run's parts at their write times.
    assert "20260101T100000-aaaaaa: 3 outputs" in text and "20260102T100000-bbbbbb: 3 outputs" in text
    assert "secret" in text and "***" in text  # the masked config, as the run wrote it
    assert "compare" not in {attrs.get("id") for attrs in page.find("section")}


def test_large_outputs_are_sampled_deterministically(outputs):
    a, _ = outputs
    first = build_report([str(a)], max_items=3)
    assert first.sampled and first.items == 3
    text = (a / "report" / "index.html").read_text()
    shown = {card["data-id"] for card in Page(text).find("figure", "card")}
    assert shown == set(sorted(ALL_IDS, key=sample_key)[:3])
    assert "deterministic sample of 3 of 6 outputs" in text
    again = build_report([str(a)], max_items=3)
    assert {card["data-id"] for card in Page((a / "report" / "index.html").read_text()).find("figure", "card")} == shown
    assert (again.thumbnails_made, again.thumbnails_reused) == (0, 3)
    everything = build_report([str(a)])
    assert (everything.sampled, everything.thumbnails_made, everything.thumbnails_reused) == (False, 3, 3)
    build_report([str(a)], max_items=2)  # thumbnails the page no longer shows are removed
    assert len(list((a / "report" / "thumbs").iterdir())) == 2


def test_side_by_side(outputs, tmp_path):
    a, b = outputs
    result = build_report([str(a), str(b)], str(tmp_path / "cmp"))
    report = tmp_path / "cmp"
    text = (report / "index.html").read_text()
    page = Page(text)
    assert_self_contained(report, page, text)
    assert result.outputs == 2 and result.items == 6 + 4
    rows = {attrs["data-id"]: attrs for attrs in page.find("tr", "cmp", "compare")}
    assert set(rows) == ALL_IDS | {row_id for row_id, *_ in ERRORS}
    assert rows["p1"]["data-f-status"] == "identical"
    assert rows["p2"]["data-f-status"] == "different"
    assert rows["p5"]["data-f-status"] == "incomplete"  # failed in b
    assert rows["p4"]["data-f-status"] == "incomplete"  # not in b
    assert rows["e1"]["data-f-status"] == "failed"  # failed in both
    # Every output's media reachable from the shared report folder: ../runs/a/media, ../runs/b/media.
    hrefs = set(page.urls())
    assert "../runs/a/media/p2.png" in hrefs and "../runs/b/media/p2.png" in hrefs
    assert result.thumbnails_made == 6 + 4 - 1  # p1's identical media share one thumbnail
    assert "failed in decode" in text and "not in this output" in text
    assert '<span class="kv diff"><b>seed</b>' in text and '<span class="kv diff"><b>model</b>' in text


def test_moved_output_and_missing_media(outputs, tmp_path):
    a, _ = outputs
    moved = tmp_path / "elsewhere" / "a"
    shutil.move(str(a), str(moved))  # the manifest still names the old absolute paths
    (moved / "media" / "p3.png").unlink()
    result = build_report([str(moved)])
    assert (result.items, result.thumbnails_made, result.thumbnail_failures) == (6, 5, 1)
    text = (moved / "report" / "index.html").read_text()
    assert "media object missing" in text and str(moved / "media" / "p3.png") in text
    page = Page(text)
    assert "../media/p2.png" in page.urls()


def test_cli(outputs, tmp_path, capsys):
    a, b = outputs
    assert main(["report", str(a), str(b), "--output", str(tmp_path / "r"), "--max-items", "4"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "r" / "index.html") in out and "deterministic sample" in out
    page = Page((tmp_path / "r" / "index.html").read_text())
    assert len(page.find("figure", "card", "out1")) == 4 and len(page.find("tr", "cmp")) == 4
    assert main(["report", str(a)]) == 0
    assert (a / "report" / "index.html").is_file()

    assert main(["report", str(tmp_path / "nothing-here")]) == 1
    assert "no such output folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["report", str(tmp_path / "plain")]) == 1
    assert "not a latentmill output" in capsys.readouterr().err
    assert main(["report", str(a), "--max-items", "0"]) == 1
    # --config: the storage: section of a job file (the run's own: other sections are not read).
    job = tmp_path / "job.yaml"
    job.write_text("input: {uri: prompts.parquet}\nstages: {denoise: {size: 2}}\nstorage: {region: eu-west-1}\n")
    assert main(["report", str(a), "--config", str(job)]) == 0
    job.write_text("storage: {endpoint_url: localhost:9000}\n")
    capsys.readouterr()
    assert main(["report", str(a), "--config", str(job)]) == 1
    assert "storage.endpoint_url" in capsys.readouterr().err
