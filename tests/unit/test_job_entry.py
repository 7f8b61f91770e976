"""The `ray job submit` entry modules: arguments -> job config, summary -> exit code (run_job stubbed)."""

from __future__ import annotations

import datetime as dt

import pytest

from latentmill.jobs import entry, nightly, synthesize
from latentmill.pipelines import job as job_module


def test_nightly_reads_the_days_partition_and_writes_a_dated_prefix():
    assert nightly.partition_uris("s3://b/prompts/", "s3://b/renders", dt.date(2026, 11, 21)) == (
        "s3://b/prompts/date=2026-11-21/", "s3://b/renders/2026-11-21")
    args = nightly.build_parser().parse_args(["--input-root", "/p", "--output-root", "/r"])
    assert args.date == dt.datetime.now(dt.timezone.utc).date()
    args = nightly.build_parser().parse_args(["--input-root", "/p", "--output-root", "/r", "--date", "yesterday"])
    assert args.date == dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    with pytest.raises(SystemExit) as exit_info:
        nightly.build_parser().parse_args(["--input-root", "/p", "--output-root", "/r", "--date", "21/11/2026"])
    assert exit_info.value.code == entry.EXIT_USAGE


def test_nightly_config_from_file_and_flags(tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text("stages:\n  denoise: {batch_size: 2}\nmax_failed: 3\n")
    args = nightly.build_parser().parse_args([
        "--input-root", "/p", "--output-root", "/r", "--date", "2026-11-21", "--config", str(job_file),
        "--pushgateway", "http://127.0.0.1:9091", "--max-failed", "5%", "--metrics-port", "0",
    ])
    config = entry.load(args, {"input": {"uri": "/p/date=2026-11-21/"}, "output": {"uri": "/r/2026-11-21"}})
    assert config.stages.denoise.batch_size == 2
    assert config.max_failed == pytest.approx(0.05)  # the flag wins over the file
    assert config.metrics.pushgateway == "http://127.0.0.1:9091"
    assert config.metrics.port == 0
    assert config.metrics.job_name == nightly.JOB_NAME

    job_file.write_text("metrics: {job_name: renders}\n")
    args = nightly.build_parser().parse_args(["--input-root", "/p", "--output-root", "/r", "-c", str(job_file)])
    assert entry.load(args, {"input": {"uri": "x"}, "output": {"uri": "y"}}).metrics.job_name == "renders"


def test_synthesize_asks_for_n_samples_per_prompt():
    args = synthesize.build_parser().parse_args(["-i", "in.parquet", "-o", "out", "-n", "4", "--seed", "7"])
    config = entry.load(args, {"input": {"uri": args.input, "samples_per_prompt": args.samples_per_prompt},
                               "output": {"uri": args.output}})
    assert config.input.samples_per_prompt == 4
    assert config.defaults.seed == 7
    assert config.metrics.job_name == synthesize.JOB_NAME
    with pytest.raises(SystemExit):
        synthesize.build_parser().parse_args(["-i", "in", "-o", "out", "-n", "0"])


class _Summary:
    def __init__(self, failed: int, read: int, exceeded: bool) -> None:
        self.rows_failed, self.rows_read, self.budget_exceeded = failed, read, exceeded

    def table(self) -> str:
        return f"rows read {self.rows_read}"


@pytest.mark.parametrize("outcome, code", [
    (_Summary(0, 10, False), entry.EXIT_OK),
    (_Summary(2, 10, True), entry.EXIT_BUDGET),
    (job_module.JobError("no prompt table at '/p/date=2026-11-21/'"), entry.EXIT_JOB_ERROR),
])
def test_exit_codes(monkeypatch, capsys, outcome, code):
    seen = {}

    def fake_run_job(config):
        seen["config"] = config
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(job_module, "run_job", fake_run_job)
    assert nightly.main(["--input-root", "/p", "--output-root", "/r", "--date", "2026-11-21",
                         "--max-failed", "1"]) == code
    assert seen["config"].input.uri == "/p/date=2026-11-21/"
    assert seen["config"].output.uri == "/r/2026-11-21"
    err = capsys.readouterr().err
    if code == entry.EXIT_BUDGET:
        assert "past the error budget" in err
    if code == entry.EXIT_JOB_ERROR:
        assert "no prompt table" in err


def test_bad_job_file_exits_1(tmp_path, capsys):
    job_file = tmp_path / "job.yaml"
    job_file.write_text("stages: {denoise: {batch_size: 0}}\n")
    assert synthesize.main(["-i", "in", "-o", "out", "-n", "2", "-c", str(job_file)]) == entry.EXIT_JOB_ERROR
    assert "stages.denoise.batch_size" in capsys.readouterr().err


def test_synthesize_takes_the_dataset_shape_flags():
    from latentmill.config import ConfigError, load_config
    from latentmill.jobs.cli import dataset_overrides

    args = synthesize.build_parser().parse_args(["-i", "in", "-o", "out", "-n", "2", "--keep-columns", "license, url",
                                                 "--layout", "webdataset", "--shard-size", "10"])
    overrides = dataset_overrides(args)
    overrides["input"]["uri"], overrides["output"]["uri"] = args.input, args.output
    config = load_config(None, overrides)
    assert config.input.keep_columns == ("license", "url")
    assert (config.output.layout, config.output.shard_size) == ("webdataset", 10)
    overrides["input"]["keep_columns"] = "a,a"
    with pytest.raises(ConfigError, match="keep_columns names a column twice"):
        load_config(None, overrides)
    with pytest.raises(SystemExit):
        synthesize.build_parser().parse_args(["-i", "in", "-o", "out", "-n", "2", "--layout", "tfrecord"])


def test_the_job_log_goes_to_the_stderr_of_the_moment(monkeypatch):
    """A process that runs the entry point twice (a test session, a notebook) may have swapped sys.stderr
    in between: the log must not keep writing to the first one."""
    import io
    import logging
    import sys

    handler = entry._CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    first, second = io.StringIO(), io.StringIO()
    for stream, message in ((first, "one"), (second, "two")):
        monkeypatch.setattr(sys, "stderr", stream)
        handler.emit(logging.LogRecord("latentmill", logging.INFO, __file__, 1, message, None, None))
    assert (first.getvalue(), second.getvalue()) == ("one\n", "two\n")
