"""`latentmill report` of an output on a real S3 server (SeaweedFS): the page and its thumbnails are
written next to the output in the bucket, with relative links that work when the folder is served
from there; a report written to local disk for an S3 output shows its thumbnails and links nothing."""

from __future__ import annotations

import re
import uuid

import pytest
import yaml

from latentmill.io import storage
from latentmill.jobs.cli import main
from latentmill.report import build_report

try:
    from tests.report_outputs import PROMPTS, VIDEO_ID, make_output
except ImportError:  # pytest run without the repository root on sys.path
    from report_outputs import PROMPTS, VIDEO_ID, make_output

pytestmark = pytest.mark.slow


def test_report_in_the_bucket(s3, tmp_path):
    uri = f"s3://latentmill/test-report/{uuid.uuid4().hex[:8]}"
    options = s3.storage_options()
    make_output(uri, options=options)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"storage": {"endpoint_url": s3.endpoint_url, "key": s3.access_key,
                                               "secret": s3.secret_key, "region": s3.region}}))
    assert main(["report", uri, "--config", str(job)]) == 0

    fs, root = storage.resolve(uri, options)
    index = storage.join(root, "report", "index.html")
    assert fs.info(index).get("ContentType", "").startswith("text/html")
    text = storage.read_bytes(fs, index).decode()
    thumbs = {path.rsplit("/", 1)[-1] for path in fs.find(storage.join(root, "report", "thumbs"))}
    assert len(thumbs) == len(PROMPTS) + 1
    for thumb in re.findall(r'(?:src|poster)="thumbs/([0-9a-f]{32}\.jpg)"', text):
        assert thumb in thumbs
    assert f'src="../media/{VIDEO_ID}.mp4"' in text and 'href="../media/p1.png"' in text
    assert not re.search(r"https?://|s3://latentmill/test-report/[^\"<]*\.png\"", text)

    # A local report of the bucket's output: thumbnails next to it; no relative URL reaches the bucket.
    local = tmp_path / "local-report"
    result = build_report([uri], str(local), storage_options=options)
    assert result.thumbnails_made == len(PROMPTS) + 1 and result.thumbnail_failures == 0
    text = (local / "index.html").read_text()
    assert len(re.findall(r'<img loading="lazy" src="thumbs/', text)) == len(PROMPTS) + 1  # the video: its poster
    assert "../media/" not in text and "<video" not in text
