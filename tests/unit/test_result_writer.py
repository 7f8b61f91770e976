"""The driver's side of a run's rows: manifest rows as written (an image has no frame rate, a video keeps its
own), the quality gate's counts and conditioning, and the size of its retry pass's pools."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.pipelines.job import ResultWriter, RunSummary
from latentmill.rows import empty_request_columns, request_from


def test_an_image_row_has_a_null_frame_rate_and_a_video_row_its_own(tmp_path):
    batch = empty_request_columns(2)
    for index, (row_id, frames, fps) in enumerate([("image", 1, 0.0), ("video", 9, 8.0)]):
        batch[schema.ID][index], batch[schema.PROMPT][index], batch[schema.NEGATIVE_PROMPT][index] = row_id, "p", ""
        batch[schema.NUM_FRAMES][index], batch[schema.FPS][index] = frames, fps
    for name in (schema.OUTPUT_URI, schema.SHA256, schema.MIME_TYPE):
        batch[name] = np.array(["x", "y"], dtype=object)
    batch[schema.BYTES] = np.array([1, 2])
    for stage in schema.STAGES:
        batch[schema.seconds_column(stage)] = np.zeros(2)
    static = {name: "x" for name in ("model", "model_hash", "model_family", "scheduler", "denoise_options",
                                     "latentmill_version",
                                     "job_fingerprint")}
    writer = ResultWriter(str(tmp_path), {}, "run", 100, 30.0, static)
    writer.add(batch, RunSummary(run_id="run", output_uri=str(tmp_path)))
    writer.close()
    rows = {row[schema.ID]: row for row in pq.read_table(tmp_path / "manifest").to_pylist()}
    assert rows["image"][schema.FPS] is None and rows["video"][schema.FPS] == 8.0
    assert request_from(rows["image"]).fps == 0.0  # read back as a request, as resume and decode jobs do


def test_the_summary_counts_failures_by_gate_check_and_outputs_by_attempt(tmp_path):
    """Two outputs (first and second attempt), a blank sample out of attempts (a gate failure), NaN latents
    with attempts left (generated again: not counted yet) and a row that failed in encode (no gate's)."""
    from latentmill.config import QualitySettings

    outcomes = [("a", 0, "", ""), ("b", 1, "", ""), ("c", 1, "decode", "BlankImage"),
                ("d", 0, "denoise", "FloatingPointError"), ("e", 0, "encode", "RuntimeError")]
    batch = empty_request_columns(len(outcomes))
    for index, (row_id, attempt, stage, error) in enumerate(outcomes):
        batch[schema.ID][index], batch[schema.ATTEMPT][index] = row_id, attempt
        batch[schema.ERROR_STAGE][index], batch[schema.ERROR_TYPE][index] = stage, error
    batch[schema.BYTES] = np.zeros(len(outcomes), dtype=np.int64)
    writer = ResultWriter(str(tmp_path), {}, "run", 100, 30.0, {}, quality=QualitySettings(reject_blank=True,
                                                                                          max_attempts=2))
    summary = RunSummary(run_id="run", output_uri=str(tmp_path))
    writer.add(batch, summary)
    assert [row[schema.ID] for row in writer.retries] == ["d"]
    assert summary.attempts == {0: 1, 1: 1}
    assert summary.failed_by_gate == {"reject_blank": 1} and summary.failed_by_stage == {"decode": 1, "encode": 1}


def test_a_rejected_row_that_carries_its_conditioning_keeps_it_for_its_next_attempt(tmp_path):
    """Rejected rows only: the one whose conditioning came along keeps it (its next attempt skips the
    encode stage), the other is encoded again; the rejected attempt's encoding is counted."""
    from latentmill.config import QualitySettings

    batch = empty_request_columns(3)
    for index, (row_id, stage, error) in enumerate([("kept", "denoise", "FloatingPointError"),
                                                     ("plain", "decode", "BlankImage"), ("ok", "", "")]):
        batch[schema.ID][index], batch[schema.SEED][index] = row_id, 7
        batch[schema.ERROR_STAGE][index], batch[schema.ERROR_TYPE][index] = stage, error
    batch[schema.PROMPT_TRUNCATED][0] = True
    batch["prompt_embeds"] = np.array([b"embeds", b"", b""], dtype=object)
    batch[schema.CONDITIONING_KEPT] = np.array([True, False, False])
    batch[schema.ENCODED] = np.array([True, True, False])
    batch[schema.BYTES] = np.zeros(3, dtype=np.int64)
    writer = ResultWriter(str(tmp_path), {}, "run", 100, 30.0, {}, quality=QualitySettings(reject_blank=True),
                          conditioning=("prompt_embeds",))
    summary = RunSummary(run_id="run", output_uri=str(tmp_path))
    writer.add(batch, summary)
    kept, plain = writer.retries
    assert (kept[schema.ID], kept["prompt_embeds"], kept[schema.CONDITIONING_KEPT]) == ("kept", b"embeds", True)
    assert kept[schema.PROMPT_TRUNCATED] and kept[schema.seconds_column("encode")] == 0.0
    assert (kept[schema.ATTEMPT], kept[schema.ENCODED], kept[schema.EMBEDDINGS_CACHED]) == (1, False, False)
    assert plain[schema.ID] == "plain" and "prompt_embeds" not in plain and not plain[schema.PROMPT_TRUNCATED]
    assert summary.prompts_encoded == 2


def test_conditioning_goes_past_the_denoise_stage_only_where_a_gate_needs_it():
    from latentmill.config import load_config
    from latentmill.pipelines.plan import conditioning_forwarding

    def forwarding(**overrides):
        return conditioning_forwarding(load_config(None, {"input": {"uri": "p.parquet"}, "output": {"uri": "out"}, **overrides}))

    assert forwarding() == "rejected"  # reject_nonfinite (on by default): the rows the denoise stage rejects
    assert forwarding(quality={"reject_blank": True}) == "all"
    assert forwarding(quality={"clip_score": {"model": "clip", "min": 20}}) == "all"
    assert forwarding(quality={"clip_score": {"model": "clip", "min": None}}) == "rejected"  # scores only
    assert forwarding(quality={"reject_blank": True}, cache={"embeddings": "cache/"}) is None  # read from the cache
    assert forwarding(quality={"max_attempts": 1}) is None
    assert forwarding(quality={"reject_nonfinite": False}) is None


@pytest.mark.parametrize(("size", "batch_size", "rows", "expected"), [
    (16, 4, 3, (1, 1)),  # three rejected samples: one actor, not sixteen loading the model for them
    (16, 4, 9, (3, 3)),
    (2, 4, 100, (2, 2)),  # never more than the pool's own size
    ((1, 8), 2, 5, (1, 3)),  # an autoscaling pool keeps its minimum, up to one actor per batch
    ((4, 8), 1, 2, (2, 2)),
])
def test_the_retry_pass_starts_no_more_actors_than_it_has_batches(size, batch_size, rows, expected):
    from latentmill.config import PoolSettings
    from latentmill.pipelines.plan import pool_args

    pool = PoolSettings(size=size, batch_size=batch_size)
    compute = pool_args(pool, rows)["compute"]
    assert (compute.min_size, compute.max_size) == expected
    whole = pool_args(pool)["compute"]  # the first pass: the pool as configured
    assert (whole.min_size, whole.max_size) == (pool.min_size, pool.max_size)
