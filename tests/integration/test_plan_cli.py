"""`latentmill plan` on a simulated model, then `latentmill run --plan FILE` and `--auto-size`."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import yaml

from latentmill.jobs.cli import main
from tests.helpers import write_table

MODEL = "builtin:sim-sdxl-30@0.02"  # SDXL's stage shares, 50x faster: a denoiser batch of 4 takes 24 ms


def run_cli(args: list[str], capsys, caplog) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, on the test session's Ray; stderr holds its log lines too."""
    capsys.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="latentmill"):
        code = main(args)
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, printed.out, printed.err + caplog.text)


@pytest.mark.slow
def test_plan_then_run_with_the_plan(ray_local, tmp_path, capsys, caplog):
    plan_file = tmp_path / "plan.yaml"
    code = main(["plan", "--model", MODEL, "--cpus", "2", "--batch-sizes", "1,2,4", "--repeats", "1",
                 "--output", str(plan_file)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "predicted throughput" in printed and "bottleneck" in printed
    document = yaml.safe_load(plan_file.read_text())
    stages = document["stages"]
    assert set(stages) == {"encode", "denoise", "decode"}
    assert sum(s["size"] * s["num_cpus"] for s in stages.values()) <= 2 + 1e-6
    assert stages["encode"]["batch_size"] <= stages["denoise"]["batch_size"]
    denoise_cost = document["plan"]["calibration"]["costs"]["denoise"]
    # The fitted split of a batch's time into t0 + batch x t1 depends on machine load; its sum must not.
    assert denoise_cost["t0"] >= 0 and denoise_cost["t1"] >= 0 and denoise_cost["t0"] + denoise_cost["t1"] > 0
    # the decode's measured peak memory travels to the run in the stages section
    assert set(stages["decode"]["peak_memory"]) == {"fixed_bytes", "bytes_per_latent_element", "dtype", "device"}

    table = write_table(tmp_path / "prompts.parquet", [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(12)])
    out = tmp_path / "out"
    result = run_cli(["run", "--input", str(table), "--output", str(out), "--model", MODEL,
                      "--plan", str(plan_file), "--no-progress"], capsys, caplog)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["outputs_written"], summary["rows_failed"]) == (12, 12, 0)
    used = summary["config"]["stages"]
    for stage, values in stages.items():
        for key, value in values.items():
            assert used[stage][key] == pytest.approx(value), (stage, key)


@pytest.mark.slow
def test_run_auto_size(ray_local, tmp_path, capsys, caplog):
    table = write_table(tmp_path / "prompts.parquet", [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(8)])
    out = tmp_path / "out"
    result = run_cli(["run", "--input", str(table), "--output", str(out), "--model", MODEL, "--auto-size",
                      "--no-progress"], capsys, caplog)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "auto-size" in result.stderr and "predicted throughput" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs_written"] == 8


def test_plan_and_auto_size_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--input", "x", "--output", "y", "--plan", "p.yaml", "--auto-size"])
    assert "not allowed with" in capsys.readouterr().err
