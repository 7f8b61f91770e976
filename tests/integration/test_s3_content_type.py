"""Objects put to a real S3 server (SeaweedFS, tests/s3server.py) carry the Content-Type of their extension.

Without it S3 serves `binary/octet-stream` and browsers download images instead of showing them. Checked with
a plain HEAD of each object, as a browser or CDN sees it; an MP4 is also checked to be faststart (its index
before its media data) when read back from the server.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentmill.io import media, storage

try:
    from tests.helpers import mp4_top_level_boxes
except ImportError:  # pytest run without the repository root on sys.path
    from helpers import mp4_top_level_boxes

pytestmark = pytest.mark.slow


@pytest.fixture
def head(s3):
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key,
        region_name=s3.region)

    def head_object(path: str) -> dict:
        bucket, key = path.split("/", 1)
        return client.head_object(Bucket=bucket, Key=key)

    return head_object


@pytest.fixture
def sent(s3):
    """(fs, root, headers): the PutObject requests' headers by key, recorded as s3fs's client sends them."""
    fs, root = storage.resolve(f"s3://latentmill/content-type/{uuid.uuid4().hex[:8]}", s3.storage_options())
    fs.connect()
    headers: dict[str, dict] = {}

    def record(request, **_):
        headers[request.url.split("/latentmill/", 1)[1]] = {
            name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()}

    fs.s3.meta.events.register("before-send.s3.PutObject", record)
    yield fs, root, headers
    fs.s3.meta.events.unregister("before-send.s3.PutObject", record)


def _frames(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _parquet() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["a"]}), sink)
    return sink.getvalue().to_pybytes()


OBJECTS = {
    "media/a.png": (lambda: media.encode_image(_frames(1)[0], "png"), "image/png"),
    "media/a.jpg": (lambda: media.encode_image(_frames(1)[0], "jpeg"), "image/jpeg"),
    "media/a.webp": (lambda: media.encode_image(_frames(1)[0], "webp"), "image/webp"),
    "media/a.mp4": (lambda: media.encode_video(_frames(4), fps=8), "video/mp4"),
    "media/a.apng": (lambda: media.encode_video(_frames(3), fps=8, fmt="apng"), "image/apng"),
    "manifest/part-r-00000.parquet": (_parquet, "application/vnd.apache.parquet"),
    "summary.json": (lambda: b'{"ok": true}', "application/json"),
    "runs/r.json": (lambda: b"{}", "application/json"),
    "_latentmill_probe-0": (lambda: b"probe", "application/octet-stream"),
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_put_sets_the_content_type_of_its_extension(sent, head, name):
    make, expected = OBJECTS[name]
    fs, root, headers = sent
    path = storage.join(root, name)
    data = make()
    storage.put_bytes(fs, path, data)
    # The request says it (SeaweedFS would guess some types from the key; AWS S3 stores binary/octet-stream)...
    assert headers[path.split("/", 1)[1]].get("Content-Type") == expected
    # ... and the object is served with it.
    response = head(path)
    assert response["ContentType"] == expected
    assert response["ContentLength"] == len(data)


def test_the_mp4_read_back_from_s3_is_faststart(s3):
    fs, root = storage.resolve(f"s3://latentmill/content-type/{uuid.uuid4().hex[:8]}", s3.storage_options())
    path = storage.join(root, "media", "v.mp4")
    storage.put_bytes(fs, path, media.encode_video(_frames(6), fps=8))
    boxes = mp4_top_level_boxes(storage.read_bytes(fs, path))
    assert boxes.index(b"moov") < boxes.index(b"mdat"), boxes

