"""Manifest rows as written: an image has no frame rate (null), a video keeps its own."""

import numpy as np
import pyarrow.parquet as pq

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
