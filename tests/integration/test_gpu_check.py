"""The GPU check script, run on a CPU with a tiny SDXL, so the command a lent GPU runs keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_every_step_on_a_cpu(tmp_path, model_cache):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTMILL_CACHE": str(model_cache)}
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--model", "builtin:tiny-sdxl", "--out", str(out),
         "--rows", "4", "--height", "64", "--width", "64", "--steps", "2", "--batch-size", "2",
         # the peer needs a pipeline per actor: the slowest part, and not GPU code
         "--contenders", "a,c", "--only", "compare,stages,flops,speed-options"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())

    compare = report["compare"]["report"]
    runs = {run["label"]: run for run in compare["runs"]}
    assert runs["a-0"]["rows"] == 4 and not runs["a-0"]["rows_failed"]
    assert runs["c"]["rows"] == 4
    assert set(report["stages"]) == {"encode", "denoise", "decode_float32"}
    assert report["stages"]["decode_float32"]["frames_finite"] is True
    assert report["unet_flops_per_image_step"] > 0
    markdown = (out / "gpu-check.md").read_text()
    assert "(a) latentmill" in markdown and "UNet FLOPs per image" in markdown
