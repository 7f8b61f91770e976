"""`bench compare --devices`: latentmill, the whole-pipeline peer and the bound on simulated devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_compare_on_simulated_devices_reports_every_contender(tmp_path, model_cache):
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTMILL_CACHE": str(model_cache)}
    result = subprocess.run(
        [sys.executable, "-m", "latentmill.jobs.cli", "bench", "compare", "--model", "builtin:sim-lcm-4",
         "--time-scale", "0.25", "--devices", "2", "--height", "32", "--width", "32", "--batches-per-device", "3",
         "--prices", "h100=2.5,l4=0.8", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "compare.json").read_text())
    [point] = report["points"]
    assert point["devices"] == 2 and point["params"]["height"] == 32
    assert point["bound_rows_per_s"] > 0 and 0 < point["a_pools_over_bound"] <= 1
    a, b = point["contenders"]["a"], point["contenders"]["b"]
    assert a["rows"] == b["rows"] == point["rows"] == 2 * 8 * 3
    # (a) holds whole denoiser devices and rents the rest of the budget on the cheaper type; (b) rents N.
    assert a["devices_rented"] == {"h100": a["denoiser_devices"], "l4": 2 - a["denoiser_devices"]}
    assert b["devices_rented"] == {"h100": 2}
    for contender in (a, b):
        for field in ("steady_rows_per_s", "vs_bound", "denoiser_busy", "cost_per_1000", "machine_cores_busy"):
            assert contender[field] is not None and contender[field] > 0, field
        assert contender["denoiser_busy"] < 1.2
    assert point["a_over_b_rows_per_s"] > 0 and point["b_over_a_cost"] > 0
    markdown = (out / "compare.md").read_text()
    assert "(a) latentmill" in markdown and "(b) peer" in markdown and "(c) bound" in markdown
    assert "cost per 1,000" in markdown
    # Both wrote real media at the requested size.
    for run in ("a-2", "b-2"):
        assert len(list((out / "runs" / run / "media").glob("*.png"))) == point["rows"]
