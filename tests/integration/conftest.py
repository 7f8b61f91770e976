"""A local Ray instance and the built-in tiny models, shared by the integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Tiny models built once per test session, in a cache the Ray workers inherit."""
    cache = tmp_path_factory.mktemp("latentmill-cache")
    os.environ["LATENTMILL_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


@pytest.fixture(scope="session")
def ray_local(model_cache):
    import ray

    # address="local": a Ray of our own, never a cluster that /tmp/ray/ray_current_cluster names.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
