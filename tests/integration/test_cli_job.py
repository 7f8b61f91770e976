"""The command line on real prompts and on bad input: exit codes, messages, counts that add up."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.jobs.cli import EXIT_JOB_ERROR, main
from tests.helpers import PARTI_PROMPTS_64, png_zlib_level, write_table

SMALL_POOLS = """
stages:
  encode: {batch_size: 8, num_cpus: 0.5}
  denoise: {batch_size: 8, num_cpus: 1}
  decode: {batch_size: 8, num_cpus: 0.5}
"""


def run_cli(args: list[str], tmp_path, capsys, job_yaml: str = "") -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, on the test session's Ray instance (`python -m latentmill.jobs.cli`
    in a fresh process: test_help_is_instant_and_lists_the_run_flags, and the CLI runs of test_resume.py)."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(SMALL_POOLS + job_yaml)
    capsys.readouterr()
    argv = ["run", "--no-progress", "--config", str(job_file), *args]
    code = main(argv)
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, printed.out, printed.err)


@pytest.mark.slow
def test_64_parti_prompts_give_64_outputs(ray_local, tmp_path, capsys):
    out = tmp_path / "parti"
    result = run_cli(["--input", str(PARTI_PROMPTS_64), "--prompt-column", "Prompt", "--limit", "64",
                      "--output", str(out)], tmp_path, capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = pq.read_table(out / "manifest").to_pylist()
    assert len(manifest) == 64 and len({row[schema.ID] for row in manifest}) == 64
    media = sorted((out / "media").iterdir())
    assert len(media) == 64
    assert {png_zlib_level(path.read_bytes()) for path in media} == {"fastest"}  # output.png_compress_level: 1
    prompts = pq.read_table(PARTI_PROMPTS_64).column("Prompt").to_pylist()[:64]
    assert sorted(row[schema.PROMPT] for row in manifest) == sorted(prompts)
    assert re.search(r"outputs written\s+64\n", result.stdout) and re.search(r"rows failed\s+0\n", result.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_read"], summary["outputs_written"], summary["rows_failed"]) == (64, 64, 0)
    assert 0 <= summary["rows_read_ahead_peak"] <= 64  # the most that waited for the encode pool


def test_missing_prompt_column_stops_at_once(tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"text": "hello"}])
    code = main(["run", "--input", str(table), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR
    assert "no prompt column 'prompt'" in err and "['text']" in err and "--prompt-column" in err
    assert not (tmp_path / "o" / "manifest").exists()


def test_a_file_that_is_not_parquet(tmp_path, capsys):
    bogus = tmp_path / "prompts.parquet"
    bogus.write_text("prompt\na cat\n")
    assert main(["run", "--input", str(bogus), "--output", str(tmp_path / "o")]) == EXIT_JOB_ERROR
    err = capsys.readouterr().err
    assert "is not a readable Parquet file" in err and "Traceback" not in err


def test_missing_input(tmp_path, capsys):
    assert main(["run", "--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "o")]) == EXIT_JOB_ERROR
    assert "no prompt table at" in capsys.readouterr().err


def test_invalid_job_file_names_the_field(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("stages:\n  denoise:\n    batch_size: 0\n    colour: red\n")
    code = main(["run", "--config", str(job), "--input", "x.parquet", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR
    assert "stages.denoise.batch_size" in err and "stages.denoise.colour" in err


def test_model_that_is_not_a_diffusers_checkpoint(tmp_path, capsys):
    table = write_table(tmp_path / "t.parquet", [{"prompt": "p"}])
    (tmp_path / "model").mkdir()
    code = main(["run", "--input", str(table), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "model")])
    assert code == EXIT_JOB_ERROR
    assert "not a diffusers checkpoint" in capsys.readouterr().err


def test_help_is_instant_and_lists_the_run_flags():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "latentmill.jobs.cli", "run", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--input", "--output", "--model", "--steps", "--guidance", "--prompt-column", "--format", "--limit"):
        assert flag in result.stdout
    imported = result.stderr
    assert " torch" not in imported and " ray" not in imported and " diffusers" not in imported


def test_models_init_tiny_writes_loadable_checkpoints(tmp_path, capsys):
    from latentmill.models import resolve_model

    assert main(["models", "init-tiny", str(tmp_path / "models")]) == 0
    printed = capsys.readouterr().out
    for name, pipeline in (("tiny-image", "StableDiffusionPipeline"), ("tiny-video", "WanPipeline")):
        assert f"{name}: {tmp_path / 'models' / name}" in printed
        assert resolve_model(str(tmp_path / "models" / name)).pipeline_class == pipeline
