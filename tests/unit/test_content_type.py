"""latentmill.io.storage.content_type and what put_bytes hands to an S3 filesystem (no server; see
tests/integration/test_s3_content_type.py for a HEAD against a real one)."""

from __future__ import annotations

import pytest

from latentmill.io import media, storage


@pytest.mark.parametrize("path, expected", [
    ("bucket/out/media/a.png", "image/png"),
    ("bucket/out/media/a.JPG", "image/jpeg"),
    ("bucket/out/media/a.webp", "image/webp"),
    ("bucket/out/media/a.mp4", "video/mp4"),
    ("bucket/out/media/a.apng", "image/apng"),
    ("bucket/out/manifest/part-r-00000.parquet", "application/vnd.apache.parquet"),
    ("bucket/out/summary.json", "application/json"),
    ("bucket/out/_latentmill_job.json", "application/json"),
    ("bucket/out/_latentmill_probe-0123abcd", "application/octet-stream"),
    ("bucket/out/.hidden", "application/octet-stream"),
    ("bucket/out.d/noext", "application/octet-stream"),
    ("bucket/out/notes.txt", "text/plain"),
    ("bucket/out/archive.tar.gz", "application/octet-stream"),  # an encoding, not a type
])
def test_content_type_from_the_extension(path, expected):
    assert storage.content_type(path) == expected


def test_media_formats_and_storage_agree_on_mime_types():
    """The manifest's mime_type column and the object's Content-Type say the same."""
    for extension, mime in (*media.IMAGE_FORMATS.values(), *media.VIDEO_FORMATS.values()):
        assert storage.content_type(f"b/media/x.{extension}") == mime


class RecordingS3:
    protocol = ("s3", "s3a")

    def __init__(self) -> None:
        self.puts: list[tuple[str, dict]] = []

    def pipe_file(self, path, data, **kwargs):
        self.puts.append((path, kwargs))


def test_put_bytes_passes_the_content_type_to_s3():
    fs = RecordingS3()
    storage.put_bytes(fs, "b/out/media/a.webp", b"x")
    storage.put_bytes(fs, "b/out/summary.json", b"{}")
    storage.put_bytes(fs, "b/out/blob", b"x", content_type="text/plain")
    assert fs.puts == [("b/out/media/a.webp", {"ContentType": "image/webp"}),
                       ("b/out/summary.json", {"ContentType": "application/json"}),
                       ("b/out/blob", {"ContentType": "text/plain"})]


def test_other_filesystems_get_no_s3_arguments(tmp_path):
    class Memory(RecordingS3):
        protocol = "memory"

    fs = Memory()
    storage.put_bytes(fs, "/x/a.png", b"x")
    assert fs.puts == [("/x/a.png", {})]
    local, path = storage.resolve(str(tmp_path / "a.png"))
    storage.put_bytes(local, path, b"png")
    assert (tmp_path / "a.png").read_bytes() == b"png"
