"""Every output equals what the plain single-process diffusers pipeline makes for the same row, through Ray on
a local cluster: one run per pool layout (Stable Diffusion; Wan 2.1 with variable frame counts and tiled
decoding; Wan 2.2 with both experts in one pool and with one pool each). Every built-in family's stages,
with per-row parameters, against plain diffusers without Ray: tests/models/test_stage_contract.py (the
same stage workers the actors run); LTX-2 through Ray with its sound: test_ltx2_run.py; a Modular
Diffusers family (Flux) through Ray: test_interpolate.py."""

from __future__ import annotations

import pytest

from latentmill import schema

from tests.helpers import check_against_reference, generate, write_table

pytestmark = pytest.mark.slow

PROMPTS = [
    {"prompt": "a lighthouse on a cliff at dusk"},
    {"prompt": "x", "negative_prompt": "blurry, low quality"},
    {"prompt": "a very long prompt " * 20},  # past the encoder's limit: truncated and flagged
    {"prompt": "猫がピアノを弾いている 🎹", "seed": 12345},
    {"prompt": "مرحبا بالعالم", "guidance_scale": 1.0},
    {"prompt": "two rows with other steps", "num_inference_steps": 2},
]


# Batches of four mixed rows; that a row equals itself alone, whatever its batch mates, is checked per
# family without Ray (tests/models/test_stage_contract.py).
def test_tiny_image_matches_plain_diffusers(ray_local, tmp_path):
    table = write_table(tmp_path / "prompts.parquet", PROMPTS)
    summary, _ = generate(str(table), str(tmp_path / "out"), batch_size=4)
    assert (summary.rows_read, summary.outputs_written, summary.rows_failed) == (6, 6, 0)
    manifest = check_against_reference(str(tmp_path / "out"), "builtin:tiny-image", 6)
    by_prompt = {row[schema.PROMPT]: row for row in manifest}
    assert by_prompt[PROMPTS[2]["prompt"]][schema.PROMPT_TRUNCATED]
    assert not by_prompt[PROMPTS[0]["prompt"]][schema.PROMPT_TRUNCATED]
    assert by_prompt[PROMPTS[3]["prompt"]][schema.SEED] == 12345
    assert by_prompt[PROMPTS[5]["prompt"]][schema.STEPS] == 2
    for row in manifest:
        assert schema.LATENTS_URI not in row and schema.LATENTS_SHA256 not in row  # no output.save_latents
        assert row["model_hash"] == summary.model_hash and row["latentmill_version"]
        assert row[schema.MIME_TYPE] == "image/png" and row[schema.OUTPUT_URI].endswith(".png")
        assert all(row[schema.seconds_column(stage)] > 0 for stage in schema.STAGES)


def test_wan22_two_experts_in_one_denoise_pool_match_plain_diffusers(ray_local, tmp_path):
    """Wan 2.2 A14B's layout: both experts in each denoise actor, the low-noise one's own guidance per row."""
    rows = [{"prompt": "a river at dawn", "seed": 1}, {"prompt": "a forest", "seed": 2, "guidance_scale_2": 1.5},
            {"prompt": "a city at night", "seed": 3, "guidance_scale": 1.0}]
    table = write_table(tmp_path / "prompts.parquet", rows)
    summary, _ = generate(str(table), str(tmp_path / "out"), model="builtin:tiny-wan22", batch_size=2,
                          output={"video_format": "apng"})
    assert (summary.outputs_written, summary.rows_failed) == (3, 0)
    manifest = check_against_reference(str(tmp_path / "out"), "builtin:tiny-wan22", 3)
    assert {row[schema.PROMPT]: row["guidance_scale_2"] for row in manifest}["a forest"] == 1.5


def test_wan22_one_expert_per_denoise_pool_matches_plain_diffusers(ray_local, tmp_path):
    """Wan 2.2 A14B's experts in two pools (stages.denoise_2), each sized on its own; the high-noise pool hands
    the latents and the scheduler's state to the low-noise one (batch 1 and 2 without Ray:
    tests/models/test_wan22_split.py)."""
    rows = [{"prompt": "a river at dawn", "seed": 1}, {"prompt": "a forest", "seed": 2, "guidance_scale_2": 1.5},
            {"prompt": "a city at night", "seed": 3, "guidance_scale": 1.0}]
    table = write_table(tmp_path / "prompts.parquet", rows)
    second = {"batch_size": 1, "num_cpus": 0.5, "torch_threads": 1}
    summary, config = generate(str(table), str(tmp_path / "out"), model="builtin:tiny-wan22", batch_size=2,
                               output={"video_format": "apng"}, stages={"denoise_2": second})
    assert config.stages.denoise_2 is not None
    assert (summary.outputs_written, summary.rows_failed) == (3, 0)
    manifest = check_against_reference(str(tmp_path / "out"), "builtin:tiny-wan22", 3)
    assert all(row["denoise_seconds"] > 0 and row["decode_mode"] == "full" for row in manifest)


def test_a_second_denoise_pool_for_a_model_with_one_denoiser_is_refused(tmp_path):
    from latentmill.pipelines.job import JobError

    table = write_table(tmp_path / "prompts.parquet", [{"prompt": "a river"}])
    with pytest.raises(JobError, match="stages.denoise_2 is set, but the model builtin:tiny-video cannot split"):
        generate(str(table), str(tmp_path / "out"), model="builtin:tiny-video", stages={"denoise_2": {}})


def test_tiny_video_decoded_tiled_under_a_decode_budget_matches_plain_diffusers(ray_local, tmp_path):
    """Wan 2.1's layout (builtin:tiny-video) in batches of four, one row with fewer frames (latents of two
    shapes cross Ray in one block), with the planner's measured peak memory and a decode budget in the job
    file: tiled decoding up front, recorded per output, and each video equals plain diffusers (the tiny
    model's frames fit in one of the VAE's tiles; untiled video decodes: the Wan 2.2 runs above)."""
    rows = [{"prompt": p["prompt"], "seed": i} for i, p in enumerate(PROMPTS[:4])]
    rows[2]["num_frames"] = 5
    table = write_table(tmp_path / "prompts.parquet", rows)
    peak = {"fixed_bytes": 0, "bytes_per_latent_element": 2400.0, "dtype": "float32", "device": "cpu"}
    decode = {"batch_size": 2, "num_cpus": 0.5, "torch_threads": 1, "memory_budget_gb": 0.001, "peak_memory": peak}
    summary, _ = generate(str(table), str(tmp_path / "out"), model="builtin:tiny-video", batch_size=4,
                          output={"video_format": "apng"}, stages={"decode": decode})
    assert (summary.outputs_written, summary.rows_failed) == (4, 0)
    manifest = check_against_reference(str(tmp_path / "out"), "builtin:tiny-video", 4)
    assert [row["decode_mode"] for row in manifest] == ["tiled"] * 4
    assert sorted(row[schema.NUM_FRAMES] for row in manifest) == [5, 9, 9, 9]
