"""Real small outputs for the report tests, written by hand (no Ray, no model): PNGs made with Pillow, an
MP4 made with latentmill.io.media.encode_video, manifest and error parts and runs/*.json as a run writes
them (same columns, same names), to a local folder or an s3:// URI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from latentmill import schema
from latentmill.io import media, storage

RUN_1 = "20260101T100000-aaaaaa"
RUN_2 = "20260102T100000-bbbbbb"

PROMPTS = {
    "p1": "a lighthouse at dusk, oil painting",
    "p2": "a red fox in fresh snow",
    "p3": "a bowl of ramen, studio light",
    "p4": "a city street at night in the rain",
    "p5": "an astronaut riding a horse",
}
VIDEO_ID = "v1"
VIDEO_PROMPT = "a drone flight over a canyon"
ERRORS = [  # id, stage, type, message
    ("e1", "validate", "RowError", "the prompt is empty: give every row a non-empty prompt"),
    ("e2", "validate", "RowError", "height 100 is not a multiple of 8"),
    ("e3", "decode", "RuntimeError", "the VAE produced NaN"),
]


def _image(seed: int, size: int = 64) -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(seed)
    colour = rng.integers(40, 255, 3)
    frame = np.stack([(x * colour[0] / size), (y * colour[1] / size), np.full_like(x, colour[2])], -1)
    buffer = io.BytesIO()
    Image.fromarray(frame.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _video(seed: int, frames: int = 9, size: int = 64) -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    clip = np.stack([np.stack([(x * 4 + i * 16 + seed) % 256, (y * 4) % 256, np.full_like(x, 90)], -1)
                     for i in range(frames)]).astype(np.uint8)
    return media.encode_video(clip, fps=8, fmt="mp4")


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def make_output(uri: str, *, model: str = "builtin:tiny-image", seed_offset: int = 0,
                same_as_first: set[str] = frozenset(), failed: set[str] = frozenset(), absent: set[str] = frozenset(),
                options: dict | None = None) -> dict[str, dict]:
    """An output with 5 images and 1 video (manifest parts of two runs), 3 error rows (ids e1..e3) plus
    one error row per id in `failed` (no output), runs/<run>.json for both runs and summary.json. The
    ids in `absent` have neither an output nor an error row.

    `seed_offset` changes every seed (different media) except for the ids in `same_as_first`, whose
    media are byte-identical to an output made with seed_offset 0. Returns the manifest rows by id.
    """
    fs, root = storage.resolve(uri, options)
    rows = {}
    for index, (row_id, prompt) in enumerate([*PROMPTS.items(), (VIDEO_ID, VIDEO_PROMPT)]):
        if row_id in failed or row_id in absent:
            continue
        seed = 1000 + index + (0 if row_id in same_as_first else seed_offset)
        video = row_id == VIDEO_ID
        data = _video(seed) if video else _image(seed)
        name = f"{row_id}.mp4" if video else f"{row_id}.png"
        output_uri = storage.join(uri, "media", name)
        storage.put_bytes(fs, storage.join(root, "media", name), data)
        row = {
            schema.ID: row_id, schema.PROMPT: prompt, schema.NEGATIVE_PROMPT: "blurry" if index % 2 else "",
            schema.SEED: seed, schema.STEPS: 8 if index < 3 else 20, schema.GUIDANCE: 5.0,
            schema.HEIGHT: 64, schema.WIDTH: 64, schema.NUM_FRAMES: 9 if video else None,
            schema.FPS: 8.0 if video else None, schema.SAMPLE_INDEX: 0, schema.PROMPT_TRUNCATED: index == 4,
            "model": "builtin:tiny-video" if video else model, "model_hash": "ab" * 32,
            "model_family": "wan" if video else "sd", "scheduler": "EulerDiscreteScheduler",
            schema.OUTPUT_URI: output_uri, schema.BYTES: len(data), schema.SHA256: hashlib.sha256(data).hexdigest(),
            schema.MIME_TYPE: "video/mp4" if video else "image/png",
            "encode_seconds": 0.01 * (index + 1), "denoise_seconds": 0.5 + 0.25 * index,
            "decode_seconds": 0.05 + 0.01 * index, "latentmill_version": "0.1.0", "job_fingerprint": "f" * 16,
        }
        rows[row_id] = row
    ordered = list(rows.values())
    first, second = ordered[:3], ordered[3:]
    # One manifest part per row, and on local disk the write times a run would have left: run 1 ended a
    # day ago after 12.5 s, run 2 now after 20 s; parts from 3.2 s (the first output) on.
    now = time.time()
    for run_id, part, end, wall in ((RUN_1, first, now - 86400, 12.5), (RUN_2, second, now, 20.0)):
        for index, row in enumerate(part):
            path = storage.join(root, "manifest", f"part-{run_id}-{index:05d}.parquet")
            storage.put_bytes(fs, path, _parquet([row]))
            if "://" not in uri:
                written = end - wall + 3.2 + index * (wall - 3.2) / len(part)
                os.utime(path, (written, written))
    errors = [{schema.ID: row_id, schema.SAMPLE_INDEX: 0, schema.INPUT_ROW: json.dumps({"prompt": "", "id": row_id}),
               schema.ERROR_STAGE: stage, schema.ERROR_TYPE: kind, schema.ERROR_MESSAGE: message, "run_id": RUN_2}
              for row_id, stage, kind, message in ERRORS]
    errors += [{schema.ID: row_id, schema.SAMPLE_INDEX: 0,
                schema.INPUT_ROW: json.dumps({"prompt": PROMPTS.get(row_id, VIDEO_PROMPT), "id": row_id}),
                schema.ERROR_STAGE: "decode", schema.ERROR_TYPE: "RuntimeError", schema.ERROR_MESSAGE: "out of memory",
                "run_id": RUN_2} for row_id in sorted(failed)]
    storage.put_bytes(fs, storage.join(root, "errors", f"part-{RUN_2}-00000.parquet"), _parquet(errors))
    for run_id, written, failures, wall in ((RUN_1, len(first), {}, 12.5),
                                            (RUN_2, len(second), {"validate": 2, "decode": 1 + len(failed)}, 20.0)):
        failed_rows = sum(failures.values())
        summary = {
            "run_id": run_id, "output_uri": uri, "rows_read": written + failed_rows, "requests": written + failed_rows,
            "outputs_written": written, "already_done": len(first) if run_id == RUN_2 else 0,
            "rows_failed": failed_rows, "failed_by_stage": failures, "resumed": run_id == RUN_2,
            "budget_exceeded": False, "wall_seconds": wall, "seconds_to_first_output": 3.2, "model": model,
            "model_hash": "ab" * 32, "job_fingerprint": "f" * 16, "latentmill_version": "0.1.0",
            "config": {"model": {"path": model}, "storage": {"secret": "***"}},
        }
        if run_id == RUN_2:
            summary["rows_read"] += len(first)
            summary["requests"] += len(first)
        data = json.dumps(summary, indent=2).encode()
        storage.put_bytes(fs, storage.join(root, "runs", f"{run_id}.json"), data)
        if run_id == RUN_1 and "://" not in uri:
            os.utime(storage.join(root, "runs", f"{run_id}.json"), (now - 86400, now - 86400))
        if run_id == RUN_2:
            storage.put_bytes(fs, storage.join(root, "summary.json"), data)
    return rows
