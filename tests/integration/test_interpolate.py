"""Interpolation jobs: keyframes to smooth transitions, endpoints equal to plain diffusers, exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import latentmill
from latentmill import schema
from latentmill.actors import blend
from latentmill.io import media
from latentmill.jobs.cli import EXIT_JOB_ERROR, main
from latentmill.models.shapes import measure
from latentmill.pipelines.job import JobError

from tests.helpers import reference_frames, write_table
from tests.integration.exactly_once import session_env

pytestmark = pytest.mark.slow

POOL = {"batch_size": 4, "num_cpus": 0.5, "torch_threads": 1}
STAGES = {"encode": POOL, "denoise": POOL, "decode": POOL}
FRAMES = 8


def frames_of(out, transition_id: str, frames: int) -> np.ndarray:
    return np.stack([media.decode_image((out / "media" / f"{transition_id}-f{k:04d}.png").read_bytes())
                     for k in range(frames)]).astype(int)


def plain_endpoints(out, model: str, transition_id: str) -> tuple[np.ndarray, np.ndarray]:
    """What the plain diffusers pipeline makes for the transition's (prompt_a, seed_a) and (prompt_b, seed_b),
    with every other parameter from its first frame's manifest row."""
    [first] = [row for row in pq.read_table(out / "manifest").to_pylist() if row[schema.ID] == f"{transition_id}-f0000"]
    ends = [dict(first, id="a"), dict(first, id="b", prompt=first[blend.PROMPT_B], seed=first[blend.SEED_B])]
    frames = reference_frames(model, ends)
    return frames["a"][0].astype(int), frames["b"][0].astype(int)


RED_CIRCLE = "a large red circle in the center on a white background"
BLUE_SQUARE = "a large blue square in the center on a white background"


def drift(values: list[float]) -> float:
    """How far `values` goes against its overall direction, as a share of its whole change."""
    sign = np.sign(values[-1] - values[0])
    return max(0.0, -min(sign * (b - a) for a, b in zip(values, values[1:]))) / abs(values[-1] - values[0])


def shape_fill(frame: np.ndarray) -> float:
    """The share of the coloured pixels' bounding box they fill: pi/4 for a circle, 1 for a square."""
    return measure.fill_ratio(frame.max(-1) - frame.min(-1) > 100)  # red, blue and what lies between; not white


@pytest.mark.parametrize("model", ["builtin:shapes", "builtin:tiny-flux"])
def test_transitions_start_and_end_at_plain_diffusers_and_move_smoothly(ray_local, tmp_path, model):
    keyframes = write_table(tmp_path / "keyframes.parquet", [
        {"id": "red-to-blue", "prompt_a": RED_CIRCLE, "prompt_b": BLUE_SQUARE, "seed_a": 11, "seed_b": 22,
         "frames": FRAMES},
        {"id": "eased", "prompt_a": "a cat", "prompt_b": "a dog", "seed_a": 3, "seed_b": 4, "frames": 4,
         "easing": "ease-in-out", "fps": 4.0},
    ])
    out = tmp_path / "out"
    summary = latentmill.interpolate(str(keyframes), str(out), model=model, stages=STAGES, ray={"progress_bars": False})
    assert (summary.transitions_written, summary.transitions_failed, summary.frames_written) == (2, 0, FRAMES + 4)

    start, end = plain_endpoints(out, model, "red-to-blue")
    frames = frames_of(out, "red-to-blue", FRAMES)
    assert np.abs(frames[0] - start).max() <= 2, "t=0 differs from plain diffusers for (prompt_a, seed_a)"
    assert np.abs(frames[-1] - end).max() <= 2, "t=1 differs from plain diffusers for (prompt_b, seed_b)"
    steps = [np.abs(frames[k + 1] - frames[k]).mean() for k in range(FRAMES - 1)]
    endpoints = np.abs(frames[-1] - frames[0]).mean()
    assert max(steps) < endpoints / (FRAMES / 4), (steps, endpoints)

    transitions = {row["id"]: row for row in pq.read_table(out / "transitions").to_pylist()}
    assert set(transitions) == {"red-to-blue", "eased"}
    video = (out / "videos" / "red-to-blue.mp4").read_bytes()
    assert transitions["red-to-blue"]["bytes"] == len(video) and transitions["red-to-blue"]["frames"] == FRAMES
    decoded = media.decode_video(video).astype(int)
    assert decoded.shape[0] == FRAMES
    # in order: each video frame is closest to the image of the same step (the video is lossy)
    order = [int(np.argmin([np.abs(decoded[k] - frame).mean() for frame in frames])) for k in range(FRAMES)]
    assert order == list(range(FRAMES))

    if model == "builtin:shapes":  # a model that draws what it is told: the picture turns from one into the other
        red = [float(measure.colour_mask(frame, "red").sum()) for frame in frames]
        blue = [float(measure.colour_mask(frame, "blue").sum()) for frame in frames]
        fill = [shape_fill(frame) for frame in frames]
        assert red[0] > 200 and blue[0] < 20 and blue[-1] > 200 and red[-1] < 20, (red, blue)
        assert max(drift(red), drift(blue)) <= 0.05, (red, blue)
        # the model's squares have soft corners: measured 0.73 for the circle, 0.82 for the square
        assert fill[-1] - fill[0] >= 0.05 and drift(fill) <= 0.4, fill
        # resuming a finished output does not depend on the family
        again = latentmill.interpolate(str(keyframes), str(out), model=model, stages=STAGES,
                                       ray={"progress_bars": False})
        assert (again.already_done, again.transitions_written, again.frames_written) == (2, 0, 0)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"prompt": "no transition columns"}], "needs either prompt_a and prompt_b columns"),
    ([{"prompt_a": "a", "prompt_b": "b", "frames": 1}], "keyframe row 0: frames must be at least 2"),
    ([{"prompt_a": "a", "prompt_b": "b", "easing": "bounce"}], "keyframe row 0: easing 'bounce' is not one of"),
    ([{"prompt_a": "a", "prompt_b": None}], "keyframe row 0: column 'prompt_b' is empty"),
])
def test_bad_keyframe_tables_stop_before_anything_starts(tmp_path, capsys, rows, message):
    keyframes = write_table(tmp_path / "k.parquet", rows)
    code = main(["interpolate", "--input", str(keyframes), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR and message in err and "Traceback" not in err


def test_video_and_unsupported_models_are_refused(tmp_path):
    keyframes = write_table(tmp_path / "k.parquet", [{"prompt_a": "a", "prompt_b": "b"}])
    with pytest.raises(JobError, match=r"builtin:tiny-video \(wan\) cannot interpolate"):
        latentmill.interpolate(str(keyframes), str(tmp_path / "out"), model="builtin:tiny-video")


JOB = """
output:
  manifest_rows_per_part: 1
  manifest_flush_seconds: 0.1
stages:
  encode: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
  denoise: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
  decode: {batch_size: 1, num_cpus: 0.5, torch_threads: 1}
"""


def test_a_killed_walk_finishes_every_transition_exactly_once(ray_local, tmp_path, capsys):
    """A walk through four keyframes (one transition per consecutive pair, in table order), its driver killed
    after three frames, then the same command again."""
    ids = ["day-000", "day-001", "day-002"]
    keyframes = write_table(tmp_path / "k.parquet", [
        {"sequence": "day", "prompt": f"{hour} over a lake", "seed": seed, "frames": 4}
        for seed, hour in enumerate(["dawn", "noon", "dusk", "night"])])
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "latentmill.jobs.cli", "interpolate", "--no-progress", "--config", str(job),
               "--input", str(keyframes), "--output", str(out)]
    env = session_env(LATENTMILL_FAULTS="denoise:sleep:0.3")
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / "manifest").glob("*.parquet")) if (out / "manifest").exists() else []) < 3:
        assert driver.poll() is None, f"the job ended before it could be killed:\n{driver.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no frames after 300 s"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    time.sleep(2)

    # The same command again, in this process on the same Ray (the same `main` the killed driver ran).
    assert main(command[3:]) == 0, capsys.readouterr().err[-3000:]
    transitions = pq.read_table(out / "transitions").to_pylist()
    assert sorted(row["id"] for row in transitions) == ids  # each exactly once
    assert sorted(path.name for path in (out / "videos").iterdir()) == [f"{i}.mp4" for i in ids]
    frames = [row[schema.ID] for part in sorted((out / "manifest").glob("*.parquet"))
              for row in pq.read_table(part).to_pylist()]
    assert sorted(frames) == sorted(f"{i}-f{k:04d}" for i in ids for k in range(4))  # no frame twice
    for row in transitions:
        assert media.decode_video((out / "videos" / f"{row['id']}.mp4").read_bytes()).shape[0] == 4
