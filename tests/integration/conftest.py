"""A local Ray instance, the built-in tiny models and the hostile-input run, shared by the integration tests."""

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


@pytest.fixture(scope="session")
def hostile(ray_local, tmp_path_factory):
    """One run over every hostile row of test_hostile.py (ROWS); a decode fault on row 'boom' (its batch mates
    must complete). It saves latents, which test_latents.py decodes again, and writes PNGs at zlib's maximum
    level (output.png_compress_level: 9). Shared by both modules: tests read the output folder or copy it,
    never change it. Returns (summary, the exactly-once checks' Output, the output folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import write_table
    from tests.integration.exactly_once import check_output, run
    from tests.integration.test_hostile import FAILED, LIMITS, OUTPUTS, ROWS

    folder = tmp_path_factory.mktemp("hostile")
    table = write_table(folder / "hostile.parquet", ROWS)
    assert pq.read_schema(table).field("guidance_scale").type == pa.string()  # a wrong-type column
    assert pq.read_schema(table).field("num_inference_steps").type == pa.float64()  # 0 arrives as 0.0
    out = folder / "out"
    previous = os.environ.get("LATENTMILL_FAULTS")
    os.environ["LATENTMILL_FAULTS"] = "decode:raise:boom"
    try:
        summary = run(str(table), str(out), limits=LIMITS,
                      output={"manifest_flush_seconds": 1, "save_latents": True, "png_compress_level": 9})
    finally:
        if previous is None:
            os.environ.pop("LATENTMILL_FAULTS")
        else:
            os.environ["LATENTMILL_FAULTS"] = previous
    output = check_output(str(out), OUTPUTS, FAILED)
    return summary, output, out
