"""Fixtures shared by all tests. The S3 server logic lives in tests/s3server.py."""

from __future__ import annotations

import pytest

try:
    from tests.s3server import SeaweedS3
except ImportError:  # pytest run without the repository root on sys.path
    from s3server import SeaweedS3


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS on 127.0.0.1, random ports) with bucket ``latentmill``.

    Use ``s3.storage_options()`` (fsspec/s3fs options), ``s3.env()`` (AWS_* variables),
    ``s3.endpoint_url``, ``s3.restart()``. Starting it takes ~4 s.
    """
    server = SeaweedS3(tmp_path_factory.mktemp("s3"), bucket="latentmill")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
