"""Every job setting is checked when the job file is read, with the field named: nothing invalid reaches
Ray (`ray.init`, `map_batches`) to fail there as a traceback."""

from __future__ import annotations

import pytest

from latentmill.config import ConfigError, load_config

REQUIRED = {"input": {"uri": "prompts.parquet"}, "output": {"uri": "out"}}
INF, NAN = float("inf"), float("nan")


def config(section: str, values: dict):
    data = {key: dict(value) for key, value in REQUIRED.items()}
    data.setdefault(section, {}).update(values)
    return load_config(None, data)


@pytest.mark.parametrize(
    ("section", "values", "field", "message"),
    [
        ("ray", {"local_num_cpus": -1}, "ray.local_num_cpus", "must be a whole number >= 1"),
        ("ray", {"local_num_cpus": 0}, "ray.local_num_cpus", "must be a whole number >= 1"),
        ("ray", {"local_num_cpus": 2.5}, "ray.local_num_cpus", "must be a whole number >= 1"),
        ("ray", {"local_num_cpus": INF}, "ray.local_num_cpus", "must be a whole number >= 1"),
        ("ray", {"local_num_cpus": True}, "ray.local_num_cpus", "must be a number, not true"),
        ("ray", {"local_num_gpus": -1}, "ray.local_num_gpus", "must be a whole number >= 0"),
        ("ray", {"local_num_gpus": 0.5}, "ray.local_num_gpus", "must be a whole number >= 0"),
        ("stages", {"denoise": {"size": 0}}, "stages.denoise.size", "pool size must be >= 1"),
        ("stages", {"denoise": {"size": [3, 2]}}, "stages.denoise.size", "1 <= min <= max"),
        ("stages", {"denoise": {"size": True}}, "stages.denoise.size", "must be a number, not true"),
        ("stages", {"encode": {"batch_size": 0}}, "stages.encode.batch_size", "greater than or equal to 1"),
        ("stages", {"encode": {"batch_size": False}}, "stages.encode.batch_size", "must be a number, not false"),
        ("stages", {"decode": {"num_cpus": -0.5}}, "stages.decode.num_cpus", "greater than or equal to 0"),
        ("stages", {"decode": {"num_cpus": INF}}, "stages.decode.num_cpus", "must be a finite number"),
        ("stages", {"denoise": {"num_gpus": 0.00001}}, "stages.denoise.num_gpus", "0 or at least 0.0001"),
        ("stages", {"denoise": {"num_gpus": NAN}}, "stages.denoise.num_gpus", "greater than or equal to 0"),
        ("stages", {"denoise": {"num_gpus": 1e15}}, "stages.denoise.num_gpus", "between 0 and 1e+14"),
        ("stages", {"denoise": {"resources": {"accelerator": -1}}}, "stages.denoise.resources",
         "resource 'accelerator' must be a finite number"),
        ("stages", {"denoise": {"resources": {"CPU": 2}}}, "stages.denoise.resources", "one of Ray's own resources"),
        ("stages", {"denoise": {"torch_threads": 0}}, "stages.denoise.torch_threads", "greater than or equal to 1"),
        ("output", {"manifest_flush_seconds": 0}, "output.manifest_flush_seconds", "greater than 0"),
        ("output", {"manifest_flush_seconds": INF}, "output.manifest_flush_seconds", "must be a finite number"),
        ("output", {"png_compress_level": 10}, "output.png_compress_level", "less than or equal to 9"),
        ("defaults", {"guidance_scale": INF}, "defaults.guidance_scale", "must be a finite number"),
        ("defaults", {"fps": INF}, "defaults.fps", "must be a finite number"),
        ("defaults", {"seed": 2**63}, "defaults.seed", "less than 9223372036854775808"),
        ("input", {"prompt_column": " "}, "input.prompt_column", "a column name must not be empty"),
        ("input", {"id_column": ""}, "input.id_column", "a column name must not be empty"),
        ("storage", {"endpoint_url": "127.0.0.1:9000"}, "storage.endpoint_url",
         "must be a URL starting with http:// or https://"),
        ("quality", {"clip_score": {"model": "clip", "min": NAN}}, "quality.clip_score.min",
         "must be a finite number"),
        ("quality", {"clip_score": {"model": " "}}, "quality.clip_score.model", "a folder or URI of a CLIP model"),
        ("quality", {"clip_score": {"min": 20}}, "quality.clip_score.model", "Field required"),
        ("quality", {"near_duplicate_distance": 13}, "quality.near_duplicate_distance", "less than or equal to 12"),
    ],
)
def test_invalid_values_name_their_field(section, values, field, message):
    with pytest.raises(ConfigError) as raised:
        config(section, values)
    lines = [line.strip() for line in str(raised.value).splitlines()]
    assert any(line.startswith(f"{field}: ") and message in line for line in lines), str(raised.value)


@pytest.mark.parametrize("budget", [NAN, INF, -1, 1.5])
def test_error_budget_must_be_a_count_or_a_fraction(budget):
    with pytest.raises(ConfigError, match="max_failed: Value error, max_failed must be a count >= 0"):
        load_config(None, {**REQUIRED, "max_failed": budget})


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("ray", {"local_num_cpus": 4}),
        ("ray", {"local_num_cpus": 4.0, "local_num_gpus": 0}),
        ("ray", {"local_num_cpus": "8"}),  # a number written as text, as flags are
        ("stages", {"denoise": {"size": [1, 4], "num_gpus": 0.25, "num_cpus": 0, "resources": {"accel": 0.5}}}),
        ("defaults", {"guidance_scale": 0, "fps": 24.0, "seed": 2**63 - 1}),
        ("storage", {"endpoint_url": "https://s3.example.com"}),
    ],
)
def test_valid_values_still_load(section, values):
    config(section, values)


def test_only_quality_settings_that_change_the_kept_samples_enter_the_job_fingerprint():
    """reject_nonfinite (on by default) and the near-duplicate distance keep no other sample than a run
    without them would: outputs made before they existed still resume."""
    from latentmill.pipelines.job import job_fingerprint

    base = job_fingerprint(config("quality", {"reject_nonfinite": False}), "hash")
    assert job_fingerprint(config("quality", {}), "hash") == base
    assert job_fingerprint(config("quality", {"near_duplicate_distance": 8}), "hash") == base
    assert job_fingerprint(config("quality", {"reject_blank": True}), "hash") != base
    clip = job_fingerprint(config("quality", {"clip_score": {"model": "clip", "min": 20}}), "hash")
    assert clip not in (base, job_fingerprint(config("quality", {"clip_score": {"model": "clip", "min": 25}}), "hash"))
